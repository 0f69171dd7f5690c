//! lowbit's WGSL kernels, one kernel family per file under `wgsl/`.
//!
//! A pipeline's source is composed from the family's file, the weight-format decoders
//! (`formats.wgsl`, for kernels that read weights), the product outputs (`products.wgsl`, for
//! the product kernels), the workgroup sum (`reduce.wgsl`, for the row reductions) and a
//! feature set. Variants are chosen with
//! line directives (`//#if NAME`, `//#else`, `//#endif`) rather than by `override` constants,
//! because code using subgroup builtins must not even be present on a device without the
//! `SUBGROUP` feature.

use std::collections::HashSet;

/// A family of kernels, one WGSL file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Decode matrix-vector products for 1–8 activation rows (entry `main`).
    Matvec,
    /// Tiled matrix multiply for prefill and large batches (entry `main`).
    Matmul,
    /// Quantized embedding gather (entry `main`).
    Embed,
    /// RMSNorm (entry `main`).
    Norm,
    /// RoPE from a host-made cos/sin table (entry `main`).
    Rope,
    /// `add`, `silu_mul`, `gather_rows`, `scatter_add`.
    Elementwise,
    /// `kv_write`, `attend` and `attend_merge` over the paged KV pool, built per pool element
    /// type (`WeightKind::F32` or `F16`).
    Attention,
    /// Dynamic quantization of activations to int8 per 32-block: `main`, and `rms_norm` and
    /// `silu_mul`, which quantize their result in the same pass.
    Quantize,
    /// Integer products with int8 activations: `matvec` (decode) and `matmul` (tiled), for
    /// the integer weight kinds only.
    Int8,
    /// The output head's reductions: `argmax` and `top_k` per logits row, `sample` (a token
    /// drawn from a row's whole distribution) and `adjust` (penalties and logit bias first).
    Head,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 10] = [
        Family::Matvec,
        Family::Matmul,
        Family::Embed,
        Family::Norm,
        Family::Rope,
        Family::Elementwise,
        Family::Attention,
        Family::Quantize,
        Family::Int8,
        Family::Head,
    ];

    /// Whether the family decodes weights (and so needs a [`WeightKind`]).
    pub fn reads_weights(self) -> bool {
        matches!(
            self,
            Family::Matvec | Family::Matmul | Family::Embed | Family::Int8
        )
    }

    /// Whether the family computes products (`x · Wᵀ`) and so writes through
    /// `products.wgsl`'s outputs.
    pub fn writes_products(self) -> bool {
        matches!(self, Family::Matvec | Family::Matmul | Family::Int8)
    }

    /// Whether the family sums rows over a workgroup (`reduce.wgsl`).
    pub fn reduces_rows(self) -> bool {
        matches!(self, Family::Norm | Family::Quantize)
    }

    /// The weight kinds the family is built for (attention: the KV pool's element type).
    pub fn weight_kinds(self) -> &'static [WeightKind] {
        match self {
            Family::Int8 => &WeightKind::INTEGER,
            Family::Attention => &[WeightKind::F32, WeightKind::F16],
            _ if self.reads_weights() => &WeightKind::ALL,
            _ => &[],
        }
    }

    /// The family's entry points.
    pub fn entries(self) -> &'static [&'static str] {
        match self {
            Family::Elementwise => &[
                "add",
                "add_bias",
                "silu_mul",
                "gelu_mul",
                "swiglu_oai",
                "scale",
                "softcap",
                "gather_rows",
                "scatter_add",
            ],
            Family::Attention => &["kv_write", "attend", "attend_merge"],
            Family::Int8 => &["matvec", "matmul"],
            Family::Head => &["argmax", "top_k", "sample", "adjust"],
            Family::Quantize => &["main", "rms_norm", "silu_mul", "gelu_mul"],
            _ => &["main"],
        }
    }

    fn file(self) -> &'static str {
        match self {
            Family::Matvec => include_str!("../wgsl/matvec.wgsl"),
            Family::Matmul => include_str!("../wgsl/matmul.wgsl"),
            Family::Embed => include_str!("../wgsl/embed.wgsl"),
            Family::Norm => include_str!("../wgsl/norm.wgsl"),
            Family::Rope => include_str!("../wgsl/rope.wgsl"),
            Family::Elementwise => include_str!("../wgsl/elementwise.wgsl"),
            Family::Attention => include_str!("../wgsl/attention.wgsl"),
            Family::Quantize => include_str!("../wgsl/quantize.wgsl"),
            Family::Int8 => include_str!("../wgsl/int8.wgsl"),
            Family::Head => include_str!("../wgsl/head.wgsl"),
        }
    }
}

/// How a weight's values are stored (the group size is a runtime parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightKind {
    F32,
    F16,
    Q8,
    Q4,
    Q4M,
    /// 4-bit codes into FP4 E2M1's levels (doubled), one scale per 32.
    Fp4,
    /// 4-bit codes into IQ4_NL's levels, one scale per 32.
    Iq4nl,
}

impl WeightKind {
    /// Every kind.
    pub const ALL: [WeightKind; 7] = [
        WeightKind::F32,
        WeightKind::F16,
        WeightKind::Q8,
        WeightKind::Q4,
        WeightKind::Q4M,
        WeightKind::Fp4,
        WeightKind::Iq4nl,
    ];

    /// The integer kinds (those the int8-activation kernels multiply).
    pub const INTEGER: [WeightKind; 5] = [
        WeightKind::Q8,
        WeightKind::Q4,
        WeightKind::Q4M,
        WeightKind::Fp4,
        WeightKind::Iq4nl,
    ];

    /// Whether it is one of [`WeightKind::INTEGER`].
    pub fn is_integer(self) -> bool {
        Self::INTEGER.contains(&self)
    }

    fn define(self) -> &'static str {
        match self {
            WeightKind::F32 => "F32",
            WeightKind::F16 => "F16",
            WeightKind::Q8 => "Q8",
            WeightKind::Q4 => "Q4",
            WeightKind::Q4M => "Q4M",
            WeightKind::Fp4 => "FP4",
            WeightKind::Iq4nl => "IQ4NL",
        }
    }
}

/// Optional device features a kernel variant may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features {
    /// Subgroup reductions (`subgroupAdd`); without it, workgroup-memory trees.
    pub subgroups: bool,
}

impl Features {
    /// The portable set: nothing optional.
    pub const PORTABLE: Features = Features { subgroups: false };
    /// Everything lowbit can use.
    pub const ALL: Features = Features { subgroups: true };
}

/// The WGSL source of one family for one weight kind (the attention family: its pool's
/// element type; ignored by families without kinds) and feature set.
pub fn source(family: Family, weight: Option<WeightKind>, features: Features) -> String {
    let mut defines = HashSet::new();
    if features.subgroups {
        defines.insert("SUBGROUP");
    }
    let mut text = String::new();
    let kinds = family.weight_kinds();
    if let Some(&first) = kinds.first() {
        let kind = weight.unwrap_or(first);
        defines.insert(kind.define());
        if matches!(
            kind,
            WeightKind::Q4 | WeightKind::Q4M | WeightKind::Fp4 | WeightKind::Iq4nl
        ) {
            // The nibble formats' 8-value units are not contiguous (formats.wgsl).
            defines.insert("NIBBLES");
        }
        if matches!(kind, WeightKind::Fp4 | WeightKind::Iq4nl) {
            // Their nibbles index a table of levels (formats.wgsl).
            defines.insert("LUT4");
        }
    }
    if family.reads_weights() {
        text.push_str(include_str!("../wgsl/formats.wgsl"));
        text.push('\n');
    }
    if family.writes_products() {
        text.push_str(include_str!("../wgsl/products.wgsl"));
        text.push('\n');
    }
    if family.reduces_rows() {
        text.push_str(include_str!("../wgsl/reduce.wgsl"));
        text.push('\n');
    }
    text.push_str(family.file());
    preprocess(&text, &defines)
}

/// Keeps the lines whose `//#if` conditions hold. Directives nest; `//#else` flips the
/// innermost one. Dropped lines become empty so that compiler line numbers still match.
fn preprocess(text: &str, defines: &HashSet<&str>) -> String {
    let mut stack: Vec<bool> = Vec::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        let active = stack.iter().all(|&b| b);
        if let Some(name) = t.strip_prefix("//#if ") {
            stack.push(defines.contains(name.trim()));
        } else if t.starts_with("//#else") {
            if let Some(top) = stack.last_mut() {
                *top = !*top;
            }
        } else if t.starts_with("//#endif") {
            stack.pop();
        } else if active {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(family: Family, weight: Option<WeightKind>, features: Features) {
        let src = source(family, weight, features);
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
            panic!(
                "{family:?}/{weight:?}/{features:?} does not parse:\n{}",
                e.emit_to_string(&src)
            )
        });
        // unpack2x16float needs the SHADER_F16_IN_F32 downlevel flag, which every Vulkan,
        // Metal and DX12 adapter has (the backend checks it when it opens a device).
        let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if features.subgroups {
            caps |= naga::valid::Capabilities::SUBGROUP;
        }
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        if features.subgroups {
            validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
            validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
        }
        validator.validate(&module).unwrap_or_else(|e| {
            panic!(
                "{family:?}/{weight:?}/{features:?} does not validate:\n{}",
                e.emit_to_string(&src)
            )
        });
        for entry in family.entries() {
            assert!(
                module.entry_points.iter().any(|ep| ep.name == *entry),
                "{family:?} has no entry point {entry}"
            );
        }
    }

    #[test]
    fn every_shader_parses_and_validates_on_both_feature_paths() {
        for features in [Features::PORTABLE, Features::ALL] {
            for family in Family::ALL {
                if family.weight_kinds().is_empty() {
                    validate(family, None, features);
                } else {
                    for &kind in family.weight_kinds() {
                        validate(family, Some(kind), features);
                    }
                }
            }
        }
    }

    #[test]
    fn the_portable_path_has_no_subgroup_code() {
        for family in Family::ALL {
            let src = source(family, Some(WeightKind::Q4), Features::PORTABLE);
            assert!(!src.contains("subgroup"), "{family:?}");
        }
        let src = source(Family::Norm, None, Features::ALL);
        assert!(src.contains("subgroupAdd"));
    }

    #[test]
    fn directives_nest_and_flip() {
        let defs: HashSet<&str> = ["A"].into_iter().collect();
        let text = "x\n//#if A\na\n//#if B\nab\n//#else\nanb\n//#endif\n//#else\nna\n//#endif\ny\n";
        let kept: Vec<String> = preprocess(text, &defs)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        assert_eq!(kept, ["x", "a", "anb", "y"]);
    }
}
