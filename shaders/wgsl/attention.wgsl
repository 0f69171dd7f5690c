// Causal grouped-query attention over the paged KV pool of one layer.
//
// Pool layout per layer: | block | kv head | slot | head dim |, f32 or (the F16 variant) f16 in
// pairs per u32, read with unpack2x16float (no shader-f16 needed). A sequence's position p
// lives in block tables[table + p / block_tokens], slot p % block_tokens. `row_info[r]` is
// (position, offset of its sequence's block table in `tables`) for each new row r.
// `kv_write` stores the new rows' keys and values; `attend` then runs one workgroup per
// (row, head, split), streaming the split's positions in tiles of 64 with an online softmax.
// Positions are split into chunks of CHUNK along the sequence (split-K, so that a long
// context spreads over many workgroups even for one decoding row): a row of one chunk writes
// its output directly; a longer row writes each chunk's (max, sum, weighted values) to
// `partial` and `attend_merge` combines them in chunk order. The chunks depend on the row's
// own position only, so its result depends on its own sequence only, prefill or decode. A row
// no sequence claims has position NO_ROW: nothing is written to the pool for it and its
// output is zero. A sliding-window layer (`p.window` > 0) sees only its row's last `window`
// positions: the chunks start at the window's first one. Attention sinks join the softmax
// where a row's output is written (single chunk) or merged.

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k_new: array<f32>;
@group(0) @binding(2) var<storage, read> v_new: array<f32>;
//#if F16
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;
//#else
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
//#endif
@group(0) @binding(5) var<storage, read> row_info: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> tables: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
// Per (row, head, split): max score, sum of exponentials, then head_dim weighted values.
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;
// Each row's (cos, sin) per rotated pair (rope.wgsl's table), where `p.rope` asks for RoPE
// here: q and the new keys are then rotated as they are read, as the rope kernel would have.
@group(0) @binding(9) var<storage, read> rope_table: array<vec2<f32>>;
// One logit per query head joining each softmax with no value (gpt-oss's attention sinks),
// where `p.has_sinks` says so.
@group(0) @binding(10) var<storage, read> sinks: array<f32>;
@group(0) @binding(11) var<uniform> p: AttentionParams;

struct AttentionParams {
    rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    block_tokens: u32,
    // Multiplies q·k (1 / sqrt(head_dim) for most models).
    scale: f32,
    grid_x: u32,
    // Splits per (row, head) in the grid: the longest row's chunk count.
    splits: u32,
    // RoPE of q and k here: 0 none (already rotated), 1 pairs (2i, 2i+1), 2 pairs
    // (i, i + rotated_pairs).
    rope: u32,
    // Gemma 2: scaled scores become softcap · tanh(score / softcap); 0 none.
    softcap: f32,
    // Positions a query sees back to itself (sliding window); 0 all.
    window: u32,
    // Pairs rotated per head; the values past 2 · rotated_pairs are not rotated (partial
    // rotary).
    rotated_pairs: u32,
    // 1: `sinks` holds a logit per head.
    has_sinks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Head `head`'s sink logit, or a score so low that it adds nothing (exp underflows to 0).
fn sink(head: u32) -> f32 {
    if p.has_sinks == 0u {
        return -3.0e38;
    }
    return sinks[head];
}

// One value of a rotated pair (x0, x1) of row `row`: the first (`first`) or the second, with
// the row's (cos, sin) for the pair, in the rope kernel's arithmetic.
fn rotated(x0: f32, x1: f32, row: u32, pair: u32, first: bool) -> f32 {
    let cs = rope_table[row * p.rotated_pairs + pair];
    return select(x0 * cs.y + x1 * cs.x, x0 * cs.x - x1 * cs.y, first);
}

// The pair of head value `d`: the index of its first and second value within the head, and
// which of them `d` is.
fn rope_pair(d: u32) -> vec3<u32> {
    let half = p.rotated_pairs;
    if p.rope == 1u {
        let pair = d / 2u;
        return vec3<u32>(2u * pair, 2u * pair + 1u, pair);
    }
    let pair = d % half;
    return vec3<u32>(pair, pair + half, pair);
}

fn q_at(row: u32, base: u32, d: u32) -> f32 {
    if p.rope == 0u || d >= 2u * p.rotated_pairs {
        return q[base + d];
    }
    let pr = rope_pair(d);
    return rotated(q[base + pr.x], q[base + pr.y], row, pr.z, d == pr.x);
}

// New key `e` of row `row` (e in 0..kv_dim).
fn k_new_at(row: u32, e: u32) -> f32 {
    let i = row * p.n_kv_heads * p.head_dim + e;
    let d = e % p.head_dim;
    if p.rope == 0u || d >= 2u * p.rotated_pairs {
        return k_new[i];
    }
    let base = i - d;
    let pr = rope_pair(d);
    return rotated(k_new[base + pr.x], k_new[base + pr.y], row, pr.z, d == pr.x);
}

const WG: u32 = 64u;
const NO_ROW: u32 = 0xffffffffu;
const TILE: u32 = 64u;
// Positions per split (a multiple of TILE).
const CHUNK: u32 = 256u;
// Head dimensions up to 4 × 64.
const DIMS_PER_THREAD: u32 = 4u;

// The first position a row at `pos` attends to.
fn first_seen(pos: u32) -> u32 {
    if p.window == 0u || pos < p.window {
        return 0u;
    }
    return pos + 1u - p.window;
}

fn slot_offset(table: u32, pos: u32, kv_head: u32) -> u32 {
    let block = tables[table + pos / p.block_tokens];
    return ((block * p.n_kv_heads + kv_head) * p.block_tokens + pos % p.block_tokens) * p.head_dim;
}

//#if F16
// The f16 bits of `v`, rounded to nearest even as the CPU backend's pool stores it (WGSL
// leaves pack2x16float's rounding to the implementation).
fn f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if a >= 0x7f800000u {
        // Infinity stays infinity, NaN stays a (quiet) NaN.
        return sign | 0x7c00u | select(0u, 0x200u, a > 0x7f800000u);
    }
    if a >= 0x477ff000u {
        // 65520 and up round past the largest half.
        return sign | 0x7c00u;
    }
    if a < 0x38800000u {
        // Below the smallest normal half: a subnormal, round(v · 2^24) units of 2^-24.
        let e = a >> 23u;
        if e < 102u {
            return sign;
        }
        let m = (a & 0x7fffffu) | 0x800000u;
        let shift = 126u - e;
        let q = m >> shift;
        let rest = m & ((1u << shift) - 1u);
        let half = 1u << (shift - 1u);
        let up = rest > half || (rest == half && (q & 1u) == 1u);
        return sign | (q + select(0u, 1u, up));
    }
    // Normal: rebias the exponent, round the 13 dropped bits to nearest even.
    let rounded = a + 0xfffu + ((a >> 13u) & 1u);
    return sign | ((rounded - 0x38000000u) >> 13u);
}

// Values `i` and `i + 1` (i even) of a pool.
fn k_pair(i: u32) -> vec2<f32> {
    return unpack2x16float(k_cache[i >> 1u]);
}

fn v_at(i: u32) -> f32 {
    let pair = unpack2x16float(v_cache[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

// One thread per pair of values (one word of the pool).
@compute @workgroup_size(64)
fn kv_write(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    let kv_dim = p.n_kv_heads * p.head_dim;
    let pairs = kv_dim / 2u;
    let row = i / pairs;
    if row >= p.rows {
        return;
    }
    let e = (i % pairs) * 2u;
    let info = row_info[row];
    if info.x == NO_ROW {
        return;
    }
    let src = row * kv_dim + e;
    let dst = slot_offset(info.y, info.x, e / p.head_dim) + e % p.head_dim;
    k_cache[dst >> 1u] = f16_bits(k_new_at(row, e)) | (f16_bits(k_new_at(row, e + 1u)) << 16u);
    v_cache[dst >> 1u] = f16_bits(v_new[src]) | (f16_bits(v_new[src + 1u]) << 16u);
}
//#else
fn k_pair(i: u32) -> vec2<f32> {
    return vec2<f32>(k_cache[i], k_cache[i + 1u]);
}

fn v_at(i: u32) -> f32 {
    return v_cache[i];
}

@compute @workgroup_size(64)
fn kv_write(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.grid_x;
    let kv_dim = p.n_kv_heads * p.head_dim;
    let row = i / kv_dim;
    if row >= p.rows {
        return;
    }
    let e = i % kv_dim;
    let info = row_info[row];
    if info.x == NO_ROW {
        return;
    }
    let dst = slot_offset(info.y, info.x, e / p.head_dim) + e % p.head_dim;
    k_cache[dst] = k_new_at(row, e);
    v_cache[dst] = v_new[i];
}
//#endif

var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, 64>;
// Where each position of the tile lives in the pool, found once by its own thread (a block
// table load, a division) and then read by every thread in the value loop.
var<workgroup> slots: array<u32, 64>;

@compute @workgroup_size(64)
fn attend(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wid.x + wid.y * nwg.x;
    let split = item % p.splits;
    let row_head = item / p.splits;
    let row = row_head / p.n_heads;
    if row >= p.rows {
        return;
    }
    let head = row_head % p.n_heads;
    let kv_head = head / (p.n_heads / p.n_kv_heads);
    let hd = p.head_dim;
    let q_base = row * p.n_heads * hd + head * hd;
    let info = row_info[row];
    if info.x == NO_ROW {
        if split == 0u {
            for (var d = lid; d < hd; d += WG) {
                out[q_base + d] = 0.0;
            }
        }
        return;
    }
    let n = info.x + 1u;
    let lo = first_seen(info.x);
    let chunks = (n - lo + CHUNK - 1u) / CHUNK;
    if split >= chunks {
        return;
    }
    for (var d = lid; d < hd; d += WG) {
        qs[d] = q_at(row, q_base, d) * p.scale;
    }
    workgroupBarrier();
    let t_begin = lo + split * CHUNK;
    let t_end = min(n, t_begin + CHUNK);
    var m_run = -3.0e38;
    var l_run = 0.0;
    var acc: array<f32, DIMS_PER_THREAD>;
    for (var t0 = t_begin; t0 < t_end; t0 += TILE) {
        let pos = t0 + lid;
        var s = -3.0e38;
        if pos < t_end {
            let base = slot_offset(info.y, pos, kv_head);
            slots[lid] = base;
            s = 0.0;
            // Head dimensions are even (RoPE rotates pairs); the sum stays in d order.
            for (var d = 0u; d < hd; d += 2u) {
                let k = k_pair(base + d);
                s += qs[d] * k.x;
                s += qs[d + 1u] * k.y;
            }
            if p.softcap > 0.0 {
                s = p.softcap * tanh(s / p.softcap);
            }
        }
        probs[lid] = s;
        workgroupBarrier();
        var m_tile = m_run;
        for (var j = 0u; j < TILE; j++) {
            m_tile = max(m_tile, probs[j]);
        }
        workgroupBarrier();
        probs[lid] = select(0.0, exp(s - m_tile), pos < t_end);
        workgroupBarrier();
        let correction = exp(m_run - m_tile);
        l_run *= correction;
        for (var i = 0u; i < DIMS_PER_THREAD; i++) {
            acc[i] *= correction;
        }
        let count = min(TILE, t_end - t0);
        for (var j = 0u; j < count; j++) {
            let pj = probs[j];
            l_run += pj;
            let base = slots[j];
            for (var i = 0u; i < DIMS_PER_THREAD; i++) {
                let d = lid + WG * i;
                if d < hd {
                    acc[i] += pj * v_at(base + d);
                }
            }
        }
        m_run = m_tile;
        workgroupBarrier();
    }
    if chunks == 1u {
        // The sink joins the softmax: a common maximum, one more term in the sum.
        let s_sink = sink(head);
        let m_all = max(m_run, s_sink);
        let keep = exp(m_run - m_all);
        let l_all = l_run * keep + exp(s_sink - m_all);
        for (var i = 0u; i < DIMS_PER_THREAD; i++) {
            let d = lid + WG * i;
            if d < hd {
                out[q_base + d] = acc[i] * keep / l_all;
            }
        }
        return;
    }
    let base = (row_head * p.splits + split) * (hd + 2u);
    if lid == 0u {
        partial[base] = m_run;
        partial[base + 1u] = l_run;
    }
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
        let d = lid + WG * i;
        if d < hd {
            partial[base + 2u + d] = acc[i];
        }
    }
}

// One workgroup per (row, head) of more than one chunk: the chunks' softmax pieces rescaled to
// their common maximum and added in chunk order.
@compute @workgroup_size(64)
fn attend_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row_head = wid.x + wid.y * nwg.x;
    let row = row_head / p.n_heads;
    if row >= p.rows {
        return;
    }
    let info = row_info[row];
    if info.x == NO_ROW {
        return;
    }
    let chunks = (info.x + 1u - first_seen(info.x) + CHUNK - 1u) / CHUNK;
    if chunks == 1u {
        return;
    }
    let hd = p.head_dim;
    let stride = hd + 2u;
    let first = row_head * p.splits * stride;
    let s_sink = sink(row_head % p.n_heads);
    var m_all = s_sink;
    for (var c = 0u; c < chunks; c++) {
        m_all = max(m_all, partial[first + c * stride]);
    }
    var l_all = exp(s_sink - m_all);
    for (var c = 0u; c < chunks; c++) {
        l_all += partial[first + c * stride + 1u] * exp(partial[first + c * stride] - m_all);
    }
    let q_base = row_head * hd;
    for (var d = lid; d < hd; d += WG) {
        var acc = 0.0;
        for (var c = 0u; c < chunks; c++) {
            acc += partial[first + c * stride + 2u + d] * exp(partial[first + c * stride] - m_all);
        }
        out[q_base + d] = acc / l_all;
    }
}