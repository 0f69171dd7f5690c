// Integer products of weights with int8 activations (quantize.wgsl), for Q8, Q4, Q4M and Lut4:
// one dot4I8Packed per 4 values, then per block and group the CPU backend's float steps
// (gpu/src/cpu/qdot.rs), in its order:
//
//   acc += f32(s_b) · (d_w · d_x)          per 32-block b, s_b the block's integer dot
//   csum += c_x;  corr += k_g · csum       per group g (csum restarting at each group)
//   out = acc + factor · corr              factor: Q8 −128, Q4 −8, Q4M +1, Lut4 0; k_g: d_w or the min
//
// The CPU keeps Q8 weights offset-binary (u = q + 128); here s_b = Σ q_w·q_x + 128·Σq_x is the
// same integer, so both backends compute the same numbers. Lut4 weights are looked up to their
// signed levels, so s_b = Σ T[q_w]·q_x, the CPU's integer after its offset correction. Shared by the decode kernel (`matvec`) and the tiled one
// (`matmul`); both add in the order above, so neither the kernel nor the batch changes a row.

@group(0) @binding(3) var<storage, read> xq: array<u32>;
// Added to the product where `p.add_residual` is 1 (the residual connection after the
// attention output and the MLP down projection), as the separate `add` would: product + residual.
// Only plain products (one output) add one.
@group(0) @binding(5) var<storage, read> residual: array<f32>;
@group(0) @binding(8) var<uniform> p: Int8Params;

struct Int8Params {
    dims: WeightDims,
    out: Outputs,
    k: u32,
    // Weight rows this dispatch computes.
    rows: u32,
    // Activation rows (matmul; the decode kernel's is the M override).
    m: u32,
    tiles_n: u32,
    tiles_m: u32,
    // Where quantize.wgsl put the block scales, c and Σq.
    base_d: u32,
    base_c: u32,
    base_s: u32,
    add_residual: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn store(m: u32, row: u32, v: f32) {
    if p.add_residual != 0u {
        store_product(p.out, m, row, v + residual[m * p.out.n + p.out.offset + row]);
    } else {
        store_product(p.out, m, row, v);
    }
}

//#if Q8
const FACTOR: f32 = -128.0;
//#endif
//#if Q4
const FACTOR: f32 = -8.0;
//#endif
//#if Q4M
const FACTOR: f32 = 1.0;
//#endif
//#if LUT4
const FACTOR: f32 = 0.0;
//#endif
// Whether the group correction is kept at all: Lut4's products need none, so its kernels
// skip the coefficients and sums (a constant condition, compiled out).
const CORRECTED: bool = FACTOR != 0.0;

// Weight row `row`'s block `b` as 8 words of 4 int8 values, in the activations' order.
fn weight_words(row: u32, b: u32) -> array<u32, 8> {
    var w: array<u32, 8>;
//#if Q8
    let base = row_word(row, p.dims) + b * 8u;
    for (var j = 0u; j < 8u; j++) {
        w[j] = w_words[base + j];
    }
//#else
    let base = row_word(row, p.dims) + b * 4u;
    for (var j = 0u; j < 4u; j++) {
        let packed = w_words[base + j];
        w[j] = packed & 0x0f0f0f0fu;
        w[4u + j] = (packed >> 4u) & 0x0f0f0f0fu;
//#if LUT4
        w[j] = level_bytes(w[j]);
        w[4u + j] = level_bytes(w[4u + j]);
//#endif
    }
//#endif
    return w;
}

fn group_coef(row: u32, b: u32) -> f32 {
    let g = group_index(row, b, p.dims);
//#if Q4M
    return min_at(g);
//#else
    return scale_at(g);
//#endif
}

fn x_word(m: u32, b: u32, j: u32) -> u32 {
    return xq[m * (p.k / 4u) + b * 8u + j];
}

fn x_scale(m: u32, b: u32) -> f32 {
    return bitcast<f32>(xq[p.base_d + m * (p.k / 32u) + b]);
}

fn x_c(m: u32, b: u32) -> f32 {
    return bitcast<f32>(xq[p.base_c + m * (p.k / 32u) + b]);
}

fn x_sum(m: u32, b: u32) -> i32 {
    return bitcast<i32>(xq[p.base_s + m * (p.k / 32u) + b]);
}

fn group_ends(b: u32) -> bool {
    return ((b + 1u) & ((1u << p.dims.group_shift) - 1u)) == 0u;
}

// ---- decode: M activation rows, ROWS weight rows per workgroup ----
//
// Each round takes CHUNK blocks of every row: first all threads compute the (row, block)
// terms in parallel (the integer dot and its scale, nothing order-dependent), then ROWS · M
// threads, one per output, add their row's terms in block order from workgroup memory. The
// serial part is one add per block, so a real GPU's threads stay busy loading weights.

// ROWS, CHUNK, WG and `partial`: products.wgsl.
// The group coefficient of each (row, block) that ends a group.
var<workgroup> coefs: array<f32, ROWS * CHUNK>;

@compute @workgroup_size(64)
fn matvec(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = (wid.x + wid.y * nwg.x) * ROWS;
    if row0 >= p.rows {
        return;
    }
    let blocks = p.k / 32u;
    let own_r = lid / M;
    let own_m = lid % M;
    let owns = lid < ROWS * M && row0 + own_r < p.rows;
    var acc = 0.0;
    var corr = 0.0;
    var csum = 0.0;
    for (var c0 = 0u; c0 < blocks; c0 += CHUNK) {
        for (var turn = 0u; turn < ROWS * CHUNK / WG; turn++) {
            let item = turn * WG + lid;
            let r = item / CHUNK;
            let bl = item % CHUNK;
            let b = c0 + bl;
            let row = row0 + r;
            if b < blocks && row < p.rows {
                let w = weight_words(row, b);
                let dw = scale_at(group_index(row, b, p.dims));
                for (var m = 0u; m < M; m++) {
                    var s = 0i;
                    for (var j = 0u; j < 8u; j++) {
                        s += dot4I8Packed(w[j], x_word(m, b, j));
                    }
//#if Q8
                    s += 128i * x_sum(m, b);
//#endif
                    partial[r * ROW_STRIDE + bl * M + m] = f32(s) * (dw * x_scale(m, b));
                }
                if CORRECTED && group_ends(b) {
                    coefs[item] = group_coef(row, b);
                }
            }
        }
        workgroupBarrier();
        if owns {
            let end = min(CHUNK, blocks - c0);
            for (var bl = 0u; bl < end; bl++) {
                let b = c0 + bl;
                acc += partial[own_r * ROW_STRIDE + bl * M + own_m];
                if CORRECTED {
                    csum += x_c(own_m, b);
                    if group_ends(b) {
                        corr += coefs[own_r * CHUNK + bl] * csum;
                        csum = 0.0;
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if owns {
        store(own_m, row0 + own_r, acc + FACTOR * corr);
    }
}

// ---- prefill: 64 × 64 output tiles, 4 × 4 per thread, S blocks of 32 values per stage ----

const T: u32 = 64u;
// Blocks staged in workgroup memory between two barriers (fewer synchronisations per K).
const S: u32 = 2u;

// [s][row]: block s of each of the tile's 64 rows as two vec4s of 4 words, so a thread reads
// a row's block in two 16-byte loads (a real GPU's shared-memory instructions, not its
// integer dots, were the limit with one word per load). `staged` swizzles the two halves by
// row so that the 8 rows a quarter-warp reads at once fall in distinct banks.
var<workgroup> xs: array<vec4<u32>, 256>;
var<workgroup> ws: array<vec4<u32>, 256>;
// [s][row]
var<workgroup> x_d: array<f32, 128>;
var<workgroup> x_cs: array<f32, 128>;
var<workgroup> x_qs: array<i32, 128>;
var<workgroup> w_d: array<f32, 128>;
var<workgroup> w_k: array<f32, 128>;

fn staged(st: u32, row: u32, half: u32) -> u32 {
    return (st * T + row) * 2u + (half ^ ((row >> 2u) & 1u));
}

fn dot8(w_lo: vec4<u32>, w_hi: vec4<u32>, x_lo: vec4<u32>, x_hi: vec4<u32>) -> i32 {
    return dot4I8Packed(w_lo.x, x_lo.x) + dot4I8Packed(w_lo.y, x_lo.y)
        + dot4I8Packed(w_lo.z, x_lo.z) + dot4I8Packed(w_lo.w, x_lo.w)
        + dot4I8Packed(w_hi.x, x_hi.x) + dot4I8Packed(w_hi.y, x_hi.y)
        + dot4I8Packed(w_hi.z, x_hi.z) + dot4I8Packed(w_hi.w, x_hi.w);
}

@compute @workgroup_size(256)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = wid.x + wid.y * nwg.x;
    if tile >= p.tiles_n * p.tiles_m {
        return;
    }
    let n0 = (tile % p.tiles_n) * T;
    let m0 = (tile / p.tiles_n) * T;
    let tx = lid % 16u;
    let ty = lid / 16u;
    let blocks = p.k / 32u;
    var acc: array<vec4<f32>, 4>;
    var corr: array<vec4<f32>, 4>;
    var csum: vec4<f32>;
    // Staging: threads 0..127 load activation rows, 128..255 weight rows, one (stage, row)
    // each: its block's 8 words and its scales.
    let lrow = lid % T;
    let lst = (lid / T) % S;
    let loads_x = lid < S * T;
    let xm = m0 + lrow;
    let x_ok = xm < p.m;
    let xr_clamped = min(xm, p.m - 1u);
    let wn = n0 + lrow;
    let w_ok = wn < p.rows;
    let wrow = min(wn, p.rows - 1u);
    for (var b0 = 0u; b0 < blocks; b0 += S) {
        // Past the last block, a copy of it (never read: the product loop stops there too).
        let b = min(b0 + lst, blocks - 1u);
        if loads_x {
            var lo = vec4<u32>(0u);
            var hi = vec4<u32>(0u);
            if x_ok {
                lo = vec4<u32>(x_word(xr_clamped, b, 0u), x_word(xr_clamped, b, 1u),
                    x_word(xr_clamped, b, 2u), x_word(xr_clamped, b, 3u));
                hi = vec4<u32>(x_word(xr_clamped, b, 4u), x_word(xr_clamped, b, 5u),
                    x_word(xr_clamped, b, 6u), x_word(xr_clamped, b, 7u));
            }
            xs[staged(lst, lrow, 0u)] = lo;
            xs[staged(lst, lrow, 1u)] = hi;
            x_d[lst * T + lrow] = select(0.0, x_scale(xr_clamped, b), x_ok);
            x_cs[lst * T + lrow] = select(0.0, x_c(xr_clamped, b), x_ok);
            x_qs[lst * T + lrow] = select(0i, x_sum(xr_clamped, b), x_ok);
        } else {
            var lo = vec4<u32>(0u);
            var hi = vec4<u32>(0u);
            if w_ok {
//#if Q8
                let base = row_word(wrow, p.dims) + b * 8u;
                lo = vec4<u32>(w_words[base], w_words[base + 1u], w_words[base + 2u], w_words[base + 3u]);
                hi = vec4<u32>(w_words[base + 4u], w_words[base + 5u], w_words[base + 6u], w_words[base + 7u]);
//#else
                let base = row_word(wrow, p.dims) + b * 4u;
                let packed = vec4<u32>(w_words[base], w_words[base + 1u], w_words[base + 2u], w_words[base + 3u]);
                lo = packed & vec4<u32>(0x0f0f0f0fu);
                hi = (packed >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
//#if LUT4
                lo = vec4<u32>(level_bytes(lo.x), level_bytes(lo.y), level_bytes(lo.z), level_bytes(lo.w));
                hi = vec4<u32>(level_bytes(hi.x), level_bytes(hi.y), level_bytes(hi.z), level_bytes(hi.w));
//#endif
//#endif
            }
            ws[staged(lst, lrow, 0u)] = lo;
            ws[staged(lst, lrow, 1u)] = hi;
            w_d[lst * T + lrow] = select(0.0, scale_at(group_index(wrow, b, p.dims)), w_ok);
            w_k[lst * T + lrow] = select(0.0, group_coef(wrow, b), w_ok);
        }
        workgroupBarrier();
        for (var st = 0u; st < S; st++) {
            let b = b0 + st;
            if b >= blocks {
                break;
            }
            let ends = group_ends(b);
            // Registers hold this thread's 4 activation rows and, in turn, each of its 4
            // weight rows. Per output element the float steps (acc, then csum and corr at a
            // group's end) are those of the decode kernel.
            var x_lo: array<vec4<u32>, 4>;
            var x_hi: array<vec4<u32>, 4>;
            var xd: vec4<f32>;
            for (var i = 0u; i < 4u; i++) {
                let xr = ty + 16u * i;
                x_lo[i] = xs[staged(st, xr, 0u)];
                x_hi[i] = xs[staged(st, xr, 1u)];
                xd[i] = x_d[st * T + xr];
                csum[i] += x_cs[st * T + xr];
            }
            for (var jn = 0u; jn < 4u; jn++) {
                let wr = tx + 16u * jn;
                let w_lo = ws[staged(st, wr, 0u)];
                let w_hi = ws[staged(st, wr, 1u)];
                let wd = w_d[st * T + wr];
                let wk = w_k[st * T + wr];
                for (var i = 0u; i < 4u; i++) {
                    var s = dot8(w_lo, w_hi, x_lo[i], x_hi[i]);
//#if Q8
                    s += 128i * x_qs[st * T + ty + 16u * i];
//#endif
                    acc[i][jn] += f32(s) * (wd * xd[i]);
                    if CORRECTED && ends {
                        corr[i][jn] += wk * csum[i];
                    }
                }
            }
            if ends {
                csum = vec4<f32>(0.0);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        if m < p.m {
            for (var jn = 0u; jn < 4u; jn++) {
                let n = n0 + tx + 16u * jn;
                if n < p.rows {
                    store(m, n, acc[i][jn] + FACTOR * corr[i][jn]);
                }
            }
        }
    }
}
