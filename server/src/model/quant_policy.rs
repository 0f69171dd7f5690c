//! Mixed precision: which format each weight tensor gets.
//!
//! A policy is a comma-separated list. One item without `=` sets the default (a format name or
//! a preset); `PATTERN=FORMAT` items override it for tensors whose (GGUF-style) name matches
//! the glob `PATTERN` (`*` matches anything; `.weight` may be left out). Later rules win.
//!
//! ```text
//! q8                         every matrix Q8
//! q4g32                      projections Q4 g32; token embedding and output head Q8
//! q4g64,output=q8,blk.0.*=q8 as q4g64, plus the rules
//! q4                         preset: every matrix Q4M g32, token embedding and head too
//! q4m                        preset: projections Q4M g32; token embedding and head Q8
//! iq4nl | fp4                projections 4-bit codes into IQ4_NL's / FP4's levels; embedding
//!                            and head Q8
//! f32 | f16                  full-precision copies (every matrix)
//! ```
//! With a 4-bit default the token embedding and the output head stay Q8: they are the most
//! sensitive tensors (llama.cpp's Q4_0 files do the same). A tensor whose row length does not
//! split into the format's groups falls back to the nearest format that fits.

use lowbit_gpu::quant::{QuantMethod, FORMAT_NAMES};
use lowbit_gpu::{GroupSize, QuantFormat, SourceDType};

/// The presets and what they mean.
pub const PRESETS: &str =
    "q8 (all Q8), q4 (every matrix Q4M g32, embedding and head included), q4m (projections Q4M g32, embedding and head Q8)";

/// How formats are chosen for a model's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPolicy {
    /// `None`: keep each tensor as stored (GGUF blocks repacked losslessly).
    default: Option<QuantFormat>,
    rules: Vec<(String, QuantFormat)>,
    /// How scales are chosen when a tensor is (re)quantized.
    pub method: QuantMethod,
    /// The text the policy was parsed from (for reports).
    pub spec: String,
}

/// The format one tensor gets, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorPlan {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub source: String,
    pub format: String,
    /// The format asked for, when it did not fit and a fallback was taken.
    pub fallback_from: Option<String>,
    /// How the stored values become `format`: `exact` (repacked or copied), `rescaled` (the
    /// file's codes with its two-level scales rounded to f16), `requantized` (from another
    /// integer format), `quantized` (from floats), `converted` (float to float), `synthetic`.
    pub conversion: &'static str,
    pub bytes: usize,
}

/// What [`TensorPlan::conversion`] says for a tensor stored as `dtype` (or in lowbit's
/// `stored` format) and loaded as `format`.
pub fn conversion(
    dtype: SourceDType,
    stored: Option<QuantFormat>,
    format: QuantFormat,
) -> &'static str {
    let import = lowbit_gpu::QTensor::import(dtype);
    match stored {
        Some(f) if f == format => "exact",
        Some(f) if f.is_quantized() => "requantized",
        None if import.repacks_to(format) => import.kind(),
        None if dtype.block_values() > 1 => "requantized",
        _ if format.is_quantized() => "quantized",
        _ => "converted",
    }
}

/// How a model's matrices were made, counted by [`TensorPlan::conversion`] in a fixed order:
/// `"196 exact, 16 rescaled, 14 requantized"` (for the startup log).
pub fn conversion_summary(plans: &[TensorPlan]) -> String {
    const ORDER: [&str; 6] = [
        "exact",
        "rescaled",
        "requantized",
        "quantized",
        "converted",
        "synthetic",
    ];
    ORDER
        .iter()
        .filter_map(|kind| {
            let n = plans.iter().filter(|p| p.conversion == *kind).count();
            (n > 0).then(|| format!("{n} {kind}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Default for QuantPolicy {
    fn default() -> Self {
        Self::as_stored()
    }
}

fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| rec(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && rec(rest, &n[1..]),
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
        || rec(format!("{pattern}.weight").as_bytes(), name.as_bytes())
}

impl QuantPolicy {
    /// Every tensor as stored in the file.
    pub fn as_stored() -> Self {
        Self {
            default: None,
            rules: Vec::new(),
            method: QuantMethod::Rtn,
            spec: "as stored".into(),
        }
    }

    /// Parses a policy; `method` picks the quantizer (default: round to nearest).
    pub fn parse(spec: &str, method: Option<QuantMethod>) -> Result<Self, String> {
        let mut default = None;
        let mut rules = Vec::new();
        let mut sensitive_q8 = false;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some((pattern, fmt)) = item.split_once('=') {
                let pattern = pattern.trim();
                if pattern.is_empty() {
                    return Err(format!("rule '{item}' has no tensor pattern (write PATTERN=FORMAT, e.g. output=q8)"));
                }
                let f = QuantFormat::parse(fmt).map_err(|e| format!("in rule '{item}': {e}"))?;
                rules.push((pattern.to_string(), f));
                continue;
            }
            if default.is_some() {
                return Err(format!(
                    "'{item}': a policy has one default format; use PATTERN=FORMAT for the others"
                ));
            }
            let preset = item.to_ascii_lowercase();
            let f = match preset.as_str() {
                // Size first: every matrix 4-bit, the embedding and head too (BENCHMARKS.md).
                "q4" | "q4m" => QuantFormat::Q4M(GroupSize::G32),
                _ => QuantFormat::parse(item).map_err(|_| {
                    format!("unknown format or preset '{item}' (formats: {FORMAT_NAMES}; presets: {PRESETS}; rules: PATTERN=FORMAT)")
                })?,
            };
            sensitive_q8 = matches!(
                f,
                QuantFormat::Q4(_) | QuantFormat::Q4M(_) | QuantFormat::Lut4(_)
            ) && preset != "q4";
            default = Some(f);
        }
        if default.is_none() && rules.is_empty() {
            return Err(format!(
                "empty policy (formats: {FORMAT_NAMES}; presets: {PRESETS})"
            ));
        }
        if sensitive_q8 {
            // Explicit rules come after, so they still win.
            rules.insert(0, ("token_embd".into(), QuantFormat::Q8));
            rules.insert(1, ("output".into(), QuantFormat::Q8));
        }
        Ok(Self {
            default,
            rules,
            // Round to nearest unless asked: without activation statistics the error search
            // measured worse on SmolLM2 in several formats (BENCHMARKS.md).
            method: method.unwrap_or(QuantMethod::Rtn),
            spec: spec.to_string(),
        })
    }

    /// Whether this policy keeps everything as stored.
    pub fn is_as_stored(&self) -> bool {
        self.default.is_none() && self.rules.is_empty()
    }

    /// The format asked for a tensor (before any fallback), or `None` to keep it as stored.
    /// A mixture of experts' routers (`ffn_gate_inp`, `ffn_gate_inp_shexp`) take only rules
    /// that name them, as llama.cpp's quantizer never touches them: a rounded score can pick
    /// another expert, and they are a sliver of the weights.
    pub fn requested(&self, name: &str) -> Option<QuantFormat> {
        let rule = self
            .rules
            .iter()
            .rev()
            .find(|(p, _)| glob_match(p, name))
            .map(|(_, f)| *f);
        if name.contains(".ffn_gate_inp") {
            return rule;
        }
        rule.or(self.default)
    }

    /// The format a tensor gets: asked-for (or lossless) format, with the fallback if it does
    /// not fit. Returns (format, the asked format when a fallback was taken).
    pub fn resolve(
        &self,
        name: &str,
        source: SourceDType,
        cols: usize,
    ) -> (QuantFormat, Option<QuantFormat>) {
        let asked = self
            .requested(name)
            .unwrap_or_else(|| lowbit_gpu::QTensor::import(source).format());
        let got = asked.fallback_for(cols);
        (got, (got != asked).then_some(asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_gpu::quant::Codebook;

    #[test]
    fn plain_four_bit_keeps_embedding_and_head_at_q8_and_rules_override() {
        let p = QuantPolicy::parse("q4g64,output=q4g32,blk.0.*=q8", None).unwrap();
        assert_eq!(
            p.requested("blk.3.ffn_up.weight"),
            Some(QuantFormat::Q4(GroupSize::G64))
        );
        assert_eq!(p.requested("blk.0.attn_q.weight"), Some(QuantFormat::Q8));
        assert_eq!(p.requested("token_embd.weight"), Some(QuantFormat::Q8));
        assert_eq!(
            p.requested("output.weight"),
            Some(QuantFormat::Q4(GroupSize::G32))
        );
        assert_eq!(p.method, QuantMethod::Rtn);
        let q8 = QuantPolicy::parse("q8", None).unwrap();
        assert_eq!(q8.requested("token_embd.weight"), Some(QuantFormat::Q8));
        let preset = QuantPolicy::parse("q4", None).unwrap();
        assert_eq!(preset.method, QuantMethod::Rtn);
        let q4mg32 = Some(QuantFormat::Q4M(GroupSize::G32));
        assert_eq!(preset.requested("blk.1.attn_v.weight"), q4mg32);
        assert_eq!(preset.requested("token_embd.weight"), q4mg32);
        let q4m = QuantPolicy::parse("q4m", None).unwrap();
        assert_eq!(q4m.requested("blk.1.attn_v.weight"), q4mg32);
        assert_eq!(q4m.requested("token_embd.weight"), Some(QuantFormat::Q8));
        // The Lut4 formats are 4-bit too: embedding and head stay Q8.
        for (name, book) in [("iq4nl", Codebook::Iq4nl), ("fp4", Codebook::Fp4)] {
            let p = QuantPolicy::parse(name, None).unwrap();
            let lut4 = Some(QuantFormat::Lut4(book));
            assert_eq!(p.requested("blk.1.ffn_down.weight"), lut4, "{name}");
            assert_eq!(p.requested("output.weight"), Some(QuantFormat::Q8));
            assert_eq!(p.requested("token_embd.weight"), Some(QuantFormat::Q8));
        }
    }

    #[test]
    fn fallbacks_are_reported() {
        let p = QuantPolicy::parse("q4g128", None).unwrap();
        let (got, asked) = p.resolve("blk.0.attn_q.weight", SourceDType::F32, 576);
        assert_eq!(got, QuantFormat::Q4(GroupSize::G64));
        assert_eq!(asked, Some(QuantFormat::Q4(GroupSize::G128)));
        let stored = QuantPolicy::as_stored();
        assert_eq!(
            stored.resolve("x", SourceDType::Q4_1, 576),
            (QuantFormat::Q4M(GroupSize::G32), None)
        );
    }

    #[test]
    fn each_plan_says_how_its_values_are_made() {
        let q4mg32 = QuantFormat::Q4M(GroupSize::G32);
        let q4g32 = QuantFormat::Q4(GroupSize::G32);
        let iq4nl = QuantFormat::Lut4(Codebook::Iq4nl);
        for (dtype, stored, format, want) in [
            (SourceDType::Q4_1, None, q4mg32, "exact"),
            (SourceDType::Q5_0, None, QuantFormat::Q8, "exact"),
            (SourceDType::BF16, None, QuantFormat::F32, "exact"),
            (SourceDType::Q4_K, None, q4mg32, "rescaled"),
            (SourceDType::IQ4_XS, None, iq4nl, "rescaled"),
            (SourceDType::IQ4_NL, None, iq4nl, "exact"),
            (
                SourceDType::MXFP4,
                None,
                QuantFormat::Lut4(Codebook::Fp4),
                "exact",
            ),
            (SourceDType::MXFP4, None, QuantFormat::Q8, "exact"),
            (SourceDType::IQ4_XS, None, QuantFormat::Q8, "rescaled"),
            (SourceDType::MXFP4, None, q4g32, "requantized"),
            (SourceDType::Q4_K, None, QuantFormat::Q8, "requantized"),
            (SourceDType::Q6_K, None, QuantFormat::Q8, "requantized"),
            (SourceDType::F32, None, q4g32, "quantized"),
            (SourceDType::F32, None, QuantFormat::F16, "converted"),
            (SourceDType::F32, Some(q4g32), q4g32, "exact"),
            (
                SourceDType::F32,
                Some(q4g32),
                QuantFormat::Q8,
                "requantized",
            ),
        ] {
            assert_eq!(
                conversion(dtype, stored, format),
                want,
                "{dtype:?} {format}"
            );
        }
        let plan = |conversion| TensorPlan {
            name: "x".into(),
            rows: 1,
            cols: 32,
            source: "Q4_K".into(),
            format: "q4mg32".into(),
            fallback_from: None,
            conversion,
            bytes: 20,
        };
        let plans = [plan("requantized"), plan("exact"), plan("exact")];
        assert_eq!(conversion_summary(&plans), "2 exact, 1 requantized");
        let stored = QuantPolicy::as_stored();
        assert_eq!(stored.resolve("x", SourceDType::Q3_K, 256).0, q4mg32);
        assert_eq!(
            stored.resolve("x", SourceDType::Q6_K, 256).0,
            QuantFormat::Q8
        );
    }

    #[test]
    fn malformed_policies_list_the_valid_choices() {
        for bad in ["q3", "q4,q8", "=q8", "output=q5", ""] {
            let e = QuantPolicy::parse(bad, None).unwrap_err();
            assert!(
                e.contains("q4g64") || e.contains("PATTERN=FORMAT"),
                "{bad}: {e}"
            );
        }
    }
}
