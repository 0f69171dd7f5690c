//! Time per kernel from timestamp queries (`lowbit bench --profile`): while profiling, every
//! dispatch runs in a compute pass of its own that writes a timestamp at its start and end.

use super::device::Gpu;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Dispatches timed per step; later ones in a step run untimed.
pub const MAX_TIMED: usize = (::wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

/// Accumulated GPU time per kernel.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// Kernel → (dispatches, nanoseconds).
    pub kernels: BTreeMap<String, (u64, f64)>,
}

impl Profile {
    /// Total nanoseconds over every kernel.
    pub fn total_ns(&self) -> f64 {
        self.kernels.values().map(|(_, ns)| ns).sum()
    }
}

/// The query set and buffers of one profiled step.
pub struct Timer {
    pub queries: ::wgpu::QuerySet,
    resolve: ::wgpu::Buffer,
    readback: ::wgpu::Buffer,
    count: u32,
}

impl Timer {
    /// Room for `dispatches` timed dispatches (at most [`MAX_TIMED`]).
    pub fn new(gpu: &Gpu, dispatches: usize) -> Self {
        let count = (2 * dispatches.clamp(1, MAX_TIMED)) as u32;
        let bytes = u64::from(count) * 8;
        let buffer = |label, usage| {
            gpu.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Self {
            queries: gpu.device.create_query_set(&::wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: ::wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: buffer(
                "timestamps",
                ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "timestamps readback",
                ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
            ),
            count,
        }
    }

    /// The pass's timestamp writes for timed dispatch `i`, if it is timed.
    pub fn writes(&self, i: usize) -> Option<::wgpu::ComputePassTimestampWrites<'_>> {
        let at = 2 * i as u32;
        (at + 1 < self.count).then_some(::wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(at),
            end_of_pass_write_index: Some(at + 1),
        })
    }

    /// Records the copy of every timestamp to the host-visible buffer.
    pub fn resolve(&self, encoder: &mut ::wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..self.count, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, None);
    }

    /// After the step ran: adds each timed dispatch's time to `profile` under its label.
    pub fn collect(self, gpu: &Gpu, labels: &[String], profile: &mut Profile) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.readback
            .map_async(::wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
        gpu.device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("waiting for timestamps: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Device("the timestamp readback was dropped".into()))?
            .map_err(|e| Error::Device(format!("reading timestamps: {e}")))?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(
            &self
                .readback
                .get_mapped_range(..)
                .map_err(|e| Error::Device(format!("reading timestamps: {e}")))?,
        );
        self.readback.unmap();
        let period = f64::from(gpu.queue.get_timestamp_period());
        for (label, pair) in labels.iter().zip(ticks.chunks_exact(2)) {
            let ns = pair[1].saturating_sub(pair[0]) as f64 * period;
            let e = profile.kernels.entry(label.clone()).or_default();
            e.0 += 1;
            e.1 += ns;
        }
        Ok(())
    }
}
