// The output head's reductions, so that a step reads back token ids instead of whole
// vocabularies: `argmax` gives each logits row's index of its largest value, the first one on
// ties (the host's rule, gpu/src/backend.rs `argmax`). NaN is skipped where the device keeps
// NaN semantics (WGSL lets it not); a row of NaN alone gives 0. `top_k` gives each row's k
// largest finite values with their indices, for a sampler whose top-k filter comes first.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
// Unused (the Binary layout's second input).
@group(0) @binding(1) var<storage, read> unused: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<uniform> p: HeadParams;

struct HeadParams {
    // Values per row, and rows.
    cols: u32,
    rows: u32,
    grid_x: u32,
    // top_k: values per row to find (at most K_MAX).
    k: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

// Whether (v, i) beats (bv, bi): larger, or equal and earlier. A NONE index never wins.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

// One workgroup per row.
@compute @workgroup_size(256)
fn argmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * p.grid_x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var bv = 0.0;
    var bi = NONE;
    // Each thread's values in increasing index order: strictly greater keeps the first.
    for (var c = lid; c < p.cols; c += WG) {
        let v = logits[base + c];
        if v == v && (bi == NONE || v > bv) {
            bv = v;
            bi = c;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half >>= 1u) {
        if lid < half && beats(best_v[lid + half], best_i[lid + half], best_v[lid], best_i[lid]) {
            best_v[lid] = best_v[lid + half];
            best_i[lid] = best_i[lid + half];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        ids[row] = select(best_i[0], 0u, best_i[0] == NONE);
    }
}

// ---- top_k ----

const K_MAX: u32 = 64u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> found: array<u32, 2>;
var<workgroup> ties: array<u32, 256>;
var<workgroup> taken: atomic<u32>;
var<workgroup> cand_key: array<u32, 64>;
var<workgroup> cand_id: array<u32, 64>;

// A value's place in f32::total_cmp's order as an unsigned key; 0 for infinities and NaN,
// which are never chosen (tested on the bits: WGSL may drop NaN comparisons).
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if (b & 0x7f800000u) == 0x7f800000u {
        return 0u;
    }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// One workgroup per row. The k-th largest key is found a byte at a time from the top (a
// histogram of the values that match the bytes found so far); the values above it and the
// first (lowest-index) of those equal to it are the k kept, then ranked largest first, ties by
// lower index: the host's order (gpu/src/backend.rs `top_k`). Out per row, 1 + 2k words:
// how many were kept (fewer than k where a row has fewer finite values), their indices, then
// their values' bits.
@compute @workgroup_size(256)
fn top_k(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * p.grid_x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let k = min(p.k, K_MAX);
    // `prefix`: the key bytes found; `need`: how many values equal to the k-th largest key
    // are still to keep; `all`: fewer finite values than k, keep every one.
    var prefix = 0u;
    var need = k;
    var all = false;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        let high = select(0xffffffffu << (shift + 8u), 0u, round == 0u);
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var c = lid; c < p.cols; c += WG) {
            let key = order_key(logits[base + c]);
            if key != 0u && (key & high) == prefix {
                atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
            }
        }
        workgroupBarrier();
        if lid == 0u {
            var above = 0u;
            var bin = 256u;
            for (var b = 255i; b >= 0i; b--) {
                let h = atomicLoad(&hist[u32(b)]);
                if above + h >= need {
                    bin = u32(b);
                    break;
                }
                above += h;
            }
            if bin == 256u {
                found[0] = 0u;
                found[1] = 0u;
            } else {
                found[0] = prefix | (bin << shift);
                found[1] = need - above;
            }
        }
        let next_need = workgroupUniformLoad(&found[1]);
        prefix = found[0];
        if next_need == 0u {
            // Only on the first pass: fewer finite values than k.
            all = true;
            break;
        }
        need = next_need;
    }
    // Keep: every key above `prefix` (or every finite one), in any slot, and the first `need`
    // keys equal to it by index, after them. Each thread takes a contiguous run of columns so
    // that the runs' tie counts, summed in thread order, rank the ties by index.
    if lid == 0u {
        atomicStore(&taken, 0u);
    }
    let run = (p.cols + WG - 1u) / WG;
    let first = min(lid * run, p.cols);
    let end = min(first + run, p.cols);
    var own_ties = 0u;
    for (var c = first; c < end; c++) {
        own_ties += select(0u, 1u, !all && order_key(logits[base + c]) == prefix);
    }
    ties[lid] = own_ties;
    workgroupBarrier();
    let above_count = select(k - need, 0u, all);
    var rank = 0u;
    for (var t = 0u; t < lid; t++) {
        rank += ties[t];
    }
    for (var c = first; c < end; c++) {
        let key = order_key(logits[base + c]);
        if key == 0u {
            continue;
        }
        if (all && key != 0u) || (!all && key > prefix) {
            let slot = atomicAdd(&taken, 1u);
            cand_key[slot] = key;
            cand_id[slot] = c;
        } else if key == prefix {
            if rank < need {
                cand_key[above_count + rank] = key;
                cand_id[above_count + rank] = c;
            }
            rank++;
        }
    }
    workgroupBarrier();
    let kept = select(k, atomicLoad(&taken), all);
    let out = row * (1u + 2u * k);
    if lid == 0u {
        ids[out] = kept;
    }
    if lid < kept {
        let key = cand_key[lid];
        let id = cand_id[lid];
        var place = 0u;
        for (var j = 0u; j < kept; j++) {
            let kj = cand_key[j];
            place += select(0u, 1u, kj > key || (kj == key && cand_id[j] < id));
        }
        ids[out + 1u + place] = id;
        ids[out + 1u + k + place] = bitcast<u32>(logits[base + id]);
    }
}
