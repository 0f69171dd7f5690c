// Where a product's outputs go (matvec, matmul, int8). A product over a stack of weights
// uploaded as one matrix (a layer's Q/K/V, its gate/up: one dispatch instead of one per
// weight) writes each weight's columns to that weight's own tensor: output column c < seg1
// goes to `out` (rows of seg1 values), c < seg2 to `out1`, the rest to `out2`. A plain product
// has seg1 = seg2 = n, so everything goes to `out`.

@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out1: array<f32>;
@group(0) @binding(7) var<storage, read_write> out2: array<f32>;

struct Outputs {
    // Columns of the whole product (all parts, all weights of a stack).
    n: u32,
    // The output column of this dispatch's weight row 0.
    offset: u32,
    seg1: u32,
    seg2: u32,
}

// Stores output (activation row m, this dispatch's weight row `row`).
fn store_product(o: Outputs, m: u32, row: u32, v: f32) {
    let c = o.offset + row;
    if c < o.seg1 {
        out[m * o.seg1 + c] = v;
    } else if c < o.seg2 {
        out1[m * (o.seg2 - o.seg1) + c - o.seg1] = v;
    } else {
        out2[m * (o.n - o.seg2) + c - o.seg2] = v;
    }
}

// The parameters of the f32-activation products, matvec.wgsl (which ignores the tile fields)
// and matmul.wgsl; int8.wgsl has its own.
struct MatmulParams {
    dims: WeightDims,
    out: Outputs,
    // Columns of x and W (K), a multiple of 8.
    k: u32,
    // Weight rows this dispatch computes.
    rows: u32,
    // Activation rows (M).
    m: u32,
    // Tiles along the weight rows and along the activation rows.
    tiles_n: u32,
    tiles_m: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// The decode kernels' rounds (matvec.wgsl, int8.wgsl `matvec`), defined once so that both
// match the dispatch size (gpu/src/wgpu/linear.rs): a workgroup of WG threads computes ROWS
// weight rows, CHUNK 32-value blocks of each per round. ROWS is a pipeline constant (2 to 16,
// ROWS · M ≤ WG; `WgpuOptions::decode_rows`): a row adds its blocks in order whatever it is.
override ROWS: u32 = 8u;
const CHUNK: u32 = 32u;
const WG: u32 = 64u;
// Activation rows of a decode product (1..=8, MATVEC_MAX_ROWS): a pipeline constant.
override M: u32 = 1u;
// partial[r][block][m], the round's block terms: rows padded by one word so the ROWS readers
// of one block fall in different banks. Sized by M: 1 KB at M = 1, 8 KB at M = 8.
override ROW_STRIDE: u32 = CHUNK * M + 1u;
var<workgroup> partial: array<f32, ROWS * ROW_STRIDE>;
