//! Recording a step: operations append dispatches, copies and uploads here, and nothing runs
//! until something must be read back. Then the whole step is encoded into one command buffer:
//! one write of the step's staging arena (every dispatch's parameters and every upload), bind
//! groups, compute passes between copies, one submit, one readback.

use super::device::Gpu;
use super::kernels::Pipeline;
use super::profile::{Profile, Timer};
use crate::error::{Error, Result};
use bytemuck::Pod;
use std::collections::HashMap;
use std::sync::Arc;

/// Offsets in the staging arena: uniform bindings need 256-byte alignment on every adapter.
const ARENA_ALIGN: usize = 256;

struct DispatchCmd {
    pipeline: Arc<Pipeline>,
    /// Storage bindings in binding order: buffer and bytes bound from offset 0.
    buffers: Vec<(::wgpu::Buffer, u64)>,
    /// The parameters' place in the arena.
    params: (u64, u64),
    groups: (u32, u32),
}

/// Where a copy reads from: the step's arena (uploads) or a buffer.
enum Source {
    Arena,
    Buffer(::wgpu::Buffer),
}

enum Command {
    Dispatch(DispatchCmd),
    Copy {
        src: Source,
        src_offset: u64,
        dst: ::wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
}

/// What a bind group binds: the layout, each storage buffer and its bound size, and the
/// uniform's place in the arena. Activation buffers are recycled by size class and a step's
/// parameters land at the same arena offsets each step, so decode steps find their bind groups
/// here instead of creating about ten per layer every token.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    layout: ::wgpu::BindGroupLayout,
    buffers: Vec<(::wgpu::Buffer, u64)>,
    arena: ::wgpu::Buffer,
    params: (u64, u64),
}

/// Bind groups kept at most (a cleared cache only costs a re-creation; every cached group
/// also keeps its buffers alive).
const BIND_CACHE_MAX: usize = 8192;

/// Where the host's time goes in `flush`: building bind groups, encoding and submitting (the
/// CPU cost of a step's dispatches, which a GPU sits idle through at batch 1), and then
/// waiting for the results (the GPU's execution and the readback).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostTimes {
    pub flushes: u64,
    pub dispatches: u64,
    pub encode_ns: u64,
    pub wait_ns: u64,
}

/// The commands of the step being recorded.
#[derive(Default)]
pub struct Recorder {
    commands: Vec<Command>,
    bind_groups: HashMap<BindKey, ::wgpu::BindGroup>,
    /// Bind groups found in the cache and created, since the start.
    pub bind_hits: u64,
    pub bind_misses: u64,
    arena: Vec<u8>,
    arena_buffer: Option<::wgpu::Buffer>,
    readback: Option<::wgpu::Buffer>,
    /// Time per kernel, while profiling.
    pub profile: Option<Profile>,
    pub host: HostTimes,
}

/// A dispatch grid for `groups` workgroups: at most 65535 along x (WebGPU's guaranteed
/// minimum), the rest along y. Kernels linearize `x + y · width` and skip the overhang.
pub fn grid(groups: u32) -> (u32, u32) {
    const MAX: u32 = 65535;
    if groups <= MAX {
        (groups.max(1), 1)
    } else {
        (MAX, groups.div_ceil(MAX))
    }
}

impl Recorder {
    fn push_arena(&mut self, bytes: &[u8]) -> u64 {
        let offset = self.arena.len().next_multiple_of(ARENA_ALIGN);
        self.arena.resize(offset, 0);
        self.arena.extend_from_slice(bytes);
        offset as u64
    }

    /// Appends a dispatch of `pipeline` over `groups` with storage `buffers` (in binding
    /// order) and `params` as its uniform.
    pub fn dispatch<P: Pod>(
        &mut self,
        pipeline: Arc<Pipeline>,
        buffers: &[(&::wgpu::Buffer, u64)],
        params: &P,
        groups: (u32, u32),
    ) {
        let bytes = bytemuck::bytes_of(params);
        let offset = self.push_arena(bytes);
        self.commands.push(Command::Dispatch(DispatchCmd {
            pipeline,
            buffers: buffers
                .iter()
                .map(|(b, n)| ((*b).clone(), (*n).max(4)))
                .collect(),
            params: (offset, bytes.len() as u64),
            groups,
        }));
    }

    /// Appends a copy of `data` into `dst` at `dst_offset`, ordered with the other commands.
    pub fn upload(&mut self, dst: &::wgpu::Buffer, dst_offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let offset = self.push_arena(data);
        // Copies move whole 4-byte words.
        self.arena.resize(self.arena.len().next_multiple_of(4), 0);
        self.commands.push(Command::Copy {
            src: Source::Arena,
            src_offset: offset,
            dst: dst.clone(),
            dst_offset,
            bytes: (data.len() as u64).next_multiple_of(4),
        });
    }

    /// Appends a buffer-to-buffer copy.
    pub fn copy(
        &mut self,
        src: &::wgpu::Buffer,
        src_offset: u64,
        dst: &::wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        self.commands.push(Command::Copy {
            src: Source::Buffer(src.clone()),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            bytes,
        });
    }

    /// Runs everything recorded; with `read`, copies that buffer's first bytes back and
    /// waits for them.
    pub fn flush(&mut self, gpu: &Gpu, read: Option<(&::wgpu::Buffer, u64)>) -> Result<Vec<u8>> {
        gpu.check()?;
        let read = read.filter(|(_, n)| *n > 0);
        if self.commands.is_empty() && read.is_none() {
            return Ok(Vec::new());
        }
        let encode_start = std::time::Instant::now();
        let commands = std::mem::take(&mut self.commands);
        self.host.flushes += 1;
        self.host.dispatches += commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch(_)))
            .count() as u64;
        let arena = self.arena_buffer(gpu);
        if !self.arena.is_empty() {
            gpu.queue.write_buffer(&arena, 0, &self.arena);
        }
        self.arena.clear();

        if self.bind_groups.len() > BIND_CACHE_MAX {
            self.bind_groups.clear();
        }
        let bind_groups: Vec<Option<::wgpu::BindGroup>> = commands
            .iter()
            .map(|c| match c {
                Command::Dispatch(d) => Some(self.bind_group(gpu, d, &arena)),
                Command::Copy { .. } => None,
            })
            .collect();
        let mut encoder = gpu
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        let timer = (self.profile.is_some() && gpu.timestamps).then(|| {
            let n = commands
                .iter()
                .filter(|c| matches!(c, Command::Dispatch(_)))
                .count();
            Timer::new(gpu, n)
        });
        let mut labels = Vec::new();
        let mut i = 0;
        while i < commands.len() {
            if let Command::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                bytes,
            } = &commands[i]
            {
                let src = match src {
                    Source::Arena => &arena,
                    Source::Buffer(b) => b,
                };
                encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *bytes);
                i += 1;
                continue;
            }
            // Profiling: one pass per dispatch, timed; otherwise one pass per run of
            // dispatches.
            let timed = timer.as_ref().and_then(|t| t.writes(labels.len()));
            let mut pass = encoder.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                label: Some("kernels"),
                timestamp_writes: timed.clone(),
            });
            while let Some(Command::Dispatch(d)) = commands.get(i) {
                pass.set_pipeline(&d.pipeline.pipeline);
                pass.set_bind_group(0, bind_groups[i].as_ref(), &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
                i += 1;
                if timer.is_some() {
                    if timed.is_some() {
                        labels.push(d.pipeline.label());
                    }
                    break;
                }
            }
        }
        if let Some(t) = &timer {
            t.resolve(&mut encoder);
        }
        let staging = read.map(|(buffer, bytes)| {
            let staging = self.readback_buffer(gpu, bytes);
            encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
            (staging, bytes)
        });
        gpu.queue.submit([encoder.finish()]);
        self.host.encode_ns += encode_start.elapsed().as_nanos() as u64;
        let wait_start = std::time::Instant::now();
        let waited = |host: &mut HostTimes| host.wait_ns += wait_start.elapsed().as_nanos() as u64;
        if let (Some(t), Some(profile)) = (timer, self.profile.as_mut()) {
            t.collect(gpu, &labels, profile)?;
        }
        let Some((staging, bytes)) = staging else {
            waited(&mut self.host);
            return gpu.check().map(|()| Vec::new());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(::wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        gpu.device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for the GPU: {e}")))?;
        gpu.check()?;
        rx.recv()
            .map_err(|_| Error::Device("the readback was dropped".into()))?
            .map_err(|e| Error::Device(format!("reading results back: {e}")))?;
        let data = staging
            .get_mapped_range(0..bytes)
            .map_err(|e| Error::Device(format!("reading results back: {e}")))?
            .to_vec();
        staging.unmap();
        waited(&mut self.host);
        Ok(data)
    }

    /// Drops every cached bind group (and with them their hold on buffers).
    pub fn forget_bind_groups(&mut self) {
        self.bind_groups.clear();
    }

    fn bind_group(
        &mut self,
        gpu: &Gpu,
        d: &DispatchCmd,
        arena: &::wgpu::Buffer,
    ) -> ::wgpu::BindGroup {
        let key = BindKey {
            layout: d.pipeline.layout.clone(),
            buffers: d.buffers.clone(),
            arena: arena.clone(),
            params: d.params,
        };
        if let Some(g) = self.bind_groups.get(&key) {
            self.bind_hits += 1;
            return g.clone();
        }
        self.bind_misses += 1;
        let g = create_bind_group(gpu, d, arena);
        self.bind_groups.insert(key, g.clone());
        g
    }

    fn arena_buffer(&mut self, gpu: &Gpu) -> ::wgpu::Buffer {
        let need = (self.arena.len() as u64).max(1 << 16);
        match &self.arena_buffer {
            Some(b) if b.size() >= need => b.clone(),
            _ => {
                let b = gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                    label: Some("step arena"),
                    size: need.next_power_of_two(),
                    usage: ::wgpu::BufferUsages::UNIFORM
                        | ::wgpu::BufferUsages::COPY_SRC
                        | ::wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                // Groups bound to the old arena would keep it alive for nothing.
                self.bind_groups.clear();
                self.arena_buffer = Some(b.clone());
                b
            }
        }
    }

    fn readback_buffer(&mut self, gpu: &Gpu, bytes: u64) -> ::wgpu::Buffer {
        match &self.readback {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.next_power_of_two().max(256),
                    usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.readback = Some(b.clone());
                b
            }
        }
    }
}

fn create_bind_group(gpu: &Gpu, d: &DispatchCmd, arena: &::wgpu::Buffer) -> ::wgpu::BindGroup {
    let mut entries: Vec<::wgpu::BindGroupEntry<'_>> = d
        .buffers
        .iter()
        .enumerate()
        .map(|(i, (buffer, bytes))| ::wgpu::BindGroupEntry {
            binding: i as u32,
            resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                buffer,
                offset: 0,
                size: ::wgpu::BufferSize::new((*bytes).min(buffer.size())),
            }),
        })
        .collect();
    entries.push(::wgpu::BindGroupEntry {
        binding: d.buffers.len() as u32,
        resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
            buffer: arena,
            offset: d.params.0,
            size: ::wgpu::BufferSize::new(d.params.1),
        }),
    });
    gpu.device.create_bind_group(&::wgpu::BindGroupDescriptor {
        label: None,
        layout: &d.pipeline.layout,
        entries: &entries,
    })
}
