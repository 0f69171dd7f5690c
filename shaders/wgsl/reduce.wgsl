// A sum over a 256-thread workgroup, for the kernels that reduce a row per workgroup (norm.wgsl
// and quantize.wgsl's `rms_norm`). Shared so that both add in the same order and so give the
// same bits. Every thread passes its own partial sum and gets the total; call it once, from
// uniform control flow.

const REDUCE_WG: u32 = 256u;
var<workgroup> reduce_partial: array<f32, 256>;

//#if SUBGROUP
fn workgroup_sum(s: f32, lid: u32, lane: u32, lanes: u32) -> f32 {
    // Never assume a subgroup width: lavapipe's is 8, NVIDIA's 32, AMD's 32 or 64.
    let sg_sum = subgroupAdd(s);
    let groups = (REDUCE_WG + lanes - 1u) / lanes;
    if lane == 0u {
        reduce_partial[lid / lanes] = sg_sum;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var t = 0u; t < groups; t++) {
        total += reduce_partial[t];
    }
    return total;
}
//#else
fn workgroup_sum(s: f32, lid: u32) -> f32 {
    reduce_partial[lid] = s;
    workgroupBarrier();
    for (var stride = REDUCE_WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            reduce_partial[lid] += reduce_partial[lid + stride];
        }
        workgroupBarrier();
    }
    return reduce_partial[0];
}
//#endif
