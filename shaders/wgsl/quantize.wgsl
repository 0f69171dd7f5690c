// Dynamic quantization of activations, as the CPU backend does it (gpu/src/cpu/qdot.rs): per
// 32-value block, d = max|x| / 127, q = round(x / d) (ties to even), and with it c = d·Σq and
// Σq, which the integer products' corrections need. One thread per (row, block).
//
// Output layout in one u32 array: every row's packed int8 words (k/4 per row), then each
// block's d (f32 bits) at base_d, c at base_c and Σq (i32 bits) at base_s.

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<uniform> p: QuantizeParams;

struct QuantizeParams {
    k: u32,
    m: u32,
    base_d: u32,
    base_c: u32,
    base_s: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    let blocks = p.k / 32u;
    if i >= p.m * blocks {
        return;
    }
    let base = (i / blocks) * (p.k / 4u) + (i % blocks) * 8u;
    var v: array<vec4<f32>, 8>;
    var amax = 0.0;
    for (var j = 0u; j < 8u; j++) {
        v[j] = x[base + j];
        let a = abs(v[j]);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let d = amax / 127.0;
    let inv = select(0.0, 1.0 / d, d > 0.0);
    var s = 0i;
    for (var j = 0u; j < 8u; j++) {
        let q = vec4<i32>(round(v[j] * inv));
        s += q.x + q.y + q.z + q.w;
        xq[base + j] = pack4xI8(q);
    }
    xq[p.base_d + i] = bitcast<u32>(d);
    xq[p.base_c + i] = bitcast<u32>(d * f32(s));
    xq[p.base_s + i] = bitcast<u32>(s);
}
