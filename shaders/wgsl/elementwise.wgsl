// Element-wise kernels over `n` values: residual add, a bias added to every row, SwiGLU's
// silu(gate)·up, GeGLU's gelu(gate)·up, gpt-oss's clamped SwiGLU, a scale, a soft cap, a row
// gather, and a scattered weighted add (a mixture of experts' sum).

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: ElementwiseParams;

struct ElementwiseParams {
    n: u32,
    grid_x: u32,
    // gather, add_bias: columns per row.
    cols: u32,
    // scale: the factor; softcap: the cap.
    value: f32,
}

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        out[i] = a[i] + b[i];
    }
}

// `b` holds one row of `cols` biases.
@compute @workgroup_size(64)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        out[i] = a[i] + b[i % p.cols];
    }
}

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        let g = a[i];
        out[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

// GELU's tanh form as x·σ(2u), u = √(2/π)(x + 0.044715x³), from exp(−|2u|) as the CPU
// backend's fastmath does: never an overflow (WGSL may assume no infinities).
fn gelu_tanh(x: f32) -> f32 {
    let two_u = 2.0 * 0.7978846 * x * (1.0 + 0.044715 * x * x);
    let e = exp(-abs(two_u));
    return select(x * e, x, two_u >= 0.0) / (1.0 + e);
}

@compute @workgroup_size(64)
fn gelu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        out[i] = gelu_tanh(a[i]) * b[i];
    }
}

// gpt-oss's clamped SwiGLU: g = min(gate, limit), u = clamp(up, ±limit), g·σ(1.702·g)·(u + 1),
// the limit in `value` (1.702: `SWIGLU_OAI_ALPHA` in gpu/src/backend.rs). σ from exp(−|z|), so nothing overflows for a very negative gate.
@compute @workgroup_size(64)
fn swiglu_oai(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        let g = min(a[i], p.value);
        let u = clamp(b[i], -p.value, p.value);
        let z = 1.702 * g;
        let e = exp(-abs(z));
        let sigma = select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
        out[i] = g * sigma * (u + 1.0);
    }
}

@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        out[i] = a[i] * p.value;
    }
}

@compute @workgroup_size(64)
fn softcap(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        out[i] = p.value * tanh(a[i] / p.value);
    }
}

// out row r = a row bitcast<u32>(b[r]): `b` holds the row indices.
@compute @workgroup_size(64)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        let r = i / p.cols;
        let src = bitcast<u32>(b[r]);
        out[i] = a[src * p.cols + i % p.cols];
    }
}

// out row bitcast<u32>(b[2r]) += b[2r + 1] · a row r, in place: `b` holds (row, weight) pairs
// whose rows are distinct, so no two invocations write one value.
@compute @workgroup_size(64)
fn scatter_add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i < p.n {
        let r = i / p.cols;
        let dst = bitcast<u32>(b[2u * r]) * p.cols + i % p.cols;
        out[dst] = out[dst] + b[2u * r + 1u] * a[i];
    }
}
