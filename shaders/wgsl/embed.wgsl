// Embedding gather: out[t] = row ids[t] of the (quantized) table, decoded to f32. One thread
// per (token, 8-value unit); a table split into parts runs once per part.

@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(8) var<uniform> p: EmbedParams;

struct EmbedParams {
    dims: WeightDims,
    // Columns (K), a multiple of 8.
    k: u32,
    // First table row of this part, and its row count.
    row_start: u32,
    rows: u32,
    tokens: u32,
    // Threads per row of the dispatch grid.
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    let units = p.k / 8u;
    let t = i / units;
    if t >= p.tokens {
        return;
    }
    let id = ids[t];
    if id < p.row_start || id >= p.row_start + p.rows {
        return;
    }
    let w = unit(id - p.row_start, i % units, p.dims);
    let base = t * (p.k / 4u);
    out[base + w.k_lo / 4u] = w.lo;
    out[base + w.k_hi / 4u] = w.hi;
}
