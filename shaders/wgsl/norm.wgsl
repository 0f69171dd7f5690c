// RMSNorm, one workgroup per row: out = x / sqrt(mean(x²) + eps) · weight. (With int8
// activations the layer's norms take quantize.wgsl's `rms_norm` instead, the same arithmetic
// with the quantization in the same pass.)

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: NormParams;

struct NormParams {
    cols: u32,
    rows: u32,
    eps: f32,
    grid_x: u32,
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
//#endif
) {
    let row = wid.x + wid.y * p.grid_x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += REDUCE_WG) {
        let v = x[base + c];
        s += v * v;
    }
//#if SUBGROUP
    let total = workgroup_sum(s, lid, lane, lanes);
//#else
    let total = workgroup_sum(s, lid);
//#endif
    let inv = inverseSqrt(total / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += REDUCE_WG) {
        out[base + c] = x[base + c] * inv * weight[c];
    }
}
