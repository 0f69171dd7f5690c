// Decode: out[m][n] = Σ_k x[m][k] · W[n][k] for M = 1..8 activation rows (sequences decoding
// in one step), dequantizing W in registers so each weight is read once for all M rows.
//
// Summation order is part of the contract, shared with matmul.wgsl: each 32-value block's
// dot is summed in k order with fma from 0, and block dots are added in block order. So a
// row's result is bit-identical whichever kernel, and whatever batch, computed it.
//
// One workgroup computes ROWS weight rows, CHUNK blocks of each per round: all threads compute
// the round's (row, block) dots in parallel, then ROWS · M threads, one per output, add their
// row's dots in block order from workgroup memory (one add per block: the serial part stays
// small, so a real GPU's threads spend their time loading weights).

@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(8) var<uniform> p: MatmulParams;

// Activation rows, fixed per pipeline so the accumulators stay in registers.
// ROWS, CHUNK, WG and `partial`: products.wgsl.

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
    // Thread lid < ROWS · M owns output (row0 + lid / M, m = lid % M).
    let own_r = lid / M;
    let own_m = lid % M;
    let owns = lid < ROWS * M && row0 + own_r < p.rows;
    var acc = 0.0;
    for (var c0 = 0u; c0 < blocks; c0 += CHUNK) {
        for (var turn = 0u; turn < ROWS * CHUNK / WG; turn++) {
            let item = turn * WG + lid;
            let r = item / CHUNK;
            let bl = item % CHUNK;
            let b = c0 + bl;
            let row = row0 + r;
            if b >= blocks || row >= p.rows {
                continue;
            }
            var bd: array<f32, 8>;
            // The block's 8-value units in k order: unit j covers columns 8j.. for the byte
            // formats, 4j.. and 16+4j.. for the nibble ones; both are visited in k order.
//#if NIBBLES
            var w: array<Unit, 4>;
            for (var j = 0u; j < 4u; j++) {
                w[j] = unit(row, b * 4u + j, p.dims);
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
                    let w = unit(row, u, p.dims);
                    for (var m = 0u; m < M; m++) {
                        bd[m] = dot4(bd[m], w.lo, x[m * kq + w.k_lo / 4u]);
                        bd[m] = dot4(bd[m], w.hi, x[m * kq + w.k_hi / 4u]);
                    }
                }
            }
//#endif
            for (var m = 0u; m < M; m++) {
                partial[r * ROW_STRIDE + bl * M + m] = bd[m];
            }
        }
        workgroupBarrier();
        if owns {
            let end = min(CHUNK, blocks - c0);
            for (var bl = 0u; bl < end; bl++) {
                acc += partial[own_r * ROW_STRIDE + bl * M + own_m];
            }
        }
        workgroupBarrier();
    }
    if owns {
        store_product(p.out, own_m, row0 + own_r, acc);
    }
}
