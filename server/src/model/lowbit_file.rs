//! lowbit's own model file: one safetensors file holding quantized tensors plus everything
//! needed to serve them (config, tokenizer, chat template), written by `lowbit quantize`.
//!
//! Tensors, by canonical (GGUF) name `N`:
//! ```text
//! N            F32 [cols] or [rows, cols]     norm vectors; f32 weight matrices
//!              F16 [rows, cols]               f16 weight matrices
//! N.qweight    U32 [rows, words_per_row]      packed values of Q8 / Q4 / Q4M / Lut4 (QTensor layout)
//! N.scales     F16 [rows, groups]
//! N.mins       F16 [rows, groups]             Q4M only
//! ```
//! `__metadata__` keys: `lowbit.format_version` ([`FORMAT_VERSION`]), `lowbit.formats` (JSON:
//! name → format), `lowbit.config` (JSON [`LlamaConfig`]), `lowbit.tokenizer` (tokenizer.json
//! text), `lowbit.bos`/`lowbit.eos` (JSON ids), `lowbit.fim` (JSON FIM token ids, where the
//! model has them), `lowbit.chat_template`, `lowbit.bos_token`, `lowbit.eos_token`,
//! `lowbit.policy`, `lowbit.source`.

use super::config::LlamaConfig;
use super::error::{ModelError, Result};
use super::hf::SafetensorsFile;
use lowbit_gpu::{QTensor, QuantFormat, RawTensor};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// The newest version this build reads. Version 2 added Gemma's config fields, version 3
/// Phi's (partial rotary, LongRoPE) and Granite's (residual and logit scales), version 4 a
/// mixture of experts, version 5 gpt-oss's block, version 6 the Lut4 weight formats (fp4,
/// iq4nl); a file that needs none of them is still written as the oldest version that
/// describes it, which older builds read.
pub const FORMAT_VERSION: u32 = 6;

/// The version a file of this model with weights in `formats` is written as: the first that
/// describes it, so that an older build (which ignores config fields it does not know)
/// refuses it, naming the version, rather than running the model wrongly.
pub fn format_version_for(
    config: &LlamaConfig,
    mut formats: impl Iterator<Item = QuantFormat>,
) -> u32 {
    if formats.any(|f| matches!(f, QuantFormat::Lut4(_))) {
        6
    } else if config.gpt_oss {
        5
    } else if config.needs_format_4() {
        4
    } else if config.needs_format_3() {
        3
    } else if config.has_gemma_features() {
        2
    } else {
        1
    }
}

/// An opened lowbit model file.
#[derive(Debug)]
pub struct LowbitFile {
    pub file: SafetensorsFile,
    pub formats: BTreeMap<String, QuantFormat>,
    pub config: LlamaConfig,
}

fn meta<'a>(file: &'a SafetensorsFile, key: &str) -> Result<&'a str> {
    file.metadata.get(key).map(String::as_str).ok_or_else(|| {
        ModelError::field(
            file.path.display(),
            key,
            "missing from the safetensors metadata",
        )
    })
}

impl LowbitFile {
    /// Whether a safetensors file was written by `lowbit quantize`.
    pub fn is_lowbit(file: &SafetensorsFile) -> bool {
        file.metadata.contains_key("lowbit.format_version")
    }

    /// Reads the metadata of a file written by `lowbit quantize`.
    pub fn open(file: SafetensorsFile) -> Result<Self> {
        let p = file.path.display().to_string();
        let version: u32 = meta(&file, "lowbit.format_version")?
            .parse()
            .map_err(|_| ModelError::field(&p, "lowbit.format_version", "not a number"))?;
        if version > FORMAT_VERSION {
            return Err(ModelError::field(
                &p,
                "lowbit.format_version",
                format!("{version} was written by a newer lowbit; this build reads up to {FORMAT_VERSION}"),
            ));
        }
        let names: BTreeMap<String, String> = serde_json::from_str(meta(&file, "lowbit.formats")?)
            .map_err(|e| ModelError::field(&p, "lowbit.formats", e.to_string()))?;
        let mut formats = BTreeMap::new();
        for (name, f) in names {
            let f = QuantFormat::parse(&f).map_err(|e| ModelError::tensor(&p, &name, e))?;
            formats.insert(name, f);
        }
        let config: LlamaConfig = serde_json::from_str(meta(&file, "lowbit.config")?)
            .map_err(|e| ModelError::field(&p, "lowbit.config", e.to_string()))?;
        let config = config.validate(&file.path)?;
        Ok(Self {
            file,
            formats,
            config,
        })
    }

    fn path(&self) -> String {
        self.file.path.display().to_string()
    }

    /// The stored format of a weight matrix.
    pub fn format(&self, name: &str) -> Option<QuantFormat> {
        self.formats.get(name).copied()
    }

    /// Shape of a tensor (`rows × cols`; vectors are one row).
    pub fn shape(&self, name: &str) -> Result<(usize, usize)> {
        let key = match self.format(name) {
            Some(f) if f.is_quantized() => format!("{name}.qweight"),
            _ => name.to_string(),
        };
        let e = self
            .file
            .entry(&key)
            .ok_or_else(|| ModelError::tensor(self.path(), name, "missing"))?;
        Ok(match (e.shape.as_slice(), self.format(name)) {
            ([n], _) => (1, *n),
            ([r, w], Some(QuantFormat::Q8)) => (*r, w * 4),
            ([r, w], Some(QuantFormat::Q4(_) | QuantFormat::Q4M(_) | QuantFormat::Lut4(_))) => {
                (*r, w * 8)
            }
            ([r, c], _) => (*r, *c),
            (s, _) => {
                return Err(ModelError::tensor(
                    self.path(),
                    name,
                    format!("shape {s:?} is not 1-D or 2-D"),
                ))
            }
        })
    }

    /// A float tensor (norm vector, f32/f16 matrix).
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        if self.format(name).is_some_and(QuantFormat::is_quantized) {
            return Err(ModelError::tensor(
                self.path(),
                name,
                "is stored quantized; read it as a QTensor",
            ));
        }
        self.file.raw(name)
    }

    /// A weight matrix as stored.
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        let format = self.format(name).ok_or_else(|| {
            ModelError::tensor(self.path(), name, "is not a weight matrix of this file")
        })?;
        let (rows, cols) = self.shape(name)?;
        if !format.is_quantized() {
            let raw = self.file.raw(name)?;
            return QTensor::repack(&raw)
                .map_err(|e| ModelError::tensor(self.path(), name, e.to_string()));
        }
        let bytes_of = |suffix: &str| -> Result<&[u8]> {
            let key = format!("{name}.{suffix}");
            let e = self
                .file
                .entry(&key)
                .ok_or_else(|| ModelError::tensor(self.path(), &key, "missing"))?;
            Ok(self.file.bytes(e))
        };
        let words = bytes_of("qweight")?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let halves = |b: &[u8]| {
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>()
        };
        let scales = halves(bytes_of("scales")?);
        let mins = if matches!(format, QuantFormat::Q4M(_)) {
            halves(bytes_of("mins")?)
        } else {
            Vec::new()
        };
        QTensor::new(format, rows, cols, words, scales, mins)
            .map_err(|e| ModelError::tensor(self.path(), name, e.to_string()))
    }

    /// A metadata string.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.file.metadata.get(key).map(String::as_str)
    }
}

/// One tensor to write: its safetensors dtype, shape and little-endian bytes.
pub type TensorBytes = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The safetensors entries of one weight matrix.
pub fn matrix_entries(name: &str, q: &QTensor) -> Vec<(String, TensorBytes)> {
    let le_words = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let le_halves = |h: &[half::f16]| h.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    match q.format {
        QuantFormat::F32 => vec![(
            name.to_string(),
            (
                safetensors::Dtype::F32,
                vec![q.rows, q.cols],
                le_words(&q.words),
            ),
        )],
        QuantFormat::F16 => {
            let bytes: Vec<u8> = (0..q.rows)
                .flat_map(|r| q.row_bytes(r)[..q.cols * 2].to_vec())
                .collect();
            vec![(
                name.to_string(),
                (safetensors::Dtype::F16, vec![q.rows, q.cols], bytes),
            )]
        }
        _ => {
            let wpr = q.words.len() / q.rows.max(1);
            let groups = q.scales.len() / q.rows.max(1);
            let mut v = vec![
                (
                    format!("{name}.qweight"),
                    (
                        safetensors::Dtype::U32,
                        vec![q.rows, wpr],
                        le_words(&q.words),
                    ),
                ),
                (
                    format!("{name}.scales"),
                    (
                        safetensors::Dtype::F16,
                        vec![q.rows, groups],
                        le_halves(&q.scales),
                    ),
                ),
            ];
            if !q.mins.is_empty() {
                v.push((
                    format!("{name}.mins"),
                    (
                        safetensors::Dtype::F16,
                        vec![q.rows, groups],
                        le_halves(&q.mins),
                    ),
                ));
            }
            v
        }
    }
}

/// Writes tensors and metadata to `path` as one safetensors file, byte-for-byte deterministic:
/// header keys sorted, tensors in the given order (the `safetensors` crate writes metadata in
/// hash-map order, so the same model would give different bytes each run).
pub fn write(
    path: &Path,
    tensors: &[(String, TensorBytes)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let p = path.display().to_string();
    let dtype_name = |d: safetensors::Dtype| match d {
        safetensors::Dtype::F32 => Ok("F32"),
        safetensors::Dtype::F16 => Ok("F16"),
        safetensors::Dtype::U32 => Ok("U32"),
        other => Err(ModelError::file(
            &p,
            format!("lowbit does not write {other:?} tensors"),
        )),
    };
    let mut header = serde_json::Map::new();
    let meta: BTreeMap<String, String> = metadata.into_iter().collect();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(meta).map_err(|e| ModelError::file(&p, e.to_string()))?,
    );
    let mut offset = 0usize;
    for (name, (dtype, shape, bytes)) in tensors {
        let elements: usize = shape.iter().product();
        let width = match dtype {
            safetensors::Dtype::F16 => 2,
            _ => 4,
        };
        if elements * width != bytes.len() {
            return Err(ModelError::tensor(
                &p,
                name,
                format!("{} bytes for shape {shape:?}", bytes.len()),
            ));
        }
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype_name(*dtype)?, "shape": shape, "data_offsets": [offset, offset + bytes.len()] }),
        );
        offset += bytes.len();
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| ModelError::file(&p, e.to_string()))?;
    // The data starts 8-byte aligned: pad the header with spaces, as the format allows.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let write_all = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        f.write_all(&(head.len() as u64).to_le_bytes())?;
        f.write_all(&head)?;
        for (_, (_, _, bytes)) in tensors {
            f.write_all(bytes)?;
        }
        f.flush()
    };
    write_all().map_err(|e| ModelError::file(&p, format!("cannot write: {e}")))
}
