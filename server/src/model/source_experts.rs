//! Where a model source keeps a mixture of experts' matrices: GGUF files stack each
//! projection's experts (`blk.N.ffn_gate_exps`, ggml dims `[cols, rows, experts]`), Granite's
//! Hugging Face checkpoints stack gate and up together (`input_linear`, `[experts, 2·ffn,
//! hidden]`); each expert is a run of rows of its stack, read in place.

use super::config::LlamaConfig;
use super::error::{ModelError, Result};
use super::fused::{expert_part, FusedPart};
use super::gguf::GgufFile;
use super::hf::HfFolder;
use super::source::ModelSource;

impl ModelSource {
    /// Where a GGUF file keeps expert `expert` of `blk.{layer}.{proj}_exps.weight` (ggml dims
    /// `[cols, rows, experts]`): its run of rows; with `bias`, of `…_exps.bias` (gpt-oss;
    /// `[len, experts]`): its row. An error names the stack where the file has none.
    pub(super) fn stacked_expert(
        g: &GgufFile,
        (layer, proj, expert): (usize, &str, usize),
        bias: bool,
    ) -> Result<(String, std::ops::Range<usize>)> {
        let kind = if bias { "bias" } else { "weight" };
        let stack = format!("blk.{layer}.{proj}_exps.{kind}");
        let Some(info) = g.tensor_info(&stack) else {
            // Neither stacked nor stored apart (llama.cpp's older Mixtral files).
            return Err(ModelError::tensor(
                g.path().display(),
                &stack,
                format!("missing (nor is blk.{layer}.{proj}.{expert}.{kind} stored apart)"),
            ));
        };
        let (rows, experts) = match (bias, &info.dims[..]) {
            (false, &[_, rows, experts]) => (rows as usize, experts as usize),
            (true, &[_, experts]) => (1, experts as usize),
            _ => {
                let want = if bias {
                    "[len, experts]"
                } else {
                    "[cols, rows, experts]"
                };
                return Err(ModelError::tensor(
                    g.path().display(),
                    &stack,
                    format!("dims {:?}, expected {want}", info.dims),
                ));
            }
        };
        if expert >= experts {
            return Err(ModelError::tensor(
                g.path().display(),
                &stack,
                format!("holds {experts} experts, the model has more (expert {expert})"),
            ));
        }
        Ok((stack, expert * rows..(expert + 1) * rows))
    }

    /// Checks that every stack of experts the file has holds the config's number of experts
    /// (a stack of more would otherwise be read in part, silently).
    pub fn check_expert_stacks(&self, c: &LlamaConfig) -> Result<()> {
        let Some(moe) = &c.moe else {
            return Ok(());
        };
        for layer in 0..c.n_layers {
            let stacks = ["ffn_gate", "ffn_up", "ffn_down", "ffn_gate_up"]
                .iter()
                .flat_map(|p| {
                    [
                        format!("blk.{layer}.{p}_exps.weight"),
                        format!("blk.{layer}.{p}_exps.bias"),
                    ]
                });
            for stack in stacks {
                // A stack's last dimension counts its experts.
                let held = match self {
                    Self::Gguf(g) => g
                        .tensor_info(&stack)
                        .map(|t| t.dims.last().copied().unwrap_or(1) as usize),
                    Self::HfFolder(h) => h
                        .name_of(&stack)
                        .and_then(|n| h.shape(&n))
                        .map(|s| s.first().copied().unwrap_or(0)),
                    Self::Lowbit(_) => None,
                };
                if let Some(held) = held.filter(|&n| n != moe.experts) {
                    return Err(ModelError::tensor(
                        self.path().display(),
                        &self.stored_name(&stack),
                        format!("holds {held} experts, the config {}", moe.experts),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where a Hugging Face folder that stacks experts (Granite MoE) keeps `name`: expert `E`'s
    /// gate and up are halves of its run of `blk.N.ffn_gate_up_exps` (`[experts, 2·ffn,
    /// hidden]`, gate first), its down its run of `blk.N.ffn_down_exps`; the shared expert's
    /// gate and up are the halves of `blk.N.ffn_gate_up_shexp`.
    pub(super) fn hf_stacked_part(
        h: &HfFolder,
        name: &str,
    ) -> Result<Option<(String, std::ops::Range<usize>)>> {
        let shape_of = |stack: &str| h.name_of(stack).and_then(|n| h.shape(&n));
        if let Some((layer, proj, expert)) = expert_part(name) {
            let stack = if proj == "ffn_down" {
                format!("blk.{layer}.ffn_down_exps.weight")
            } else {
                format!("blk.{layer}.ffn_gate_up_exps.weight")
            };
            let Some(shape) = shape_of(&stack) else {
                return Ok(None);
            };
            let [experts, rows, _] = shape[..] else {
                return Err(ModelError::tensor(
                    h.dir.display(),
                    &h.name_of(&stack).unwrap_or(stack),
                    format!("shape {shape:?}, expected [experts, rows, cols]"),
                ));
            };
            if expert >= experts {
                return Err(ModelError::tensor(
                    h.dir.display(),
                    &h.name_of(&stack).unwrap_or(stack),
                    format!("holds {experts} experts, the model has more (expert {expert})"),
                ));
            }
            let run = expert * rows..(expert + 1) * rows;
            let part = match proj {
                "ffn_down" => run,
                gate_or_up => {
                    let half = FusedPart::gate_up_rows(gate_or_up == "ffn_gate", rows);
                    run.start + half.start..run.start + half.end
                }
            };
            return Ok(Some((stack, part)));
        }
        let Some(rest) = name.strip_prefix("blk.") else {
            return Ok(None);
        };
        let (layer, part) = rest.split_once('.').unwrap_or((rest, ""));
        let gate = match part {
            "ffn_gate_shexp.weight" => true,
            "ffn_up_shexp.weight" => false,
            _ => return Ok(None),
        };
        let stack = format!("blk.{layer}.ffn_gate_up_shexp.weight");
        Ok(shape_of(&stack).map(|shape| {
            let rows = shape.first().copied().unwrap_or(0);
            (stack, FusedPart::gate_up_rows(gate, rows))
        }))
    }
}
