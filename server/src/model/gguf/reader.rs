//! Bounds-checked GGUF v2/v3 parsing over a memory map.
//!
//! Nothing here trusts the file: every count is checked against the bytes that remain before
//! anything is allocated, every tensor's data range against the file size, and every error
//! names the file, the field or tensor, and the byte offset where parsing stopped.

use super::{dtype_from_ggml, value_type as vt, DEFAULT_ALIGNMENT, GGUF_MAGIC, SUPPORTED_TYPES};
use lowbit_gpu::{RawTensor, SourceDType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted; real files use 1.
const MAX_ARRAY_DEPTH: u32 = 8;
/// Fewest bytes one tensor info can take: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Fewest bytes one metadata pair can take: key length, value type, a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// A malformed or unsupported GGUF file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what} (at byte {offset})")]
pub struct GgufError {
    pub path: String,
    pub offset: u64,
    pub what: String,
}

/// A metadata value; arrays may nest.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if it is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for `lowbit info` (arrays summarised).
    pub fn summary(&self) -> String {
        match self {
            Self::String(s) if s.len() > 60 => format!(
                "{:?}… ({} bytes)",
                s.chars().take(60).collect::<String>(),
                s.len()
            ),
            Self::String(s) => format!("{s:?}"),
            Self::Array(a) => format!("[{} values]", a.len()),
            Self::Bool(b) => b.to_string(),
            Self::F32(v) => v.to_string(),
            Self::F64(v) => v.to_string(),
            other => other
                .as_u64()
                .map_or_else(|| format!("{other:?}"), |v| v.to_string()),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub dtype: SourceDType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl GgufTensorInfo {
    /// Contiguous values per row (`dims[0]`).
    pub fn cols(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Rows: the product of the outer dimensions (1 for a vector).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }

    /// Total values.
    pub fn values(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file; tensor data stays in the memory map until asked for.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

#[derive(Debug)]
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let err = |what: String| GgufError {
            path: path.display().to_string(),
            offset: 0,
            what,
        };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped is
        // outside what any mmap-based loader (llama.cpp included) can defend against.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
        Self::parse(path, Bytes::Mapped(map))
    }

    /// Parses a file already in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(path, Bytes::Owned(bytes))
    }

    fn parse(path: &Path, bytes: Bytes) -> Result<Self, GgufError> {
        let header = Parser::new(path, bytes.as_slice()).header()?;
        let index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            version: header.version,
            metadata: header.metadata,
            index,
            tensors: header.tensors,
            tensor_index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes as a `rows × cols` matrix (ranges were checked at parse time).
    pub fn raw_tensor(&self, info: &GgufTensorInfo) -> Result<RawTensor<'_>, GgufError> {
        let start = info.offset as usize;
        let data = &self.bytes.as_slice()[start..start + info.size as usize];
        RawTensor::new(info.dtype, info.rows(), info.cols(), data).map_err(|e| GgufError {
            path: self.path.display().to_string(),
            offset: info.offset,
            what: format!("tensor '{}': {e}", info.name),
        })
    }

    /// The whole file size.
    pub fn file_size(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensorInfo>,
}

/// A cursor that refuses to read past the end.
struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    /// What is being read, for error messages (a key, a tensor name).
    context: String,
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Self {
            path,
            bytes,
            pos: 0,
            context: "header".into(),
        }
    }

    fn fail<T>(&self, what: impl std::fmt::Display) -> Result<T, GgufError> {
        Err(GgufError {
            path: self.path.display().to_string(),
            offset: self.pos as u64,
            what: format!("{}: {what}", self.context),
        })
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if (n as u64) > self.remaining() {
            return self.fail(format!(
                "file ends while reading {what} ({n} bytes needed, {} left)",
                self.remaining()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items that each take at least `min_item_bytes`, checked against the file.
    fn count(&mut self, what: &str, min_item_bytes: u64) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            self.pos -= 8;
            return self.fail(format!(
                "{what} is {n}, more than the {} remaining bytes can hold",
                self.remaining() + 8
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.count(&format!("length of {what}"), 1)?;
        let start = self.pos;
        let raw = self.take(len as usize, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => {
                self.pos = start;
                self.fail(format!("{what} is not UTF-8: {e}"))
            }
        }
    }

    fn header(mut self) -> Result<Header, GgufError> {
        let magic = self.u32("magic")?;
        if magic != GGUF_MAGIC {
            self.pos = 0;
            return self.fail(format!(
                "bad magic {:02x?}, expected \"GGUF\"",
                magic.to_le_bytes()
            ));
        }
        let version = self.u32("version")?;
        if !(2..=3).contains(&version) {
            self.pos -= 4;
            return self.fail(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            ));
        }
        let n_tensors = self.u64("tensor count")?;
        let n_kv = self.u64("metadata count")?;
        if n_tensors.saturating_mul(MIN_TENSOR_INFO_BYTES) > self.remaining() {
            self.pos -= 16;
            return self.fail(format!(
                "tensor count {n_tensors} is more than the file can hold"
            ));
        }
        if n_kv.saturating_mul(MIN_KV_BYTES) > self.remaining() {
            self.pos -= 8;
            return self.fail(format!(
                "metadata count {n_kv} is more than the file can hold"
            ));
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            self.context = format!("metadata #{i}");
            let key = self.string("key")?;
            self.context = format!("metadata '{key}'");
            let ty = self.u32("value type")?;
            let value = self.value(ty, 0)?;
            metadata.push((key, value));
        }

        let mut alignment = DEFAULT_ALIGNMENT;
        if let Some((_, v)) = metadata.iter().find(|(k, _)| k == "general.alignment") {
            self.context = "metadata 'general.alignment'".into();
            match v {
                MetaValue::U32(a) if *a > 0 && a.is_power_of_two() => alignment = u64::from(*a),
                other => return self.fail(format!("must be a power-of-two u32, got {other:?}")),
            }
        }

        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            self.context = format!("tensor info #{i}");
            let name = self.string("name")?;
            self.context = format!("tensor '{name}'");
            let n_dims = self.u32("dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                self.pos -= 4;
                return self.fail(format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let at = self.pos;
                let v = self.u64("dimension")?;
                if v == 0 || v > i64::MAX as u64 {
                    self.pos = at;
                    return self.fail(format!("dimension {d} is {v}"));
                }
                dims.push(v);
            }
            let ty_at = self.pos;
            let code = self.u32("type")?;
            let dtype = match dtype_from_ggml(code) {
                Ok(t) => t,
                Err(name) => {
                    self.pos = ty_at;
                    return self.fail(format!(
                        "tensor type {name} is not supported ({SUPPORTED_TYPES} are)"
                    ));
                }
            };
            let offset_at = self.pos;
            let offset = self.u64("data offset")?;
            let values = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let size = values.and_then(|n| usize::try_from(n).ok()).and_then(|n| {
                if !(dims[0] as usize).is_multiple_of(dtype.block_values()) {
                    None
                } else {
                    dtype.bytes_for(n)
                }
            });
            let Some(size) = size else {
                self.pos = offset_at;
                return self.fail(format!(
                    "shape {dims:?} does not fit {dtype:?} blocks of {} or overflows",
                    dtype.block_values()
                ));
            };
            if offset % alignment != 0 {
                self.pos = offset_at;
                return self.fail(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                ));
            }
            infos.push((name, dims, dtype, offset, size as u64, offset_at));
        }

        self.context = "data section".into();
        let data_start = (self.pos as u64).div_ceil(alignment) * alignment;
        let file_len = self.bytes.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, dtype, offset, size, offset_at) in infos {
            let end = data_start
                .checked_add(offset)
                .and_then(|s| s.checked_add(size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    self.pos = offset_at;
                    self.context = format!("tensor '{name}'");
                    return self.fail(format!(
                        "data at {}+{offset}, {size} bytes, runs past the end of the file ({file_len} bytes)",
                        data_start
                    ));
                }
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                dtype,
                offset: data_start + offset,
                size,
            });
        }
        Ok(Header {
            version,
            metadata,
            tensors,
        })
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            vt::U8 => MetaValue::U8(self.array::<1>("u8")?[0]),
            vt::I8 => MetaValue::I8(self.array::<1>("i8")?[0] as i8),
            vt::U16 => MetaValue::U16(u16::from_le_bytes(self.array("u16")?)),
            vt::I16 => MetaValue::I16(i16::from_le_bytes(self.array("i16")?)),
            vt::U32 => MetaValue::U32(self.u32("u32")?),
            vt::I32 => MetaValue::I32(i32::from_le_bytes(self.array("i32")?)),
            vt::F32 => MetaValue::F32(f32::from_le_bytes(self.array("f32")?)),
            vt::U64 => MetaValue::U64(self.u64("u64")?),
            vt::I64 => MetaValue::I64(i64::from_le_bytes(self.array("i64")?)),
            vt::F64 => MetaValue::F64(f64::from_le_bytes(self.array("f64")?)),
            vt::BOOL => {
                let b = self.array::<1>("bool")?[0];
                if b > 1 {
                    self.pos -= 1;
                    return self.fail(format!("bool byte is {b}"));
                }
                MetaValue::Bool(b == 1)
            }
            vt::STRING => MetaValue::String(self.string("string value")?),
            vt::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return self.fail(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem_ty = self.u32("array element type")?;
                let min_bytes = match elem_ty {
                    vt::U8 | vt::I8 | vt::BOOL => 1,
                    vt::U16 | vt::I16 => 2,
                    vt::U32 | vt::I32 | vt::F32 => 4,
                    vt::U64 | vt::I64 | vt::F64 | vt::STRING => 8,
                    vt::ARRAY => 12,
                    other => {
                        self.pos -= 4;
                        return self.fail(format!("unknown array element type {other}"));
                    }
                };
                let n = self.count("array length", min_bytes)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            other => {
                self.pos -= 4;
                return self.fail(format!("unknown value type {other}"));
            }
        })
    }
}
