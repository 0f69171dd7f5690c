//! Hugging Face model folders: `config.json`, `tokenizer.json`, `tokenizer_config.json`, and
//! `model.safetensors` or shards listed in `model.safetensors.index.json`, memory-mapped.

use super::error::{ModelError, Result};
use lowbit_gpu::{RawTensor, SourceDType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One memory-mapped safetensors file and the byte range of each of its tensors.
#[derive(Debug)]
pub struct SafetensorsFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
    tensors: HashMap<String, SafeTensorEntry>,
    /// The free-form `__metadata__` of the header.
    pub metadata: HashMap<String, String>,
}

/// Where one tensor lives in a safetensors file.
#[derive(Debug, Clone)]
pub struct SafeTensorEntry {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: std::ops::Range<usize>,
}

impl SafetensorsFile {
    /// Maps `path` and reads its header (validated by the `safetensors` crate).
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| ModelError::file(&p, format!("cannot open: {e}")))?;
        // SAFETY: read-only map; see GgufFile::open.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| ModelError::file(&p, format!("cannot map: {e}")))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| ModelError::file(&p, format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (a, b) = info.data_offsets;
                let entry = SafeTensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: data_start + a..data_start + b,
                };
                (name, entry)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            metadata: meta.metadata().clone().unwrap_or_default(),
            map,
            tensors,
        })
    }

    /// Tensor names in this file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// One tensor's entry.
    pub fn entry(&self, name: &str) -> Option<&SafeTensorEntry> {
        self.tensors.get(name)
    }

    /// A tensor's bytes.
    pub fn bytes(&self, entry: &SafeTensorEntry) -> &[u8] {
        &self.map[entry.range.clone()]
    }

    /// A float tensor as a matrix (1-D tensors are one row).
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let p = self.path.display();
        let e = self
            .entry(name)
            .ok_or_else(|| ModelError::tensor(&p, name, "missing"))?;
        let dtype = match e.dtype {
            safetensors::Dtype::F32 => SourceDType::F32,
            safetensors::Dtype::F16 => SourceDType::F16,
            safetensors::Dtype::BF16 => SourceDType::BF16,
            other => {
                return Err(ModelError::tensor(
                    &p,
                    name,
                    format!("dtype {other:?} is not supported (F32, F16, BF16 are)"),
                ))
            }
        };
        let (rows, cols) = match e.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            // Stacked experts (Granite MoE): each expert a run of rows.
            [e, r, c] => (*e * *r, *c),
            s => {
                return Err(ModelError::tensor(
                    &p,
                    name,
                    format!("shape {s:?}: only 1-D to 3-D tensors are used"),
                ))
            }
        };
        RawTensor::new(dtype, rows, cols, self.bytes(e))
            .map_err(|err| ModelError::tensor(&p, name, err.to_string()))
    }
}

/// A Hugging Face model folder.
#[derive(Debug)]
pub struct HfFolder {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    /// How the checkpoint names its norms (Gemma 2/3's differ from Llama's).
    pub naming: HfNaming,
    pub tokenizer_config: Option<serde_json::Value>,
    files: Vec<SafetensorsFile>,
    /// HF tensor name → index into `files`.
    owner: HashMap<String, usize>,
}

/// Reads and parses a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let p = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::file(&p, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(&p, format!("invalid JSON: {e}")))
}

impl HfFolder {
    /// Opens the folder: config, optional tokenizer config, every weight shard.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = read_json(&dir.join("config.json"))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tokenizer_config = if tc_path.exists() {
            Some(read_json(&tc_path)?)
        } else {
            None
        };

        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.exists() {
            vec!["model.safetensors".to_string()]
        } else if index_path.exists() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::field(
                        index_path.display(),
                        "weight_map",
                        "missing or not an object",
                    )
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names
        } else {
            return Err(ModelError::file(
                dir.display(),
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        let mut files = Vec::new();
        let mut owner = HashMap::new();
        for name in shard_names {
            let f = SafetensorsFile::open(&dir.join(&name))?;
            for t in f.names() {
                owner.insert(t.to_string(), files.len());
            }
            files.push(f);
        }
        if index_path.exists() && !single.exists() {
            let index = read_json(&index_path)?;
            if let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) {
                for (tensor, file) in map {
                    let listed = file.as_str().unwrap_or("?");
                    let found = owner
                        .get(tensor)
                        .and_then(|&i| files[i].path.file_name())
                        .and_then(|n| n.to_str());
                    if found != Some(listed) {
                        return Err(ModelError::tensor(
                            dir.join(listed).display(),
                            tensor,
                            "listed here by model.safetensors.index.json but not in this file",
                        ));
                    }
                }
            }
        }
        let naming = HfNaming::of(&config);
        Ok(Self {
            dir: dir.to_path_buf(),
            naming,
            config,
            tokenizer_config,
            files,
            owner,
        })
    }

    /// A tensor by its Hugging Face name.
    pub fn raw(&self, hf_name: &str) -> Result<RawTensor<'_>> {
        match self.owner.get(hf_name) {
            Some(&i) => self.files[i].raw(hf_name),
            None => Err(ModelError::tensor(
                self.dir.display(),
                hf_name,
                "missing from every safetensors file",
            )),
        }
    }

    /// The Hugging Face name of a tensor of this checkpoint, by canonical name.
    pub fn name_of(&self, canonical: &str) -> Option<String> {
        hf_name_in(canonical, self.naming)
    }

    /// A norm vector (or bias) by canonical name, as the forward multiplies by it: Gemma's
    /// checkpoints store RMSNorm weights as `w` where the model multiplies by `1 + w` (what
    /// llama.cpp's converter writes into a GGUF file, and lowbit keeps).
    pub fn vector(&self, canonical: &str) -> Result<Vec<f32>> {
        let name = self.name_of(canonical).ok_or_else(|| {
            ModelError::tensor(self.dir.display(), canonical, "has no Hugging Face name")
        })?;
        let mut v = self.raw(&name)?.to_f32();
        if self.naming.norms_offset_by_one() && canonical.ends_with("norm.weight") {
            v.iter_mut().for_each(|w| *w += 1.0);
        }
        Ok(v)
    }

    /// A tensor's shape, if it exists.
    pub fn shape(&self, hf_name: &str) -> Option<Vec<usize>> {
        let &i = self.owner.get(hf_name)?;
        self.files[i].entry(hf_name).map(|e| e.shape.clone())
    }

    /// Whether a tensor exists.
    pub fn has(&self, hf_name: &str) -> bool {
        self.owner.contains_key(hf_name)
    }

    /// All tensor names with their dtype and shape.
    pub fn entries(&self) -> Vec<(String, SafeTensorEntry)> {
        let mut v: Vec<_> = self
            .owner
            .iter()
            .filter_map(|(n, &i)| self.files[i].entry(n).map(|e| (n.clone(), e.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Total bytes of the weight files.
    pub fn weight_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.map.len() as u64).sum()
    }
}

/// How a checkpoint names and stores its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfNaming {
    /// Llama's names (Mistral, Qwen).
    Llama,
    /// Gemma: Llama's names, RMSNorm weights stored as `w` for `1 + w`.
    Gemma,
    /// Gemma 2/3: as Gemma, and four norms per layer: `post_attention_layernorm` is the
    /// attention output's norm (Llama's name for the MLP's input norm), the MLP's are
    /// `pre_feedforward_layernorm` and `post_feedforward_layernorm`.
    GemmaPostNorms,
    /// Mixtral: Llama's names, the experts under `block_sparse_moe` (`gate`, and `w1`, `w3`,
    /// `w2` for each expert's gate, up and down).
    Mixtral,
    /// OLMo 2/3: Gemma 2's names of the norms after attention and the MLP
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`), stored as multiplied.
    Olmo2,
    /// Granite MoE: Llama's names, the experts stacked under `block_sparse_moe`
    /// (`router.layer`, `input_linear` of each expert's gate then up, `output_linear`), the
    /// shared expert's `shared_mlp` likewise.
    GraniteMoe,
}

impl HfNaming {
    /// The naming of a checkpoint with this `config.json`.
    pub fn of(config: &serde_json::Value) -> Self {
        match config.get("model_type").and_then(|v| v.as_str()) {
            Some("gemma") => Self::Gemma,
            Some("gemma2" | "gemma3" | "gemma3_text") => Self::GemmaPostNorms,
            Some("mixtral") => Self::Mixtral,
            Some("granitemoe" | "granitemoeshared") => Self::GraniteMoe,
            Some("olmo2" | "olmo3") => Self::Olmo2,
            _ => Self::Llama,
        }
    }

    /// Gemma 2's names of the norms after each sub-block.
    fn post_norm_names(self) -> bool {
        matches!(self, Self::GemmaPostNorms | Self::Olmo2)
    }

    fn norms_offset_by_one(self) -> bool {
        matches!(self, Self::Gemma | Self::GemmaPostNorms)
    }
}

/// The Hugging Face name of a tensor given its canonical name, in a checkpoint's naming.
pub fn hf_name_in(canonical: &str, naming: HfNaming) -> Option<String> {
    let fixed = match canonical {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = canonical.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if let Some(hf) = hf_expert_name(part, naming) {
        return Some(format!("model.layers.{layer}.{hf}"));
    }
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        // Phi-3's fused projections (split on load: `fused.rs`).
        "attn_qkv.weight" => "self_attn.qkv_proj.weight",
        "attn_qkv.bias" => "self_attn.qkv_proj.bias",
        "ffn_gate_up.weight" => "mlp.gate_up_proj.weight",
        "ffn_norm.weight" if naming.post_norm_names() => "pre_feedforward_layernorm.weight",
        "post_attention_norm.weight" if naming.post_norm_names() => {
            "post_attention_layernorm.weight"
        }
        "post_ffw_norm.weight" if naming.post_norm_names() => "post_feedforward_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// A mixture of experts' tensor names within a layer (`ffn_gate_inp.weight`,
/// `ffn_up.3.weight`, `ffn_down_shexp.weight`, …): Mixtral's `block_sparse_moe`, Qwen-MoE's
/// `mlp`.
fn hf_expert_name(part: &str, naming: HfNaming) -> Option<String> {
    if naming == HfNaming::GraniteMoe {
        return Some(
            match part {
                "ffn_gate_inp.weight" => "block_sparse_moe.router.layer.weight",
                "ffn_gate_up_exps.weight" => "block_sparse_moe.input_linear.weight",
                "ffn_down_exps.weight" => "block_sparse_moe.output_linear.weight",
                "ffn_gate_up_shexp.weight" => "shared_mlp.input_linear.weight",
                "ffn_down_shexp.weight" => "shared_mlp.output_linear.weight",
                _ => return None,
            }
            .to_string(),
        );
    }
    let mixtral = naming == HfNaming::Mixtral;
    if part == "ffn_gate_inp.weight" {
        let moe = if mixtral { "block_sparse_moe" } else { "mlp" };
        return Some(format!("{moe}.gate.weight"));
    }
    let shared = match part {
        "ffn_gate_inp_shexp.weight" => Some("shared_expert_gate"),
        "ffn_gate_shexp.weight" => Some("shared_expert.gate_proj"),
        "ffn_up_shexp.weight" => Some("shared_expert.up_proj"),
        "ffn_down_shexp.weight" => Some("shared_expert.down_proj"),
        _ => None,
    };
    if let Some(s) = shared {
        return Some(format!("mlp.{s}.weight"));
    }
    let (proj, expert) = part.strip_suffix(".weight")?.split_once('.')?;
    let expert: usize = expert.parse().ok()?;
    let hf = match (proj, mixtral) {
        ("ffn_gate", true) => "w1",
        ("ffn_up", true) => "w3",
        ("ffn_down", true) => "w2",
        ("ffn_gate", false) => "gate_proj",
        ("ffn_up", false) => "up_proj",
        ("ffn_down", false) => "down_proj",
        _ => return None,
    };
    let moe = if mixtral { "block_sparse_moe" } else { "mlp" };
    Some(format!("{moe}.experts.{expert}.{hf}.weight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gemma 2/3 name a layer's four norms unlike Llama (whose `post_attention_layernorm` is
    /// the MLP's input norm); Gemma 1 and the others keep Llama's names.
    #[test]
    fn gemma_post_norm_checkpoints_name_their_norms_their_own_way() {
        let name = |c: &str, n| hf_name_in(c, n).unwrap();
        let llama = [
            (
                "blk.2.attn_norm.weight",
                "model.layers.2.input_layernorm.weight",
            ),
            (
                "blk.2.ffn_norm.weight",
                "model.layers.2.post_attention_layernorm.weight",
            ),
        ];
        for naming in [HfNaming::Llama, HfNaming::Gemma] {
            for (canonical, hf) in llama {
                assert_eq!(name(canonical, naming), hf);
            }
            assert_eq!(hf_name_in("blk.2.post_ffw_norm.weight", naming), None);
        }
        let post = HfNaming::GemmaPostNorms;
        for (canonical, hf) in [
            (
                "blk.2.attn_norm.weight",
                "model.layers.2.input_layernorm.weight",
            ),
            (
                "blk.2.post_attention_norm.weight",
                "model.layers.2.post_attention_layernorm.weight",
            ),
            (
                "blk.2.ffn_norm.weight",
                "model.layers.2.pre_feedforward_layernorm.weight",
            ),
            (
                "blk.2.post_ffw_norm.weight",
                "model.layers.2.post_feedforward_layernorm.weight",
            ),
            (
                "blk.2.attn_q_norm.weight",
                "model.layers.2.self_attn.q_norm.weight",
            ),
        ] {
            assert_eq!(name(canonical, post), hf);
        }
        let config = |t: &str| serde_json::json!({ "model_type": t });
        assert_eq!(HfNaming::of(&config("gemma")), HfNaming::Gemma);
        assert_eq!(
            HfNaming::of(&config("gemma3_text")),
            HfNaming::GemmaPostNorms
        );
        assert_eq!(HfNaming::of(&config("qwen3")), HfNaming::Llama);
    }
}
