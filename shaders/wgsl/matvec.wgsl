// Decode: out[m][n] = Σ_k x[m][k] · W[n][k] for M = 1..8 activation rows (sequences decoding
// in one step), dequantizing W in registers so each weight is read once for all M rows.
//
// Summation order is part of the contract, shared with matmul.wgsl: each 32-value block's
// dot is summed in k order with fma from 0, and block dots are added in block order. So a
// row's result is bit-identical whichever kernel, and whatever batch, computed it.
//
// One workgroup computes ROWS weight rows: its threads take one (row, block) each per round,
// and ROWS · M threads then add the round's block dots in order.

@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(8) var<uniform> p: MatmulParams;

// Activation rows, fixed per pipeline so the accumulators stay in registers.
override M: u32 = 1u;
const ROWS: u32 = 4u;
const WG: u32 = 64u;

var<workgroup> partial: array<f32, 512>;

fn dot4(acc: f32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    return fma(a.w, b.w, fma(a.z, b.z, fma(a.y, b.y, fma(a.x, b.x, acc))));
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = (wid.x + wid.y * nwg.x) * ROWS;
    if row0 >= p.rows {
        return;
    }
    let blocks = (p.k + 31u) / 32u;
    let units = p.k / 8u;
    let kq = p.k / 4u;
    let items = ROWS * blocks;
    // Thread lid < ROWS · M owns output (row0 + lid / M, m = lid % M).
    var acc = 0.0;
    for (var start = 0u; start < items; start += WG) {
        let item = start + lid;
        let r = item / blocks;
        let b = item % blocks;
        var bd: array<f32, 8>;
        if item < items && row0 + r < p.rows {
            // The block's 8-value units in k order: unit j covers columns 8j.. for the byte
            // formats, 4j.. and 16+4j.. for the nibble ones; both are visited in k order.
//#if NIBBLES
            var w: array<Unit, 4>;
            for (var j = 0u; j < 4u; j++) {
                w[j] = unit(row0 + r, b * 4u + j, p.dims);
            }
            for (var j = 0u; j < 4u; j++) {
                for (var m = 0u; m < M; m++) {
                    bd[m] = dot4(bd[m], w[j].lo, x[m * kq + w[j].k_lo / 4u]);
                }
            }
            for (var j = 0u; j < 4u; j++) {
                for (var m = 0u; m < M; m++) {
                    bd[m] = dot4(bd[m], w[j].hi, x[m * kq + w[j].k_hi / 4u]);
                }
            }
//#else
            for (var j = 0u; j < 4u; j++) {
                let u = b * 4u + j;
                if u < units {
                    let w = unit(row0 + r, u, p.dims);
                    for (var m = 0u; m < M; m++) {
                        bd[m] = dot4(bd[m], w.lo, x[m * kq + w.k_lo / 4u]);
                        bd[m] = dot4(bd[m], w.hi, x[m * kq + w.k_hi / 4u]);
                    }
                }
            }
//#endif
        }
        for (var m = 0u; m < M; m++) {
            partial[lid * M + m] = bd[m];
        }
        workgroupBarrier();
        if lid < ROWS * M {
            let r_own = lid / M;
            let m_own = lid % M;
            let end = min(start + WG, items);
            for (var i = start; i < end; i++) {
                if i / blocks == r_own {
                    acc += partial[(i - start) * M + m_own];
                }
            }
        }
        workgroupBarrier();
    }
    let row = row0 + lid / M;
    if lid < ROWS * M && row < p.rows {
        store_product(p.out, lid % M, row, acc);
    }
}
