//! GGUF, llama.cpp's model file format: a header of typed metadata and tensor infos, then
//! aligned tensor data.
//!
//! [`reader`] parses v2 and v3 files memory-mapped and bounds-checks every count, length and
//! offset; [`writer`] produces files (tests write tiny random models with it).

pub mod reader;
pub mod writer;

pub use reader::{GgufError, GgufFile, GgufTensorInfo, MetaValue};
pub use writer::GgufWriter;

/// GGUF's magic, `"GGUF"` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Metadata value type codes (`gguf_type` in llama.cpp).
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

use lowbit_gpu::SourceDType;

/// The tensor types lowbit reads, for error messages.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, \
     MXFP4";

/// ggml's tensor type code for a dtype lowbit reads.
pub fn ggml_type_code(dtype: SourceDType) -> u32 {
    match dtype {
        SourceDType::F32 => 0,
        SourceDType::F16 => 1,
        SourceDType::Q4_0 => 2,
        SourceDType::Q4_1 => 3,
        SourceDType::Q5_0 => 6,
        SourceDType::Q5_1 => 7,
        SourceDType::Q8_0 => 8,
        SourceDType::Q2_K => 10,
        SourceDType::Q3_K => 11,
        SourceDType::Q4_K => 12,
        SourceDType::Q5_K => 13,
        SourceDType::Q6_K => 14,
        SourceDType::IQ4_NL => 20,
        SourceDType::IQ4_XS => 23,
        SourceDType::BF16 => 30,
        SourceDType::MXFP4 => 39,
    }
}

/// The dtype for a ggml tensor type code, or the code's name for the error message.
pub fn dtype_from_ggml(code: u32) -> Result<SourceDType, String> {
    Ok(match code {
        0 => SourceDType::F32,
        1 => SourceDType::F16,
        2 => SourceDType::Q4_0,
        3 => SourceDType::Q4_1,
        6 => SourceDType::Q5_0,
        7 => SourceDType::Q5_1,
        8 => SourceDType::Q8_0,
        10 => SourceDType::Q2_K,
        11 => SourceDType::Q3_K,
        12 => SourceDType::Q4_K,
        13 => SourceDType::Q5_K,
        14 => SourceDType::Q6_K,
        20 => SourceDType::IQ4_NL,
        23 => SourceDType::IQ4_XS,
        30 => SourceDType::BF16,
        39 => SourceDType::MXFP4,
        other => {
            let name = match other {
                9 => "Q8_1",
                15 => "Q8_K",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                21 => "IQ3_S",
                22 => "IQ2_S",
                29 => "IQ1_M",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                34 => "TQ1_0",
                35 => "TQ2_0",
                _ => "unknown",
            };
            return Err(format!("{name} (type code {other})"));
        }
    })
}
