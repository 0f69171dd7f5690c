// Weight formats, decoded in registers (the layout is drawn in gpu/src/quant/qtensor.rs).
//
// Every format is read in units of 8 values: `unit(row, u, dims)` returns two vec4s and the
// columns they start at. For Q4/Q4M/Lut4 a unit is one packed word (values 4j..4j+4 of a block
// in the low nibbles, 4j+16..4j+20 in the high ones); for the others, 8 consecutive values.
// Lut4's nibbles (FP4, IQ4NL) index a table of 16 i8 levels (gpu/src/quant/format.rs's
// `Codebook`): code q is byte q % 4 of LEVELS[q / 4].
// Scales and mins are f16 pairs in u32 words, decoded with unpack2x16float (no shader-f16).

@group(0) @binding(0) var<storage, read> w_words: array<u32>;
@group(0) @binding(1) var<storage, read> w_scales: array<u32>;
@group(0) @binding(2) var<storage, read> w_mins: array<u32>;

// One weight part's geometry (part of every kernel's parameters that reads weights).
struct WeightDims {
    // Packed words per row.
    words_per_row: u32,
    // Scales (groups) per row.
    groups_per_row: u32,
    // log2(group size / 32): a 32-value block's group is `block >> group_shift`.
    group_shift: u32,
    // The buffer row a dispatch's row 0 is: a weight stored in a stack with others (a layer's
    // Q/K/V, gate/up) starts past the rows of the weights before it.
    first_row: u32,
}

// Index of the first word of (dispatch) row `row`.
fn row_word(row: u32, dims: WeightDims) -> u32 {
    return (dims.first_row + row) * dims.words_per_row;
}

// Index of the scale (and min) of row `row` for 32-value block `block`.
fn group_index(row: u32, block: u32, dims: WeightDims) -> u32 {
    return (dims.first_row + row) * dims.groups_per_row + (block >> dims.group_shift);
}

struct Unit {
    lo: vec4<f32>,
    hi: vec4<f32>,
    k_lo: u32,
    k_hi: u32,
}

fn f16_at(words_index: u32, which: u32) -> f32 {
    let pair = unpack2x16float(words_index);
    return select(pair.x, pair.y, which == 1u);
}

fn scale_at(i: u32) -> f32 {
    return f16_at(w_scales[i >> 1u], i & 1u);
}

fn min_at(i: u32) -> f32 {
    return f16_at(w_mins[i >> 1u], i & 1u);
}

//#if FP4
const LEVELS = vec4<u32>(0x03020100u, 0x0c080604u, 0xfdfeff00u, 0xf4f8fafcu);
//#endif
//#if IQ4NL
const LEVELS = vec4<u32>(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);
//#endif
//#if LUT4
// Code q's level as an i8 bit pattern.
fn level_byte(q: u32) -> u32 {
    let words = LEVELS;
    return (words[q >> 2u] >> ((q & 3u) * 8u)) & 255u;
}

// Four codes (one per byte, each < 16) as their levels' four i8 bytes.
fn level_bytes(codes: u32) -> u32 {
    return level_byte(codes & 15u) | (level_byte((codes >> 8u) & 15u) << 8u)
        | (level_byte((codes >> 16u) & 15u) << 16u) | (level_byte(codes >> 24u) << 24u);
}

// The levels of the four nibbles at `shift` (0: low, 4: high) of a packed word.
fn levels(word: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(level_bytes((word >> shift) & 0x0f0f0f0fu)));
}
//#endif

fn nibbles(word: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>(
        f32((word >> shift) & 15u),
        f32((word >> (shift + 8u)) & 15u),
        f32((word >> (shift + 16u)) & 15u),
        f32((word >> (shift + 24u)) & 15u),
    );
}

fn unit(row: u32, u: u32, dims: WeightDims) -> Unit {
    var r: Unit;
//#if Q4
    let word = w_words[row_word(row, dims) + u];
    let block = u >> 2u;
    let d = scale_at(group_index(row, block, dims));
    r.lo = (nibbles(word, 0u) - 8.0) * d;
    r.hi = (nibbles(word, 4u) - 8.0) * d;
    r.k_lo = block * 32u + (u & 3u) * 4u;
    r.k_hi = r.k_lo + 16u;
//#endif
//#if Q4M
    let word = w_words[row_word(row, dims) + u];
    let block = u >> 2u;
    let g = group_index(row, block, dims);
    let d = scale_at(g);
    let m = min_at(g);
    r.lo = nibbles(word, 0u) * d + m;
    r.hi = nibbles(word, 4u) * d + m;
    r.k_lo = block * 32u + (u & 3u) * 4u;
    r.k_hi = r.k_lo + 16u;
//#endif
//#if LUT4
    let word = w_words[row_word(row, dims) + u];
    let block = u >> 2u;
    let d = scale_at(group_index(row, block, dims));
    r.lo = levels(word, 0u) * d;
    r.hi = levels(word, 4u) * d;
    r.k_lo = block * 32u + (u & 3u) * 4u;
    r.k_hi = r.k_lo + 16u;
//#endif
//#if Q8
    let base = row_word(row, dims) + u * 2u;
    let d = scale_at(group_index(row, u >> 2u, dims));
    r.lo = vec4<f32>(unpack4xI8(w_words[base])) * d;
    r.hi = vec4<f32>(unpack4xI8(w_words[base + 1u])) * d;
    r.k_lo = u * 8u;
    r.k_hi = r.k_lo + 4u;
//#endif
//#if F16
    let base = row_word(row, dims) + u * 4u;
    r.lo = vec4<f32>(unpack2x16float(w_words[base]), unpack2x16float(w_words[base + 1u]));
    r.hi = vec4<f32>(unpack2x16float(w_words[base + 2u]), unpack2x16float(w_words[base + 3u]));
    r.k_lo = u * 8u;
    r.k_hi = r.k_lo + 4u;
//#endif
//#if F32
    let base = row_word(row, dims) + u * 8u;
    r.lo = vec4<f32>(
        bitcast<f32>(w_words[base]),
        bitcast<f32>(w_words[base + 1u]),
        bitcast<f32>(w_words[base + 2u]),
        bitcast<f32>(w_words[base + 3u]),
    );
    r.hi = vec4<f32>(
        bitcast<f32>(w_words[base + 4u]),
        bitcast<f32>(w_words[base + 5u]),
        bitcast<f32>(w_words[base + 6u]),
        bitcast<f32>(w_words[base + 7u]),
    );
    r.k_lo = u * 8u;
    r.k_hi = r.k_lo + 4u;
//#endif
    return r;
}
