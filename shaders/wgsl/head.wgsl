// The output head's reductions, so that a step reads back token ids instead of whole
// vocabularies: `argmax` gives each logits row's index of its largest value, the first one on
// ties (the host's rule, gpu/src/backend.rs `argmax`). NaN is skipped where the device keeps
// NaN semantics (WGSL lets it not); a row of NaN alone gives 0. `top_k` gives each row's k
// largest finite values with their indices, for a sampler whose top-k filter comes first.
// `sample` draws a token from a row's whole distribution (gpu/src/draw.rs); `adjust` applies
// the penalties and logit bias to a copy of the logits first; `log_sum` gives what a row's
// log-probabilities need (gpu/src/logprobs.rs).

@group(0) @binding(0) var<storage, read> logits: array<f32>;
// `sample`: 5 words per draw (row, u, 1/temperature, min weight, top-p); `adjust`: 6 words per
// change (row, token, positive scale, negative scale, subtract, add); `log_sum`: 2 words per
// row (row, chosen token); unused by the others.
@group(0) @binding(1) var<storage, read> draws: array<u32>;
// The output; for `adjust`, the copy of the logits it changes in place.
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

// ---- sample ----

var<workgroup> scan: array<f32, 256>;
var<workgroup> claim: atomic<u32>;
var<workgroup> last_live: atomic<u32>;
var<workgroup> chosen_lane: u32;
var<workgroup> nucleus_flag: u32;
// Top-p's digit masses: 16 digits × 128 threads.
var<workgroup> bin_mass: array<f32, 2048>;

fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// gpu/src/draw.rs `RowDraw`'s weight before the filters.
fn raw_weight(v: f32, max_v: f32, inv_t: f32) -> f32 {
    return select(0.0, exp((v - max_v) * inv_t), is_finite(v));
}

// The weight a draw walks: top-p keeps order keys from `min_key` on, min-p weights from `min_w`.
fn draw_weight(v: f32, max_v: f32, inv_t: f32, min_w: f32, min_key: u32) -> f32 {
    let w = exp((v - max_v) * inv_t);
    return select(0.0, w, is_finite(v) && order_key(v) >= min_key && w >= min_w);
}

// The nucleus floor's order key (draw.rs `nucleus_floor`): the largest key K whose tokens
// from K up hold top_p of the mass, four bits at a time from the top. A round sums, per
// digit, the weights of the tokens that match the bits found so far; the digit taken is the
// largest at which the mass from it up (plus everything above the prefix) reaches the target.
fn nucleus_floor_key(base: u32, max_v: f32, inv_t: f32, top_p: f32, lid: u32) -> u32 {
    var own = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        own += raw_weight(logits[base + c], max_v, inv_t);
    }
    prefix_sums(own, lid);
    let goal = top_p * scan[WG - 1u];
    var prefix = 0u;
    var above = 0.0;
    for (var round = 0u; round < 8u; round++) {
        let shift = 28u - 4u * round;
        let high = select(0xffffffffu << (shift + 4u), 0u, round == 0u);
        var bins: array<f32, 16>;
        for (var c = lid; c < p.cols; c += WG) {
            let v = logits[base + c];
            let key = order_key(v);
            if key != 0u && (key & high) == prefix {
                bins[(key >> shift) & 15u] += raw_weight(v, max_v, inv_t);
            }
        }
        // Each digit's sum over the workgroup: the upper half stores, the lower adds, a tree.
        if lid >= 128u {
            for (var b = 0u; b < 16u; b++) {
                bin_mass[b * 128u + lid - 128u] = bins[b];
            }
        }
        workgroupBarrier();
        if lid < 128u {
            for (var b = 0u; b < 16u; b++) {
                bin_mass[b * 128u + lid] += bins[b];
            }
        }
        workgroupBarrier();
        for (var half = 64u; half > 0u; half >>= 1u) {
            if lid < half {
                for (var b = 0u; b < 16u; b++) {
                    bin_mass[b * 128u + lid] += bin_mass[b * 128u + lid + half];
                }
            }
            workgroupBarrier();
        }
        // Digit 0 where rounding kept the mass short of the target everywhere.
        var acc = above;
        var digit = 0u;
        for (var b = 15u; b > 0u; b--) {
            let m = bin_mass[b * 128u];
            if acc + m >= goal {
                digit = b;
                break;
            }
            acc += m;
        }
        above = acc;
        prefix |= digit << shift;
        // Every thread has read the sums before the next round stores its own.
        workgroupBarrier();
    }
    return prefix;
}

struct RowMax {
    value: f32,
    // Whether the row has a finite value at all.
    seen: bool,
}

// The largest finite value of the row at `base` (every thread gets it). From uniform control
// flow.
fn finite_max(base: u32, lid: u32) -> RowMax {
    var m = 0.0;
    var seen = 0u;
    for (var c = lid; c < p.cols; c += WG) {
        let v = logits[base + c];
        if is_finite(v) && (seen == 0u || v > m) {
            m = v;
            seen = 1u;
        }
    }
    best_v[lid] = m;
    best_i[lid] = seen;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half >>= 1u) {
        if lid < half && best_i[lid + half] == 1u
            && (best_i[lid] == 0u || best_v[lid + half] > best_v[lid]) {
            best_v[lid] = best_v[lid + half];
            best_i[lid] = 1u;
        }
        workgroupBarrier();
    }
    let found = RowMax(best_v[0], best_i[0] == 1u);
    // Every thread has read the result before the arrays are used again.
    workgroupBarrier();
    return found;
}

// Inclusive prefix sums of every thread's `v` over the workgroup (Hillis-Steele in `scan`).
fn prefix_sums(v: f32, lid: u32) {
    scan[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        let add = select(0.0, scan[lid - off], lid >= off);
        workgroupBarrier();
        scan[lid] += add;
        workgroupBarrier();
    }
}

// Which thread's interval [scan[t] − v, scan[t]) holds `r` (each thread passes its own `v`),
// else the last thread with v > 0; NONE if none has weight. Uses `claim` and `last_live`.
fn claimant(v: f32, r: f32, lid: u32) -> u32 {
    if lid == 0u {
        atomicStore(&claim, NONE);
        atomicStore(&last_live, NONE);
    }
    workgroupBarrier();
    let before = select(0.0, scan[lid - 1u], lid > 0u);
    if v > 0.0 {
        atomicMax(&last_live, lid);
        if r >= before && r < scan[lid] {
            atomicMin(&claim, lid);
        }
    }
    workgroupBarrier();
    let c = atomicLoad(&claim);
    let l = atomicLoad(&last_live);
    workgroupBarrier();
    return select(c, l, c == NONE);
}

// One workgroup per draw: the token at u of the row's cumulative weights, thread (lane) t
// holding tokens t, t + 256, … (draw.rs's order). The lanes' sums are scanned to find the
// lane the draw falls in, then that lane's tokens, 256 at a time, to find the token.
// Out: the token per draw, NONE where the row has no finite logit (the host takes the argmax).
@compute @workgroup_size(256)
fn sample(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let d = wid.x + wid.y * p.grid_x;
    if d >= p.rows {
        return;
    }
    let base = draws[5u * d] * p.cols;
    let u = bitcast<f32>(draws[5u * d + 1u]);
    let inv_t = bitcast<f32>(draws[5u * d + 2u]);
    let min_w = bitcast<f32>(draws[5u * d + 3u]);
    let top_p = bitcast<f32>(draws[5u * d + 4u]);
    let max_v = finite_max(base, lid).value;
    // Top-p's floor (order keys of finite values are at least 1: 0 keeps them all).
    if lid == 0u {
        nucleus_flag = select(0u, 1u, top_p < 1.0);
    }
    var min_key = 0u;
    if workgroupUniformLoad(&nucleus_flag) == 1u {
        min_key = nucleus_floor_key(base, max_v, inv_t, top_p, lid);
    }
    // This lane's weight, in token order. (No finite logit: every weight is 0.)
    var own = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        own += draw_weight(logits[base + c], max_v, inv_t, min_w, min_key);
    }
    prefix_sums(own, lid);
    let total = scan[WG - 1u];
    let found = claimant(own, u * total, lid);
    // The draw's remainder inside its lane (past its end if rounding carried it there: then
    // the lane's last token with weight). Read before the barrier below: the rounds rewrite
    // `scan`.
    var r = u * total - select(0.0, scan[max(found, 1u) - 1u], found > 0u && found != NONE);
    if lid == 0u {
        chosen_lane = found;
    }
    let lane = workgroupUniformLoad(&chosen_lane);
    if lane == NONE {
        if lid == 0u {
            ids[d] = NONE;
        }
        return;
    }
    // The lane's tokens, 256 at a time: thread j takes token lane + 256·(round·256 + j).
    let per_lane = (p.cols + WG - 1u) / WG;
    let rounds = (per_lane + WG - 1u) / WG;
    var picked = NONE;
    var last = NONE;
    for (var round = 0u; round < rounds; round++) {
        let c = lane + WG * (round * WG + lid);
        let v = logits[base + min(c, p.cols - 1u)];
        let w = select(0.0, draw_weight(v, max_v, inv_t, min_w, min_key), c < p.cols);
        prefix_sums(w, lid);
        let t = claimant(w, select(r, -1.0, picked != NONE), lid);
        if picked == NONE && t != NONE {
            last = lane + WG * (round * WG + t);
            if r < scan[WG - 1u] {
                picked = last;
            }
        }
        r -= scan[WG - 1u];
        workgroupBarrier();
    }
    if lid == 0u {
        ids[d] = select(picked, last, picked == NONE);
    }
}

// ---- adjust ----

// One thread per change (gpu/src/draw.rs `LogitAdjust`, the same float steps); each (row,
// token) appears once. `p.rows`: changes; `p.grid_x`: threads per grid row.
@compute @workgroup_size(64)
fn adjust(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    if i >= p.rows {
        return;
    }
    let token = draws[6u * i + 1u];
    if token >= p.cols {
        return;
    }
    let at = draws[6u * i] * p.cols + token;
    var v = bitcast<f32>(ids[at]);
    let scale = bitcast<f32>(select(draws[6u * i + 3u], draws[6u * i + 2u], v > 0.0));
    let subtract = bitcast<f32>(draws[6u * i + 4u]);
    let add = bitcast<f32>(draws[6u * i + 5u]);
    if scale != 1.0 {
        v *= scale;
    }
    if subtract != 0.0 {
        v -= subtract;
    }
    if add != 0.0 {
        v += add;
    }
    ids[at] = bitcast<u32>(v);
}

// ---- log_sum ----

// One workgroup per item (row, the token chosen for it): ln Σ exp over the row's finite
// logits (−∞ where it has none), summed from its largest (gpu/src/logprobs.rs
// `log_sum_exp`), and the token's logit (−∞ past the row's end: NONE, a draw from a row
// without a finite logit). Out: those two words per item.
@compute @workgroup_size(256)
fn log_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wid.x + wid.y * p.grid_x;
    if item >= p.rows {
        return;
    }
    let base = draws[2u * item] * p.cols;
    let token = draws[2u * item + 1u];
    let m = finite_max(base, lid);
    var own = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        own += raw_weight(logits[base + c], m.value, 1.0);
    }
    prefix_sums(own, lid);
    if lid == 0u {
        let neg_inf = bitcast<f32>(0xff800000u);
        let sum = select(neg_inf, m.value + log(scan[WG - 1u]), m.seen);
        let logit = select(neg_inf, logits[base + min(token, p.cols - 1u)], token < p.cols);
        ids[2u * item] = bitcast<u32>(sum);
        ids[2u * item + 1u] = bitcast<u32>(logit);
    }
}
