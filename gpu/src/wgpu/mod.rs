//! The wgpu backend: the same operations as the CPU backend, as WGSL compute kernels on any
//! Vulkan, Metal or DX12 adapter.
//!
//! Weights are uploaded once, still quantized ([`weights`]); activations live in recycled
//! GPU buffers ([`buffers`]); the KV pool is one key and one value buffer per layer
//! ([`attention`]). Operations only record work ([`encoder`]); a step runs as one command
//! buffer when its logits are read back, so a forward pass costs one submit and one wait.

pub mod attention;
pub mod buffers;
pub mod device;
pub mod encoder;
pub mod kernels;
mod linear;
mod ops;
pub mod profile;
mod quantize;
pub mod weights;

use crate::backend::{AttentionShape, Backend, Rope, ScatteredRows, SeqSpan};
use crate::error::{Error, Result};
use crate::kv::{KvPool, KvPoolSpec};
use crate::quant::QTensor;
use crate::tensor::{Storage, Tensor, Weight, WeightStorage};
use buffers::{BufferPool, DeviceTensor, MemoryCounters};
use device::{AdapterChoice, AdapterSummary, Gpu};
use encoder::Recorder;
use kernels::{Kernel, KernelCache, Pipeline};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

pub use device::list_adapters;

/// Per-step uploads that every layer shares (RoPE tables, attention row info), kept while
/// the same positions and block tables come back.
#[derive(Default)]
struct StepCache {
    /// The step's RoPE tables (positions, frequency bits, table): two, for Gemma 3's sliding
    /// and global layers, which alternate within a step.
    rope: Vec<(Vec<u32>, Vec<u32>, DeviceTensor)>,
    /// The step's attention row info: two, for the block tables of a sliding-window pool
    /// and of the other layers' pool, which alternate within a step.
    attention: Vec<(Vec<u32>, attention::RowInfo)>,
}

/// What integer weights are multiplied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// Activations quantized to int8 per 32-block at run time, integer dot products
    /// (`dot4I8Packed`): the CPU backend's arithmetic, so both backends agree.
    Int8,
    /// f32 activations, weights dequantized to f32.
    F32,
}

/// How the backend uses its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Ask for no optional feature (subgroups, f16, timestamps): the path every adapter runs.
    pub portable: bool,
    pub activations: Activations,
    /// Largest weight part in bytes (default: the adapter's `max_storage_buffer_binding_size`);
    /// tests set it small so that small weights split into parts as large ones do.
    pub weight_part_bytes: Option<u64>,
    /// With int8 activations, RMSNorm and SwiGLU quantize their results in the same pass
    /// (quantize.rs); off, a separate quantize kernel runs before each product (the same
    /// bits, three dispatches more per layer: for measuring what the fusion pays).
    pub fuse_quantize: bool,
    /// Zero every kernel's workgroup memory when a workgroup starts, as WebGPU does unless
    /// told otherwise. No kernel reads workgroup memory it has not written, so lowbit turns
    /// it off (a real GPU would store up to 9 KB of zeros at each decode-product
    /// workgroup's start); on, for testing that claim and measuring it.
    pub zero_workgroup_memory: bool,
    /// Weight rows a decode-product workgroup computes (2, 4, 8 or 16; fewer where the
    /// activation rows times these exceed its 64 threads). Fewer rows, more workgroups in
    /// flight; the same bits whatever it is.
    pub decode_rows: u32,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        Self {
            portable: false,
            activations: Activations::Int8,
            weight_part_bytes: None,
            fuse_quantize: true,
            zero_workgroup_memory: false,
            decode_rows: kernels::MATVEC_ROWS_PER_GROUP,
        }
    }
}

impl WgpuOptions {
    /// The defaults, overridden by `LOWBIT_WGPU_PORTABLE=1`,
    /// `LOWBIT_WGPU_ACTIVATIONS=f32|int8`, `LOWBIT_WGPU_FUSE_QUANTIZE=0`,
    /// `LOWBIT_WGPU_ZERO_WORKGROUP=1` and `LOWBIT_WGPU_DECODE_ROWS=2|4|8|16`.
    pub fn from_env() -> Result<Self> {
        let mut o = Self::default();
        if std::env::var("LOWBIT_WGPU_PORTABLE").is_ok_and(|v| v == "1") {
            o.portable = true;
        }
        if std::env::var("LOWBIT_WGPU_FUSE_QUANTIZE").is_ok_and(|v| v == "0") {
            o.fuse_quantize = false;
        }
        if std::env::var("LOWBIT_WGPU_ZERO_WORKGROUP").is_ok_and(|v| v == "1") {
            o.zero_workgroup_memory = true;
        }
        match std::env::var("LOWBIT_WGPU_DECODE_ROWS").as_deref() {
            Err(_) | Ok("") => {}
            Ok(v) => match v.parse::<u32>() {
                Ok(r @ (2 | 4 | 8 | 16)) => o.decode_rows = r,
                _ => {
                    return Err(Error::Unsupported(format!(
                        "LOWBIT_WGPU_DECODE_ROWS={v} (valid: 2, 4, 8, 16)"
                    )))
                }
            },
        }
        match std::env::var("LOWBIT_WGPU_ACTIVATIONS").as_deref() {
            Err(_) | Ok("") | Ok("int8") => {}
            Ok("f32") => o.activations = Activations::F32,
            Ok(other) => {
                return Err(Error::Unsupported(format!(
                    "LOWBIT_WGPU_ACTIVATIONS={other} (valid: int8, f32)"
                )))
            }
        }
        Ok(o)
    }
}

/// The wgpu backend.
pub struct WgpuBackend {
    gpu: Gpu,
    options: WgpuOptions,
    kernels: KernelCache,
    pool: BufferPool,
    recorder: Mutex<Recorder>,
    memory: Arc<MemoryCounters>,
    cache: Mutex<StepCache>,
    /// Bound where a kernel's layout has a buffer the dispatch does not use.
    dummy_read: ::wgpu::Buffer,
    dummy_write: ::wgpu::Buffer,
    /// Tests: fill every handed-out activation buffer with NaN first, so that an element a
    /// kernel forgets to write shows.
    poison: std::sync::atomic::AtomicBool,
    /// Whether an integer weight (Q8, Q4, Q4M, Lut4) has been loaded (quantize.rs).
    integer_weights: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.gpu.adapter)
            .finish_non_exhaustive()
    }
}

impl WgpuBackend {
    fn weight_part_bytes(&self) -> u64 {
        let max = self.gpu.limits.max_storage_buffer_binding_size;
        self.options.weight_part_bytes.map_or(max, |b| b.min(max))
    }

    /// Wraps an uploaded weight, counting its bytes.
    fn resident(&self, d: weights::DeviceWeight, cols: usize) -> Weight {
        if d.kind.is_integer() {
            self.integer_weights.store(true, Ordering::Relaxed);
        }
        self.memory
            .weights
            .fetch_add(d.bytes as u64, Ordering::Relaxed);
        Weight::new(d.rows as usize, cols, WeightStorage::Device(d))
    }

    /// Opens an adapter.
    pub fn new(choice: AdapterChoice, options: WgpuOptions) -> Result<Self> {
        let gpu = Gpu::open(choice, options.portable)?;
        let memory = Arc::new(MemoryCounters::default());
        let pool = BufferPool::new(gpu.device.clone(), Arc::clone(&memory));
        let dummy = |label| {
            gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: 256,
                usage: ::wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (dummy_read, dummy_write) = (dummy("unused input"), dummy("unused output"));
        if !matches!(options.decode_rows, 2 | 4 | 8 | 16) {
            return Err(Error::Unsupported(format!(
                "{} weight rows per decode workgroup (valid: 2, 4, 8, 16)",
                options.decode_rows
            )));
        }
        let kernels = KernelCache::new(options.zero_workgroup_memory);
        let mut options = options;
        // The int8 path needs `dot4I8Packed` to compile on this adapter; where a driver
        // refuses it, serve on f32 activations (logged) rather than fail every step.
        if options.activations == Activations::Int8 {
            let probe = Kernel::Int8Matvec {
                kind: lowbit_shaders::WeightKind::Q8,
                m: 1,
                rows: kernels::MATVEC_ROWS_PER_GROUP,
            };
            if let Err(e) = kernels.get(&gpu, probe) {
                tracing::warn!(
                    target: "lowbit::device",
                    "int8 kernels do not build on this adapter ({e}); using f32 activations"
                );
                options.activations = Activations::F32;
            }
        }
        Ok(Self {
            gpu,
            options,
            kernels,
            pool,
            recorder: Mutex::default(),
            memory,
            cache: Mutex::default(),
            dummy_read,
            dummy_write,
            poison: false.into(),
            integer_weights: false.into(),
        })
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.gpu.adapter
    }

    /// The options it was opened with.
    pub fn options(&self) -> WgpuOptions {
        self.options
    }

    /// Whether kernels use subgroup operations on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.gpu.features.subgroups
    }

    /// Bind groups found in the cache and created since the device opened.
    pub fn bind_group_counts(&self) -> Result<(u64, u64)> {
        let rec = self.recorder()?;
        Ok((rec.bind_hits, rec.bind_misses))
    }

    /// The host's time in submitting steps and waiting for them since the last call, and a
    /// fresh start.
    pub fn take_host_times(&self) -> Result<encoder::HostTimes> {
        Ok(std::mem::take(&mut self.recorder()?.host))
    }

    /// Bytes of GPU memory held: weights, KV pool, activation buffers.
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        (
            self.memory.weights.load(Ordering::Relaxed),
            self.memory.kv.load(Ordering::Relaxed),
            self.memory.activations.load(Ordering::Relaxed),
        )
    }

    /// Starts (or stops) timing every kernel; [`WgpuBackend::take_profile`] returns the times.
    /// Without `TIMESTAMP_QUERY` on the adapter, nothing is timed.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        self.recorder()?.profile = on.then(profile::Profile::default);
        Ok(())
    }

    /// Whether this adapter can time kernels.
    pub fn can_profile(&self) -> bool {
        self.gpu.timestamps
    }

    /// The kernel times gathered since profiling started, and a fresh start.
    pub fn take_profile(&self) -> Result<profile::Profile> {
        let mut rec = self.recorder()?;
        Ok(rec
            .profile
            .replace(profile::Profile::default())
            .unwrap_or_default())
    }

    /// Tests: poison every activation buffer handed out from now on.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    fn recorder(&self) -> Result<MutexGuard<'_, Recorder>> {
        self.recorder
            .lock()
            .map_err(|_| Error::Internal("the wgpu recorder is poisoned"))
    }

    fn kernel(&self, k: Kernel) -> Result<Arc<Pipeline>> {
        self.kernels.get(&self.gpu, k)
    }

    /// Uploads a step's small table (RoPE rows, positions, block tables) into `old`'s buffer
    /// where it fits, else into a new one with room to grow: successive steps then bind the
    /// same buffers and find their bind groups cached instead of creating a few per layer
    /// every token. Overwriting is safe: the upload is ordered after every command recorded
    /// or submitted before it, so earlier dispatches read the earlier contents.
    fn upload_reusing(&self, old: Option<DeviceTensor>, data: &[u8]) -> Result<DeviceTensor> {
        let t = match old {
            Some(t) if t.bytes() >= data.len() as u64 => t,
            _ => self.alloc((data.len() / 4).next_power_of_two().max(64), 1)?,
        };
        self.recorder()?.upload(t.buffer(), 0, data);
        Ok(t)
    }

    /// A fresh activation buffer for `rows × cols` f32 values.
    fn alloc(&self, rows: usize, cols: usize) -> Result<DeviceTensor> {
        let bytes = (rows * cols * 4) as u64;
        if bytes > self.gpu.limits.max_storage_buffer_binding_size {
            return Err(Error::Unsupported(format!(
                "an activation of {rows}x{cols} f32 ({bytes} bytes) is larger than this \
                 adapter's largest binding ({} bytes); lower --max-batch-tokens",
                self.gpu.limits.max_storage_buffer_binding_size
            )));
        }
        let t = self.pool.take(bytes);
        if self.poison.load(Ordering::Relaxed) {
            let nan = vec![0xffu8; t.bytes() as usize];
            self.recorder()?.upload(t.buffer(), 0, &nan);
        }
        Ok(t)
    }

    fn tensor(&self, rows: usize, cols: usize, t: DeviceTensor) -> Tensor {
        Tensor::from_device(rows, cols, t)
    }

    /// Runs everything recorded so far and waits for it.
    pub fn synchronize(&self) -> Result<()> {
        self.recorder()?.flush(&self.gpu, None)?;
        self.gpu
            .device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        self.gpu.check()
    }
}

fn device_of(t: &Tensor) -> Result<&DeviceTensor> {
    match t.storage() {
        Storage::Device(d) => Ok(d),
        Storage::Host(_) => Err(Error::ForeignStorage("cpu")),
    }
}

fn weight_of(w: &Weight) -> Result<&weights::DeviceWeight> {
    match w.storage() {
        WeightStorage::Device(d) => Ok(d),
        _ => Err(Error::ForeignStorage("cpu")),
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> String {
        format!("wgpu:{}", self.gpu.adapter.name)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn load_weight(&self, w: QTensor) -> Result<Weight> {
        let max = self.weight_part_bytes();
        let (rows, cols) = (w.rows, w.cols);
        let what = format!("uploading a {} {rows}x{cols} weight", w.format);
        let d = self
            .gpu
            .scoped(&what, || weights::upload(&self.gpu, &w, max))??;
        Ok(self.resident(d, cols))
    }

    /// Weights of one format and width, two or three of them, go up as one stack: their
    /// products in `matmul_many` are then one dispatch (fewer dispatches per layer: Q/K/V
    /// three to one, gate/up two to one). Others load one by one.
    fn load_weights_together(&self, ws: Vec<QTensor>) -> Result<Vec<Weight>> {
        let stackable = (2..=weights::MAX_STACK).contains(&ws.len())
            && ws
                .iter()
                .all(|w| w.format == ws[0].format && w.cols == ws[0].cols);
        if !stackable {
            return ws.into_iter().map(|w| self.load_weight(w)).collect();
        }
        let max = self.weight_part_bytes();
        let cols = ws[0].cols;
        let rows: usize = ws.iter().map(|w| w.rows).sum();
        let what = format!(
            "uploading a stack of {} {} weights ({rows}x{cols})",
            ws.len(),
            ws[0].format
        );
        let members = self
            .gpu
            .scoped(&what, || weights::upload_stack(&self.gpu, &ws, max))??;
        Ok(members
            .into_iter()
            .map(|d| self.resident(d, cols))
            .collect())
    }

    fn upload(&self, rows: usize, cols: usize, data: Vec<f32>) -> Result<Tensor> {
        if data.len() != rows * cols {
            return Err(crate::error::shape_err(
                "upload",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        let t = self.alloc(rows, cols)?;
        self.recorder()?
            .upload(t.buffer(), 0, bytemuck::cast_slice(&data));
        Ok(self.tensor(rows, cols, t))
    }

    fn download(&self, x: &Tensor) -> Result<Vec<f32>> {
        let d = device_of(x)?;
        let bytes = (x.rows() * x.cols() * 4) as u64;
        let raw = self
            .recorder()?
            .flush(&self.gpu, Some((d.buffer(), bytes)))?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        self.embed_rows(table, ids)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        self.norm(x, weight, eps)
    }

    fn rms_norm_add(
        &self,
        x: &Tensor,
        weight: &Tensor,
        eps: f32,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let normed = self.norm_plain(x, weight, eps)?;
        self.add(&normed, residual)
    }

    fn matmul(&self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        self.linear(x, w)
    }

    fn matmul_many(&self, x: &Tensor, ws: &[&Weight]) -> Result<Vec<Tensor>> {
        self.linear_many(x, ws)
    }

    fn matmul_add(&self, x: &Tensor, w: &Weight, residual: &Tensor) -> Result<Tensor> {
        self.linear_add(x, w, residual)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.binary(Kernel::Add, "add", a, b)
    }

    fn add_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.add_row_bias(x, bias)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if let Some(t) = self.silu_mul_quantizing(gate, up)? {
            return Ok(t);
        }
        self.binary(Kernel::SiluMul, "silu_mul", gate, up)
    }

    fn gelu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if let Some(t) = self.gelu_mul_quantizing(gate, up)? {
            return Ok(t);
        }
        self.binary(Kernel::GeluMul, "gelu_mul", gate, up)
    }

    fn swiglu_oai(&self, gate: &Tensor, up: &Tensor, limit: f32) -> Result<Tensor> {
        self.swiglu_oai_values(gate, up, limit)
    }

    fn scale(&self, x: &Tensor, factor: f32) -> Result<Tensor> {
        self.unary(Kernel::Scale, x, factor)
    }

    fn softcap(&self, x: &Tensor, cap: f32) -> Result<Tensor> {
        self.unary(Kernel::Softcap, x, cap)
    }

    fn rope(&self, x: &Tensor, positions: &[u32], rope: &Rope) -> Result<Tensor> {
        self.rotate(x, positions, rope)
    }

    fn select_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        self.gather(x, rows)
    }

    fn add_scattered(&self, base: &Tensor, parts: &[ScatteredRows<'_>]) -> Result<Tensor> {
        self.scatter(base, parts)
    }

    fn logits_stay_on_device(&self) -> bool {
        true
    }

    fn read_logits(
        &self,
        x: &Tensor,
        want: &crate::LogitsRequest<'_>,
    ) -> Result<crate::backend::LogitsReadback> {
        self.read_logits_once(x, want)
    }

    fn top_k_rows(&self, x: &Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        self.top_k_pairs(x, k)
    }

    fn argmax_rows(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.argmax_ids(x)
    }

    fn new_kv_pool(&self, spec: KvPoolSpec) -> Result<KvPool> {
        self.kv_pool(spec)
    }

    fn max_kv_blocks(&self, spec: &KvPoolSpec) -> usize {
        self.kv_pool_max_blocks(spec)
    }

    fn copy_blocks(&self, pool: &mut KvPool, pairs: &[(u32, u32)]) -> Result<()> {
        self.copy_kv_blocks(pool, pairs)
    }

    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        seqs: &[SeqSpan<'_>],
        pool: &mut KvPool,
        shape: AttentionShape,
    ) -> Result<Tensor> {
        self.attend(layer, (q, k, v), None, seqs, pool, shape)
    }

    fn rope_attention(
        &self,
        layer: usize,
        qkv: (&Tensor, &Tensor, &Tensor),
        positions: &[u32],
        rope: &Rope,
        seqs: &[SeqSpan<'_>],
        pool: &mut KvPool,
        shape: AttentionShape,
    ) -> Result<Tensor> {
        self.attend(layer, qkv, Some((positions, rope)), seqs, pool, shape)
    }
}
