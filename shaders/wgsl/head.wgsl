// The output head's reductions, so that a step reads back token ids instead of whole
// vocabularies: `argmax` gives each logits row's index of its largest value, the first one on
// ties (the host's rule, gpu/src/backend.rs `argmax`). NaN is skipped where the device keeps
// NaN semantics (WGSL lets it not); a row of NaN alone gives 0.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
// Unused (the Binary layout's second input).
@group(0) @binding(1) var<storage, read> unused: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<uniform> p: HeadParams;

struct HeadParams {
    // Values per row, and rows.
    cols: u32,
    rows: u32,
    grid_x: u32,
    _pad: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// Whether (v, i) beats (bv, bi): larger, or equal and earlier. A NONE index never wins.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

// One workgroup per row.
@compute @workgroup_size(256)
fn argmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * p.grid_x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var bv = 0.0;
    var bi = NONE;
    // Each thread's values in increasing index order: strictly greater keeps the first.
    for (var c = lid; c < p.cols; c += WG) {
        let v = logits[base + c];
        if v == v && (bi == NONE || v > bv) {
            bv = v;
            bi = c;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half >>= 1u) {
        if lid < half && beats(best_v[lid + half], best_i[lid + half], best_v[lid], best_i[lid]) {
            best_v[lid] = best_v[lid + half];
            best_i[lid] = best_i[lid + half];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        ids[row] = select(best_i[0], 0u, best_i[0] == NONE);
    }
}
