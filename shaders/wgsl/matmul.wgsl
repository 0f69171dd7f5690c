// Prefill and large batches: out = x · Wᵀ tiled 64 × 64, W dequantized into workgroup memory
// as its tiles load, 4 × 4 outputs per thread (4 consecutive rows by 4 consecutive columns).
// Tiles are stored k-major as vec4s, so a thread reads its 4 values of a k step in one 16-byte
// load from each tile (a real GPU's shared-memory instructions, not its FMAs, were the limit
// with one value per load).
//
// One tile step is one 32-value block, and the summation order is matvec.wgsl's: each block's
// dot in k order with fma from 0, block dots added in block order. So a row's result does not
// depend on which kernel, or which batch, computed it.

@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(8) var<uniform> p: MatmulParams;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 32u;

// [k][row / 4][row % 4] and [k][column / 4][column % 4].
var<workgroup> xs: array<vec4<f32>, 512>;
var<workgroup> ws: array<vec4<f32>, 512>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = wid.x + wid.y * nwg.x;
    if tile >= p.tiles_n * p.tiles_m {
        return;
    }
    let n0 = (tile % p.tiles_n) * TN;
    let m0 = (tile / p.tiles_n) * TM;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec4<f32>, 4>;
    let kq = p.k / 4u;
    let steps = (p.k + TK - 1u) / TK;
    // Loader roles: 64 rows × 4 units of 8 values.
    let lrow = lid / 4u;
    let lunit = lid % 4u;
    for (var s = 0u; s < steps; s++) {
        let k0 = s * TK;
        // x tile: row m0+lrow, columns k0 + 8·lunit .. +8.
        let kx = k0 + lunit * 8u;
        var xa = vec4<f32>(0.0);
        var xb = vec4<f32>(0.0);
        if m0 + lrow < p.m && kx < p.k {
            xa = x[(m0 + lrow) * kq + kx / 4u];
            xb = x[(m0 + lrow) * kq + kx / 4u + 1u];
        }
        let cx = lunit * 8u;
        for (var i = 0u; i < 4u; i++) {
            xs[(cx + i) * (TM / 4u) + lrow / 4u][lrow % 4u] = xa[i];
            xs[(cx + 4u + i) * (TM / 4u) + lrow / 4u][lrow % 4u] = xb[i];
        }
        // W tile: unit (k0 / 8 + lunit) of row n0+lrow.
        let u = k0 / 8u + lunit;
        var w: Unit;
        if n0 + lrow < p.rows && u * 8u < p.k {
            w = unit(n0 + lrow, u, p.dims);
        } else {
            w.lo = vec4<f32>(0.0);
            w.hi = vec4<f32>(0.0);
            w.k_lo = k0 + lunit * 8u;
            w.k_hi = w.k_lo + 4u;
        }
        let cl = w.k_lo - k0;
        let ch = w.k_hi - k0;
        for (var i = 0u; i < 4u; i++) {
            ws[(cl + i) * (TN / 4u) + lrow / 4u][lrow % 4u] = w.lo[i];
            ws[(ch + i) * (TN / 4u) + lrow / 4u][lrow % 4u] = w.hi[i];
        }
        workgroupBarrier();
        // bd[i][j]: output (row 4·ty + i, column 4·tx + j) of this block.
        var bd: array<vec4<f32>, 4>;
        for (var kk = 0u; kk < TK; kk++) {
            let a = xs[kk * (TM / 4u) + ty];
            let b = ws[kk * (TN / 4u) + tx];
            for (var i = 0u; i < 4u; i++) {
                bd[i] = fma(vec4<f32>(a[i]), b, bd[i]);
            }
        }
        for (var i = 0u; i < 4u; i++) {
            acc[i] += bd[i];
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + 4u * ty + i;
        if m < p.m {
            for (var j = 0u; j < 4u; j++) {
                let n = n0 + 4u * tx + j;
                if n < p.rows {
                    store_product(p.out, m, n, acc[i][j]);
                }
            }
        }
    }
}
