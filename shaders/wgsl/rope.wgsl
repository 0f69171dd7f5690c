// Rotary position embedding. The host computes each row's (cos, sin) per rotated pair in
// float64 once per step (`table`, rows × rotated_pairs), so the GPU rotates exactly as the CPU.
// A head may rotate only its first 2 · rotated_pairs values (partial rotary); the rest are
// copied.

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: RopeParams;

struct RopeParams {
    rows: u32,
    cols: u32,
    head_dim: u32,
    // 0: pairs (2i, 2i+1); 1: pairs (i, i + rotated_pairs).
    half_split: u32,
    grid_x: u32,
    rotated_pairs: u32,
    _pad1: u32,
    _pad2: u32,
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    let half = p.head_dim / 2u;
    let pairs_per_row = p.cols / 2u;
    let row = i / pairs_per_row;
    if row >= p.rows {
        return;
    }
    let j = i % pairs_per_row;
    let head = j / half;
    let pair = j % half;
    let base = row * p.cols;
    let rotated = p.rotated_pairs;
    if pair >= rotated {
        // Past the rotated values: two of them copied as they are.
        let d = head * p.head_dim + 2u * pair;
        out[base + d] = x[base + d];
        out[base + d + 1u] = x[base + d + 1u];
        return;
    }
    var a = head * p.head_dim + 2u * pair;
    var b = a + 1u;
    if p.half_split == 1u {
        a = head * p.head_dim + pair;
        b = a + rotated;
    }
    let cs = table[row * rotated + pair];
    let x0 = x[base + a];
    let x1 = x[base + b];
    out[base + a] = x0 * cs.x - x1 * cs.y;
    out[base + b] = x0 * cs.y + x1 * cs.x;
}
