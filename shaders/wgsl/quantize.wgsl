// Dynamic quantization of activations, as the CPU backend does it (gpu/src/cpu/qdot.rs): per
// 32-value block, d = max|x| / 127, q = round(x / d) (ties to even), and with it c = d·Σq and
// Σq, which the integer products' corrections need.
//
// `main` quantizes x. `rms_norm`, `silu_mul` and `gelu_mul` compute a layer's RMSNorm and
// SwiGLU or GeGLU (the
// arithmetic of norm.wgsl and elementwise.wgsl, so the same bits) and quantize the result in
// the same pass, writing the f32 result to `out` as well: the products that follow read the
// int8 blocks, and a layer needs three dispatches fewer.
//
// Int8 output layout in one u32 array: every row's packed int8 words (k/4 per row), then each
// block's d (f32 bits) at base_d, c at base_c and Σq (i32 bits) at base_s.

// x; for `silu_mul` and `gelu_mul` the gate.
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
// `rms_norm`: the norm weight; `silu_mul`, `gelu_mul`: up.
@group(0) @binding(1) var<storage, read> y: array<vec4<f32>>;
// `rms_norm`, `silu_mul`, `gelu_mul`: the f32 result.
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;
@group(0) @binding(4) var<uniform> p: QuantizeParams;

struct QuantizeParams {
    k: u32,
    m: u32,
    base_d: u32,
    base_c: u32,
    base_s: u32,
    grid_x: u32,
    // `rms_norm`.
    eps: f32,
    _pad: u32,
}

// Quantizes the 32 values `v` of block `i` (row-major over (row, block)), whose packed words
// start at word `base`.
fn store_block(v: array<vec4<f32>, 8>, base: u32, i: u32) {
    var amax = 0.0;
    for (var j = 0u; j < 8u; j++) {
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

// One thread per (row, block): block i's first vec4 (and packed word), or none past the end.
fn block_start(gid: vec3<u32>) -> vec2<u32> {
    let i = gid.x + gid.y * p.grid_x;
    let blocks = p.k / 32u;
    if i >= p.m * blocks {
        return vec2<u32>(i, 0xffffffffu);
    }
    return vec2<u32>(i, (i / blocks) * (p.k / 4u) + (i % blocks) * 8u);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let at = block_start(gid);
    if at.y == 0xffffffffu {
        return;
    }
    var v: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) {
        v[j] = x[at.y + j];
    }
    store_block(v, at.y, at.x);
}

// elementwise.wgsl's silu_mul, value by value.
fn silu_times(g: f32, u: f32) -> f32 {
    return g / (1.0 + exp(-g)) * u;
}

// A gated activation's 32-value block, `act(gate) · up` (GELU's when `gelu`), stored in f32
// and quantized.
fn glu_block(gid: vec3<u32>, gelu: bool) {
    let at = block_start(gid);
    if at.y == 0xffffffffu {
        return;
    }
    var v: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) {
        let g = x[at.y + j];
        let u = y[at.y + j];
        if gelu {
            v[j] = vec4<f32>(
                gelu_times(g.x, u.x),
                gelu_times(g.y, u.y),
                gelu_times(g.z, u.z),
                gelu_times(g.w, u.w),
            );
        } else {
            v[j] = vec4<f32>(
                silu_times(g.x, u.x),
                silu_times(g.y, u.y),
                silu_times(g.z, u.z),
                silu_times(g.w, u.w),
            );
        }
        out[at.y + j] = v[j];
    }
    store_block(v, at.y, at.x);
}

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    glu_block(gid, false);
}

// elementwise.wgsl's gelu_mul, value by value.
fn gelu_times(g: f32, u: f32) -> f32 {
    let two_u = 2.0 * 0.7978846 * g * (1.0 + 0.044715 * g * g);
    let e = exp(-abs(two_u));
    return select(g * e, g, two_u >= 0.0) / (1.0 + e) * u;
}

@compute @workgroup_size(64)
fn gelu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    glu_block(gid, true);
}

// One workgroup per row: norm.wgsl's sum of squares (same threads, same order), then one
// thread per block scales, stores and quantizes it.
@compute @workgroup_size(256)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
//#endif
) {
    let row = wid.x + wid.y * p.grid_x;
    if row >= p.m {
        return;
    }
    let row4 = row * (p.k / 4u);
    var s = 0.0;
    for (var c = lid; c < p.k; c += REDUCE_WG) {
        let v = x[row4 + c / 4u][c % 4u];
        s += v * v;
    }
//#if SUBGROUP
    let total = workgroup_sum(s, lid, lane, lanes);
//#else
    let total = workgroup_sum(s, lid);
//#endif
    let inv = inverseSqrt(total / f32(p.k) + p.eps);
    let blocks = p.k / 32u;
    for (var b = lid; b < blocks; b += REDUCE_WG) {
        let base = row4 + b * 8u;
        var v: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            v[j] = x[base + j] * inv * y[b * 8u + j];
            out[base + j] = v[j];
        }
        store_block(v, base, row * blocks + b);
    }
}
