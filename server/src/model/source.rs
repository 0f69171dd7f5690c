//! Opening a model from any supported path, behind one interface.
//!
//! Tensors are addressed by their GGUF names (`token_embd.weight`, `blk.3.attn_q.weight`, …)
//! whatever the file, so the model code and quantization policies speak one language.

use super::chat_template::ChatTemplate;
use super::config::LlamaConfig;
use super::error::{ModelError, Result};
use super::fused::{expert_bias_part, expert_part, FusedPart, GATE_UP};
use super::gguf::{GgufFile, MetaValue};
use super::hf::{HfFolder, SafetensorsFile};
use super::lowbit_file::LowbitFile;
use super::quant_policy::{QuantPolicy, TensorPlan};
use super::tokenizer::{FimTokens, Tokenizer};
use lowbit_gpu::quant::gptq::{gptq_quantize, GptqOptions, Hessian};
use lowbit_gpu::quant::{quantize, quantize_raw, QuantizeOptions};
use lowbit_gpu::{QTensor, QuantFormat, RawTensor, SourceDType};
use std::path::{Path, PathBuf};

/// A model on disk, opened and memory-mapped.
#[derive(Debug)]
pub enum ModelSource {
    Gguf(GgufFile),
    HfFolder(HfFolder),
    /// A file written by `lowbit quantize`.
    Lowbit(Box<LowbitFile>),
}

/// One tensor as listed by `lowbit info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorListing {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
}

impl ModelSource {
    /// Opens a `.gguf` file or a Hugging Face folder.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::HfFolder(HfFolder::open(path)?));
        }
        if !path.exists() {
            return Err(ModelError::file(path.display(), "no such file or folder"));
        }
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        if read.is_ok() && &magic == b"GGUF" || path.extension().is_some_and(|e| e == "gguf") {
            return Ok(Self::Gguf(GgufFile::open(path)?));
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            let file = SafetensorsFile::open(path)?;
            if LowbitFile::is_lowbit(&file) {
                return Ok(Self::Lowbit(Box::new(LowbitFile::open(file)?)));
            }
            return Err(ModelError::file(
                path.display(),
                "a plain safetensors file has no config or tokenizer: pass its Hugging Face folder instead",
            ));
        }
        Err(ModelError::file(
            path.display(),
            "not a model lowbit can read (a .gguf file, a lowbit .safetensors file or a Hugging Face folder)",
        ))
    }

    /// The path it was opened from.
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Gguf(g) => g.path().to_path_buf(),
            Self::HfFolder(h) => h.dir.clone(),
            Self::Lowbit(l) => l.file.path.clone(),
        }
    }

    /// The model's hyper-parameters; a mixture of experts' stacks checked against them.
    pub fn config(&self) -> Result<LlamaConfig> {
        let c = match self {
            Self::Gguf(g) => LlamaConfig::from_gguf(g)?,
            Self::HfFolder(h) => LlamaConfig::from_hf_json(&h.dir.join("config.json"), &h.config)?,
            Self::Lowbit(l) => return Ok(l.config.clone()),
        };
        self.check_expert_stacks(&c)?;
        Ok(c)
    }

    /// A tensor by canonical (GGUF) name; a part of a fused projection is its rows of the
    /// fused tensor ([`FusedPart`]).
    pub fn tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        match self.fused_location(name)? {
            Some((fused, rows)) => self.stored_tensor(&fused)?.row_range(rows).map_err(|e| {
                ModelError::tensor(
                    self.path().display(),
                    &self.file_tensor_name(name),
                    e.to_string(),
                )
            }),
            None => self.stored_tensor(name),
        }
    }

    /// Where canonical `name` lies when the file stores it fused: the fused tensor's
    /// canonical name and which of its rows (`None`: stored as itself, or not at all).
    fn fused_location(&self, name: &str) -> Result<Option<(String, std::ops::Range<usize>)>> {
        if matches!(self, Self::Lowbit(_)) || !name.starts_with("blk.") {
            return Ok(None);
        }
        let gguf = matches!(self, Self::Gguf(_));
        let stored = self.stores(name);
        if let (Self::Gguf(g), Some((layer, proj, expert)), false) =
            (self, expert_part(name), stored)
        {
            return Self::stacked_expert(g, (layer, proj, expert), false).map(Some);
        }
        if let (Self::Gguf(g), Some((layer, proj, expert)), false) =
            (self, expert_bias_part(name), stored)
        {
            return Self::stacked_expert(g, (layer, proj, expert), true).map(Some);
        }
        if let (Self::HfFolder(h), false) = (self, stored) {
            if let Some(found) = Self::hf_stacked_part(h, name)? {
                return Ok(Some(found));
            }
        }
        // A GGUF file keeps gate/up fused under `ffn_up`'s own name: fused only where the
        // layer has no `ffn_gate` (checked before parsing the config, which every other
        // file's `ffn_up` would otherwise cost).
        let unfused_gguf_up = name
            .strip_suffix("ffn_up.weight")
            .is_some_and(|layer| self.stores(&format!("{layer}ffn_gate.weight")));
        if stored && !(gguf && name.ends_with(".ffn_up.weight")) || unfused_gguf_up {
            return Ok(None);
        }
        let Ok(config) = self.config() else {
            return Ok(None);
        };
        match FusedPart::of(name, &config) {
            Some(FusedPart::Qkv { fused, rows }) => {
                Ok((!stored && self.stores(&fused)).then_some((fused, rows)))
            }
            Some(FusedPart::GateUp { layer, gate }) => {
                if self.stores(&format!("blk.{layer}.ffn_gate.weight")) {
                    return Ok(None);
                }
                let fused = if gguf {
                    format!("blk.{layer}.ffn_up.weight")
                } else {
                    format!("blk.{layer}.{GATE_UP}")
                };
                if !self.stores(&fused) {
                    return Ok(None);
                }
                let rows = self.stored_tensor(&fused)?.rows;
                Ok(Some((fused, FusedPart::gate_up_rows(gate, rows))))
            }
            None => Ok(None),
        }
    }

    /// A tensor as the file stores it, by canonical name.
    fn stored_tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        match self {
            Self::Gguf(g) => {
                let info = g
                    .tensor_info(name)
                    .ok_or_else(|| ModelError::tensor(g.path().display(), name, "missing"))?;
                Ok(g.raw_tensor(info)?)
            }
            Self::HfFolder(h) => {
                let hf = h.name_of(name).ok_or_else(|| {
                    ModelError::tensor(h.dir.display(), name, "has no Hugging Face name")
                })?;
                h.raw(&hf)
            }
            Self::Lowbit(l) => l.raw(name),
        }
    }

    /// A norm vector or bias by canonical name, as the forward multiplies by (or adds) it
    /// ([`HfFolder::vector`]: a Gemma checkpoint's norms are offset by one).
    pub fn vector(&self, name: &str) -> Result<Vec<f32>> {
        if let Some((fused, rows)) = self.fused_location(name)? {
            // Read as stored (a fused name may be the part's own: GGUF's `ffn_up`). A fused
            // bias is one row, its part a range of values; a matrix's part is its rows.
            let stored = self.stored_tensor(&fused)?;
            let err = |detail: String| {
                ModelError::tensor(
                    self.path().display(),
                    &self.file_tensor_name(&fused),
                    detail,
                )
            };
            // An expert's bias is a row of its stack, even a stack of one expert.
            if stored.rows > 1 || expert_bias_part(name).is_some() {
                return Ok(stored
                    .row_range(rows)
                    .map_err(|e| err(e.to_string()))?
                    .to_f32());
            }
            let values = stored.to_f32();
            return values
                .get(rows.clone())
                .map(<[f32]>::to_vec)
                .ok_or_else(|| {
                    err(format!(
                        "{} values, the part {name} needs {rows:?}",
                        values.len()
                    ))
                });
        }
        match self {
            Self::HfFolder(h) => h.vector(name),
            _ => Ok(self.stored_tensor(name)?.to_f32()),
        }
    }

    /// A tensor's `rows × cols` (vectors are one row), by canonical name.
    pub fn tensor_shape(&self, name: &str) -> Result<(usize, usize)> {
        match self {
            Self::Lowbit(l) => l.shape(name),
            _ => self.tensor(name).map(|t| (t.rows, t.cols)),
        }
    }

    /// The format `policy` gives a weight matrix, and why (no quantization done): the one
    /// decision behind both `quantized_tensor` and `lowbit info --quant`.
    pub fn plan(&self, name: &str, policy: &QuantPolicy) -> Result<TensorPlan> {
        let (rows, cols) = self.tensor_shape(name)?;
        let (stored, source, dtype) = match self {
            Self::Lowbit(l) => {
                let stored = l.format(name);
                (
                    stored,
                    stored.map_or_else(|| "F32".to_string(), |f| f.to_string()),
                    SourceDType::F32,
                )
            }
            _ => {
                let dtype = self.tensor(name)?.dtype;
                (None, format!("{dtype:?}"), dtype)
            }
        };
        let (format, asked) = match (stored, policy.requested(name)) {
            // A lowbit file's matrices stay as they are unless a rule asks otherwise.
            (Some(f), None) => (f, None),
            _ => policy.resolve(name, dtype, cols),
        };
        Ok(TensorPlan {
            name: name.to_string(),
            rows,
            cols,
            source,
            format: format.to_string(),
            fallback_from: asked.map(|a| a.to_string()),
            conversion: super::quant_policy::conversion(dtype, stored, format),
            bytes: lowbit_gpu::quant::qtensor::storage_bytes(format, rows, cols),
        })
    }

    /// A weight matrix in the format `policy` gives it ([`ModelSource::plan`]): repacked with
    /// its codes kept when that format holds them ([`QTensor::import`]), else decoded and
    /// quantized (one tensor at a
    /// time, so peak memory stays near the quantized model plus one f32 tensor). `hessian`,
    /// calibration statistics of the tensor's input, switches integer formats to GPTQ
    /// (activation-aware quantization).
    pub fn quantized_tensor(
        &self,
        name: &str,
        policy: &QuantPolicy,
        hessian: Option<&Hessian>,
    ) -> Result<(QTensor, TensorPlan)> {
        let plan = self.plan(name, policy)?;
        let wrap = |e: lowbit_gpu::Error| {
            ModelError::tensor(
                self.path().display(),
                &self.file_tensor_name(name),
                e.to_string(),
            )
        };
        let format = QuantFormat::parse(&plan.format)
            .map_err(|e| ModelError::tensor(self.path().display(), name, e))?;
        if let Some(asked) = &plan.fallback_from {
            tracing::warn!(
                "{name}: {asked} does not fit rows of {} values; using {format}",
                plan.cols
            );
        }
        let q = match self {
            Self::Lowbit(l) if l.format(name).is_some() => {
                let stored = l.qtensor(name)?;
                if stored.format == format {
                    stored
                } else {
                    quantize_with(
                        &stored.dequantize(),
                        plan.rows,
                        plan.cols,
                        format,
                        policy,
                        hessian,
                    )
                    .map_err(wrap)?
                }
            }
            _ => {
                let raw = self.tensor(name)?;
                if QTensor::import(raw.dtype).repacks_to(format) {
                    QTensor::repack_into(&raw, format).map_err(wrap)?
                } else if gptq_hessian(hessian, format, raw.cols).is_some() {
                    quantize_with(&raw.to_f32(), raw.rows, raw.cols, format, policy, hessian)
                        .map_err(wrap)?
                } else {
                    // Row by row from the file's encoding: no f32 copy of the tensor.
                    let opts = QuantizeOptions {
                        method: policy.method,
                        importance: None,
                    };
                    quantize_raw(&raw, format, &opts).map_err(wrap)?
                }
            }
        };
        Ok((q, plan))
    }

    /// The name a tensor has in the files themselves (for error messages); a part of a fused
    /// tensor is named with its rows.
    pub fn file_tensor_name(&self, canonical: &str) -> String {
        if let Ok(Some((fused, rows))) = self.fused_location(canonical) {
            return format!("{} (rows {rows:?})", self.stored_name(&fused));
        }
        self.stored_name(canonical)
    }

    pub(super) fn stored_name(&self, canonical: &str) -> String {
        match self {
            Self::Gguf(_) | Self::Lowbit(_) => canonical.to_string(),
            Self::HfFolder(h) => h
                .name_of(canonical)
                .unwrap_or_else(|| canonical.to_string()),
        }
    }

    /// Whether a tensor exists, by canonical name (as itself or a part of a fused one).
    pub fn has_tensor(&self, name: &str) -> bool {
        self.stores(name) || matches!(self.fused_location(name), Ok(Some(_)))
    }

    /// Whether the file stores a tensor under canonical `name`.
    fn stores(&self, name: &str) -> bool {
        match self {
            Self::Gguf(g) => g.tensor_info(name).is_some(),
            Self::HfFolder(h) => h.name_of(name).is_some_and(|n| h.has(&n)),
            Self::Lowbit(l) => l.shape(name).is_ok(),
        }
    }

    /// Every tensor in the file(s), in file order.
    pub fn list_tensors(&self) -> Vec<TensorListing> {
        match self {
            Self::Gguf(g) => g
                .tensors()
                .iter()
                .map(|t| TensorListing {
                    name: t.name.clone(),
                    dtype: format!("{:?}", t.dtype),
                    shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
                    bytes: t.size,
                })
                .collect(),
            Self::HfFolder(h) => h
                .entries()
                .into_iter()
                .map(|(name, e)| TensorListing {
                    name,
                    dtype: format!("{:?}", e.dtype),
                    shape: e.shape.clone(),
                    bytes: e.range.len() as u64,
                })
                .collect(),
            Self::Lowbit(l) => {
                let mut v: Vec<TensorListing> = l
                    .formats
                    .iter()
                    .filter_map(|(name, f)| {
                        let (rows, cols) = l.shape(name).ok()?;
                        let q = l.qtensor(name).ok()?;
                        Some(TensorListing {
                            name: name.clone(),
                            dtype: f.to_string(),
                            shape: vec![rows, cols],
                            bytes: q.resident_bytes() as u64,
                        })
                    })
                    .collect();
                for name in l.file.names() {
                    if !name.contains(".weight.") && !l.formats.contains_key(name) {
                        if let Ok((rows, cols)) = l.shape(name) {
                            v.push(TensorListing {
                                name: name.to_string(),
                                dtype: "F32".into(),
                                shape: if rows == 1 {
                                    vec![cols]
                                } else {
                                    vec![rows, cols]
                                },
                                bytes: (rows * cols * 4) as u64,
                            });
                        }
                    }
                }
                v
            }
        }
    }

    /// Size of the weight files on disk.
    pub fn file_bytes(&self) -> u64 {
        match self {
            Self::Gguf(g) => g.file_size(),
            Self::HfFolder(h) => h.weight_bytes(),
            Self::Lowbit(l) => std::fs::metadata(&l.file.path).map_or(0, |m| m.len()),
        }
    }

    /// The tokenizer that ships with the model.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Self::Gguf(g) => Tokenizer::from_gguf(g),
            Self::HfFolder(h) => {
                let (bos, eos) = hf_special_ids(h);
                Tokenizer::from_file(&h.dir.join("tokenizer.json"), bos, eos)
            }
            Self::Lowbit(l) => {
                let p = l.file.path.display().to_string();
                let json = l
                    .meta("lowbit.tokenizer")
                    .ok_or_else(|| ModelError::field(&p, "lowbit.tokenizer", "missing"))?;
                let inner: tokenizers::Tokenizer = json
                    .parse()
                    .map_err(|e| ModelError::field(&p, "lowbit.tokenizer", format!("{e}")))?;
                let bos = l
                    .meta("lowbit.bos")
                    .and_then(|s| serde_json::from_str::<Option<u32>>(s).ok())
                    .flatten();
                let eos = l
                    .meta("lowbit.eos")
                    .and_then(|s| serde_json::from_str::<Vec<u32>>(s).ok())
                    .unwrap_or_default();
                let fim = l
                    .meta("lowbit.fim")
                    .and_then(|s| serde_json::from_str::<FimTokens>(s).ok());
                Ok(Tokenizer::new(inner, bos, eos)?.with_fim(fim))
            }
        }
    }

    /// The model's chat template, or a clear error if it has none.
    pub fn chat_template(&self, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let (source, bos, eos) = self.chat_template_parts(tokenizer)?;
        ChatTemplate::new(&source, &bos, &eos)
    }

    /// `source` (a template given by the user) compiled with the BOS/EOS strings this model's
    /// own template would see.
    pub fn chat_template_from(&self, tokenizer: &Tokenizer, source: &str) -> Result<ChatTemplate> {
        let (_, bos, eos) = self.template_and_tokens(tokenizer);
        ChatTemplate::new(source, &bos, &eos)
    }

    /// The chat template's source and the BOS/EOS strings it sees.
    pub fn chat_template_parts(&self, tokenizer: &Tokenizer) -> Result<(String, String, String)> {
        let (source, bos, eos) = self.template_and_tokens(tokenizer);
        let source = source.ok_or_else(|| {
            ModelError::ChatTemplate(format!(
                "{} has no chat template (GGUF 'tokenizer.chat_template' or tokenizer_config.json 'chat_template'); use a plain prompt or --chat-template",
                self.path().display()
            ))
        })?;
        Ok((source, bos, eos))
    }

    /// The file's chat template, if any, and its BOS/EOS strings.
    fn template_and_tokens(&self, tokenizer: &Tokenizer) -> (Option<String>, String, String) {
        let token_text =
            |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let (source, bos, eos) = match self {
            Self::Gguf(g) => (
                g.get("tokenizer.chat_template")
                    .and_then(MetaValue::as_str)
                    .map(str::to_string),
                token_text(tokenizer.bos()),
                token_text(tokenizer.eos().first().copied()),
            ),
            Self::HfFolder(h) => {
                let tc = h.tokenizer_config.as_ref();
                let source = tc
                    .and_then(|c| c.get("chat_template"))
                    .and_then(|t| match t {
                        serde_json::Value::String(s) => Some(s.clone()),
                        // A list of named templates: take "default".
                        serde_json::Value::Array(list) => list
                            .iter()
                            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                            .and_then(|e| e.get("template")?.as_str().map(str::to_string)),
                        _ => None,
                    });
                let token_field = |k: &str| {
                    tc.and_then(|c| c.get(k)).and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => other.get("content")?.as_str().map(str::to_string),
                    })
                };
                (
                    source,
                    token_field("bos_token").unwrap_or_else(|| token_text(tokenizer.bos())),
                    token_field("eos_token")
                        .unwrap_or_else(|| token_text(tokenizer.eos().first().copied())),
                )
            }
            Self::Lowbit(l) => (
                l.meta("lowbit.chat_template").map(str::to_string),
                l.meta("lowbit.bos_token").unwrap_or_default().to_string(),
                l.meta("lowbit.eos_token").unwrap_or_default().to_string(),
            ),
        };
        (source, bos, eos)
    }
}

/// The calibration statistics GPTQ uses for a tensor: given, of its input width, and an
/// integer format to quantize to.
fn gptq_hessian(hessian: Option<&Hessian>, format: QuantFormat, cols: usize) -> Option<&Hessian> {
    hessian.filter(|h| format.is_quantized() && h.dim == cols)
}

/// Quantizes f32 values: with GPTQ when calibration statistics are given and the format is an
/// integer one, else with the policy's method.
fn quantize_with(
    values: &[f32],
    rows: usize,
    cols: usize,
    format: lowbit_gpu::QuantFormat,
    policy: &QuantPolicy,
    hessian: Option<&Hessian>,
) -> lowbit_gpu::Result<QTensor> {
    match gptq_hessian(hessian, format, cols) {
        Some(h) => gptq_quantize(
            values,
            rows,
            cols,
            format,
            h,
            &GptqOptions {
                method: policy.method,
                ..GptqOptions::default()
            },
        ),
        _ => quantize(
            values,
            rows,
            cols,
            format,
            &QuantizeOptions {
                method: policy.method,
                importance: None,
            },
        ),
    }
}

/// BOS and EOS ids of a Hugging Face folder, from `config.json` (`eos_token_id` may be a list).
fn hf_special_ids(h: &HfFolder) -> (Option<u32>, Vec<u32>) {
    let c = &h.config;
    let bos = c
        .get("bos_token_id")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32);
    let eos = match c.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        Some(v) => v.as_u64().map(|v| v as u32).into_iter().collect(),
        None => Vec::new(),
    };
    (bos, eos)
}
