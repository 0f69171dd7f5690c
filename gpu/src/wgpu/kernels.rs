//! The kernel table: for every kernel, in one place, its WGSL family and entry point, its
//! bind-group layout, its uniform parameters and its pipeline key. Pipelines are built on
//! first use and cached for the life of the device.

use super::device::Gpu;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use lowbit_shaders::{Family, WeightKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A kernel and the specialization it was built for (its pipeline key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Decode product for `m` (1..=8) activation rows, `rows` weight rows per workgroup.
    Matvec {
        kind: WeightKind,
        m: u32,
        rows: u32,
    },
    Matmul {
        kind: WeightKind,
    },
    Embed {
        kind: WeightKind,
    },
    RmsNorm,
    Rope,
    Add,
    /// `x + bias`, the bias broadcast over rows.
    AddBias,
    SiluMul,
    /// GeGLU's gelu(gate)·up (Gemma).
    GeluMul,
    /// gpt-oss's clamped SwiGLU (`value`: the clamp).
    SwigluOai,
    /// `x · value`.
    Scale,
    /// `value · tanh(x / value)`.
    Softcap,
    GatherRows,
    /// Rows scaled and added onto other rows, in place (a mixture of experts' sum).
    ScatterAdd,
    /// Stores new keys and values into a pool of `pool` elements (F32 or F16).
    KvWrite {
        pool: WeightKind,
    },
    Attend {
        pool: WeightKind,
    },
    /// Combines the per-chunk pieces of rows longer than one attention chunk.
    AttendMerge,
    /// Activations to int8 per 32-block.
    Quantize,
    /// RMSNorm, its result also quantized to int8 in the same pass.
    RmsNormQuantize,
    /// SwiGLU's silu(gate)·up, its result also quantized to int8 in the same pass.
    SiluMulQuantize,
    /// GeGLU's gelu(gate)·up, its result also quantized to int8 in the same pass.
    GeluMulQuantize,
    /// Integer decode product with int8 activations, `m` (1..=8) rows, `rows` weight rows
    /// per workgroup.
    Int8Matvec {
        kind: WeightKind,
        m: u32,
        rows: u32,
    },
    /// Integer tiled product with int8 activations.
    Int8Matmul {
        kind: WeightKind,
    },
    /// Index of each logits row's largest value.
    Argmax,
    /// Each logits row's k largest finite values and their indices.
    TopK,
    /// A token drawn from each listed logits row's distribution (gpu/src/draw.rs).
    Sample,
    /// Penalties and logit bias on a copy of the logits (gpu/src/draw.rs `LogitAdjust`).
    Adjust,
    /// Each listed row's log-sum-exp and its chosen token's logit (gpu/src/logprobs.rs).
    LogSum,
}

/// Largest activation row count the decode kernel is specialized for.
pub const MATVEC_MAX_ROWS: usize = 8;
/// Weight rows one decode workgroup computes by default (`ROWS` in products.wgsl;
/// `WgpuOptions::decode_rows`).
pub const MATVEC_ROWS_PER_GROUP: u32 = 8;
/// Threads of a decode workgroup (`WG` in products.wgsl): rows × activation rows fit in it.
pub const MATVEC_GROUP: u32 = 64;
/// Output tile of matmul.wgsl.
pub const MATMUL_TILE: u32 = 64;
/// Positions per attention split (`CHUNK` in attention.wgsl).
pub const ATTENTION_CHUNK: usize = 256;
/// Threads per workgroup of the one-thread-per-element kernels.
pub const ELEMENT_GROUP: u32 = 64;

/// The binding shapes of a kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Layout {
    /// words, scales, mins, input (read) · output (read-write) · residual (read; int8
    /// products add it in their epilogue) · the second and third outputs of a stacked
    /// product (read-write; products.wgsl) · params.
    Weights,
    /// two inputs · output · params.
    Binary,
    /// two inputs · f32 output · int8 output · params.
    Quantize,
    /// q, k, v (read) · key and value pools (read-write) · row info, tables (read) ·
    /// output · per-chunk partials (read-write) · RoPE table, sinks (read) · params.
    Attention,
}

impl Layout {
    fn bindings(self) -> &'static [Bind] {
        use Bind::{Read as R, Uniform as U, Write as W};
        match self {
            Layout::Weights => &[R, R, R, R, W, R, W, W, U],
            Layout::Binary => &[R, R, W, U],
            Layout::Quantize => &[R, R, W, W, U],
            Layout::Attention => &[R, R, R, W, W, R, R, W, W, R, R, U],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bind {
    Read,
    Write,
    Uniform,
}

impl Kernel {
    fn family(self) -> Family {
        match self {
            Kernel::Matvec { .. } => Family::Matvec,
            Kernel::Matmul { .. } => Family::Matmul,
            Kernel::Embed { .. } => Family::Embed,
            Kernel::RmsNorm => Family::Norm,
            Kernel::Rope => Family::Rope,
            Kernel::Add
            | Kernel::AddBias
            | Kernel::SiluMul
            | Kernel::GeluMul
            | Kernel::SwigluOai
            | Kernel::Scale
            | Kernel::Softcap
            | Kernel::GatherRows
            | Kernel::ScatterAdd => Family::Elementwise,
            Kernel::KvWrite { .. } | Kernel::Attend { .. } | Kernel::AttendMerge => {
                Family::Attention
            }
            Kernel::Quantize
            | Kernel::RmsNormQuantize
            | Kernel::SiluMulQuantize
            | Kernel::GeluMulQuantize => Family::Quantize,
            Kernel::Int8Matvec { .. } | Kernel::Int8Matmul { .. } => Family::Int8,
            Kernel::Argmax | Kernel::TopK | Kernel::Sample | Kernel::Adjust | Kernel::LogSum => {
                Family::Head
            }
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Kernel::Add => "add",
            Kernel::AddBias => "add_bias",
            Kernel::SiluMul => "silu_mul",
            Kernel::GeluMul => "gelu_mul",
            Kernel::SwigluOai => "swiglu_oai",
            Kernel::Scale => "scale",
            Kernel::Softcap => "softcap",
            Kernel::GatherRows => "gather_rows",
            Kernel::ScatterAdd => "scatter_add",
            Kernel::KvWrite { .. } => "kv_write",
            Kernel::Attend { .. } => "attend",
            Kernel::AttendMerge => "attend_merge",
            Kernel::Int8Matvec { .. } => "matvec",
            Kernel::Int8Matmul { .. } => "matmul",
            Kernel::RmsNormQuantize => "rms_norm",
            Kernel::SiluMulQuantize => "silu_mul",
            Kernel::GeluMulQuantize => "gelu_mul",
            Kernel::Argmax => "argmax",
            Kernel::TopK => "top_k",
            Kernel::Sample => "sample",
            Kernel::Adjust => "adjust",
            Kernel::LogSum => "log_sum",
            _ => "main",
        }
    }

    fn weight_kind(self) -> Option<WeightKind> {
        match self {
            Kernel::Matvec { kind, .. }
            | Kernel::Matmul { kind }
            | Kernel::Embed { kind }
            | Kernel::Int8Matvec { kind, .. }
            | Kernel::Int8Matmul { kind } => Some(kind),
            Kernel::KvWrite { pool } | Kernel::Attend { pool } => Some(pool),
            _ => None,
        }
    }

    fn layout(self) -> Layout {
        match self.family() {
            Family::Matvec | Family::Matmul | Family::Embed | Family::Int8 => Layout::Weights,
            Family::Attention => Layout::Attention,
            Family::Quantize => Layout::Quantize,
            Family::Norm | Family::Rope | Family::Elementwise | Family::Head => Layout::Binary,
        }
    }

    /// Number of bindings before the uniform (which is always last).
    pub fn buffer_bindings(self) -> usize {
        self.layout().bindings().len() - 1
    }
}

/// A built kernel.
#[derive(Debug)]
pub struct Pipeline {
    pub kernel: Kernel,
    pub pipeline: ::wgpu::ComputePipeline,
    pub layout: ::wgpu::BindGroupLayout,
}

impl Pipeline {
    /// A short name for profiles: the kernel and its specialization.
    pub fn label(&self) -> String {
        match self.kernel {
            Kernel::Matvec { kind, m, rows } => format!("matvec {kind:?} m={m} rows={rows}"),
            Kernel::Matmul { kind } => format!("matmul {kind:?}"),
            Kernel::Embed { kind } => format!("embed {kind:?}"),
            Kernel::Int8Matvec { kind, m, rows } => {
                format!("int8 matvec {kind:?} m={m} rows={rows}")
            }
            Kernel::Int8Matmul { kind } => format!("int8 matmul {kind:?}"),
            Kernel::KvWrite { pool } => format!("kv_write {pool:?}"),
            Kernel::Attend { pool } => format!("attend {pool:?}"),
            k => format!("{k:?}"),
        }
    }
}

/// The device's pipelines, built once each.
pub struct KernelCache {
    layouts: Mutex<HashMap<Layout, ::wgpu::BindGroupLayout>>,
    pipelines: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
    /// Whether workgroups start with zeroed workgroup memory (`WgpuOptions`).
    zero_workgroup_memory: bool,
}

impl KernelCache {
    pub fn new(zero_workgroup_memory: bool) -> Self {
        Self {
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            zero_workgroup_memory,
        }
    }

    fn layout(&self, gpu: &Gpu, layout: Layout) -> Result<::wgpu::BindGroupLayout> {
        let mut layouts = self
            .layouts
            .lock()
            .map_err(|_| Error::Internal("kernel layouts poisoned"))?;
        if let Some(l) = layouts.get(&layout) {
            return Ok(l.clone());
        }
        let entries: Vec<::wgpu::BindGroupLayoutEntry> = layout
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, b)| ::wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: ::wgpu::ShaderStages::COMPUTE,
                ty: ::wgpu::BindingType::Buffer {
                    ty: match b {
                        Bind::Read => ::wgpu::BufferBindingType::Storage { read_only: true },
                        Bind::Write => ::wgpu::BufferBindingType::Storage { read_only: false },
                        Bind::Uniform => ::wgpu::BufferBindingType::Uniform,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let l = gpu
            .device
            .create_bind_group_layout(&::wgpu::BindGroupLayoutDescriptor {
                label: Some("lowbit"),
                entries: &entries,
            });
        layouts.insert(layout, l.clone());
        Ok(l)
    }

    /// The pipeline of `kernel`, built (and its WGSL compiled) on first use.
    pub fn get(&self, gpu: &Gpu, kernel: Kernel) -> Result<Arc<Pipeline>> {
        if let Some(p) = self
            .pipelines
            .lock()
            .map_err(|_| Error::Internal("kernel cache poisoned"))?
            .get(&kernel)
        {
            return Ok(Arc::clone(p));
        }
        let layout = self.layout(gpu, kernel.layout())?;
        let source = lowbit_shaders::source(kernel.family(), kernel.weight_kind(), gpu.features);
        let constants: Vec<(&str, f64)> = match kernel {
            Kernel::Matvec { m, rows, .. } | Kernel::Int8Matvec { m, rows, .. } => {
                vec![("M", f64::from(m)), ("ROWS", f64::from(rows))]
            }
            _ => Vec::new(),
        };
        let label = format!("{kernel:?}");
        let pipeline = gpu.scoped(&format!("building kernel {label}"), || {
            let module = gpu
                .device
                .create_shader_module(::wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: ::wgpu::ShaderSource::Wgsl(source.into()),
                });
            let pl = gpu
                .device
                .create_pipeline_layout(&::wgpu::PipelineLayoutDescriptor {
                    label: Some(&label),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
            gpu.device
                .create_compute_pipeline(&::wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(kernel.entry()),
                    compilation_options: ::wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        // Every kernel writes the workgroup memory it reads first
                        // (WgpuOptions::zero_workgroup_memory).
                        zero_initialize_workgroup_memory: self.zero_workgroup_memory,
                    },
                    cache: None,
                })
        })?;
        let built = Arc::new(Pipeline {
            kernel,
            pipeline,
            layout,
        });
        self.pipelines
            .lock()
            .map_err(|_| Error::Internal("kernel cache poisoned"))?
            .insert(kernel, Arc::clone(&built));
        Ok(built)
    }
}

/// A weight part's geometry (`WeightDims` in formats.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct WeightDims {
    pub words_per_row: u32,
    pub groups_per_row: u32,
    pub group_shift: u32,
    /// The buffer row of the dispatch's row 0 (past the weights before it in a stack).
    pub first_row: u32,
}

/// `Outputs` in products.wgsl: where a product's columns go.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Outputs {
    /// Columns of the whole product.
    pub n: u32,
    /// Output column of the dispatch's weight row 0.
    pub offset: u32,
    /// Columns from `seg1` on go to the second output, from `seg2` on to the third.
    pub seg1: u32,
    pub seg2: u32,
}

/// `MatmulParams` in products.wgsl (matvec.wgsl and matmul.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct MatmulParams {
    pub dims: WeightDims,
    pub out: Outputs,
    pub k: u32,
    pub rows: u32,
    pub m: u32,
    pub tiles_n: u32,
    pub tiles_m: u32,
    pub _pad: [u32; 3],
}

/// `EmbedParams` in embed.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct EmbedParams {
    pub dims: WeightDims,
    pub k: u32,
    pub row_start: u32,
    pub rows: u32,
    pub tokens: u32,
    pub grid_x: u32,
    pub _pad: [u32; 3],
}

/// `NormParams` in norm.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct NormParams {
    pub cols: u32,
    pub rows: u32,
    pub eps: f32,
    pub grid_x: u32,
}

/// `HeadParams` in head.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct HeadParams {
    pub cols: u32,
    pub rows: u32,
    pub grid_x: u32,
    /// `top_k`: values per row (at most [`TOP_K_MAX`]).
    pub k: u32,
}

/// Most values per row `top_k` finds (`K_MAX` in head.wgsl).
pub const TOP_K_MAX: usize = 64;

/// `RopeParams` in rope.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RopeParams {
    pub rows: u32,
    pub cols: u32,
    pub head_dim: u32,
    pub half_split: u32,
    pub grid_x: u32,
    /// Pairs rotated per head (the rest of the head is copied).
    pub rotated_pairs: u32,
    pub _pad: [u32; 2],
}

/// `ElementwiseParams` in elementwise.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct ElementwiseParams {
    pub n: u32,
    pub grid_x: u32,
    pub cols: u32,
    /// `scale`'s factor, `softcap`'s cap.
    pub value: f32,
}

/// `QuantizeParams` in quantize.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct QuantizeParams {
    pub k: u32,
    pub m: u32,
    pub base_d: u32,
    pub base_c: u32,
    pub base_s: u32,
    pub grid_x: u32,
    /// `rms_norm`'s epsilon.
    pub eps: f32,
    pub _pad: u32,
}

/// `Int8Params` in int8.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Int8Params {
    pub dims: WeightDims,
    pub out: Outputs,
    pub k: u32,
    pub rows: u32,
    pub m: u32,
    pub tiles_n: u32,
    pub tiles_m: u32,
    pub base_d: u32,
    pub base_c: u32,
    pub base_s: u32,
    /// 1: add `residual` to every output (binding 5).
    pub add_residual: u32,
    pub _pad: [u32; 3],
}

/// `AttentionParams` in attention.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AttentionParams {
    pub rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub block_tokens: u32,
    pub scale: f32,
    pub grid_x: u32,
    /// Splits per (row, head) in the attend grid.
    pub splits: u32,
    /// RoPE of q and the new keys in the kernels: 0 none, 1 interleaved, 2 half split.
    pub rope: u32,
    /// Gemma 2's soft cap of the scaled scores; 0 none.
    pub softcap: f32,
    /// Sliding window: positions a query sees back to itself; 0 all.
    pub window: u32,
    /// Pairs RoPE rotates per head (partial rotary: fewer than `head_dim / 2`).
    pub rotated_pairs: u32,
    /// 1: the sinks binding holds a logit per head (gpt-oss).
    pub has_sinks: u32,
    /// To a multiple of 16 bytes, as uniform structs are laid out.
    pub _pad: [u32; 3],
}
