//! GPU memory: activation buffers recycled by size class, so that steps after the first
//! allocate nothing, and the byte counts `lowbit info`/`bench` report.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::quantize::Int8Activations;

/// Usage of every activation buffer: kernels read and write it, uploads and readbacks copy.
const ACTIVATION_USAGE: ::wgpu::BufferUsages = ::wgpu::BufferUsages::STORAGE
    .union(::wgpu::BufferUsages::COPY_SRC)
    .union(::wgpu::BufferUsages::COPY_DST);

/// Smallest buffer handed out (also what an empty tensor gets: a binding cannot be empty).
const MIN_BYTES: u64 = 256;

/// Bytes of GPU memory held, by purpose.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    pub weights: AtomicU64,
    pub kv: AtomicU64,
    pub activations: AtomicU64,
}

impl MemoryCounters {
    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.weights.load(Ordering::Relaxed)
            + self.kv.load(Ordering::Relaxed)
            + self.activations.load(Ordering::Relaxed)
    }
}

/// Rounds a size up to its class: powers of two and the midpoints between them, so a buffer
/// wastes at most a third of itself and prefill chunks of nearby sizes share buffers.
fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(MIN_BYTES);
    let pow = b.next_power_of_two();
    let mid = pow / 4 * 3;
    if b <= mid && mid >= MIN_BYTES {
        mid
    } else {
        pow
    }
}

/// Free activation buffers by size class, each by its creation serial. A step takes the
/// lowest free serial of its class, so which buffer an operation gets depends only on which
/// are free, not on the order earlier tensors dropped in: identical steps then bind identical
/// buffers and find their bind groups cached (encoder.rs).
#[derive(Debug, Default)]
struct FreeLists {
    free: HashMap<u64, BTreeMap<u64, ::wgpu::Buffer>>,
    next_serial: u64,
}

/// Hands out activation buffers and takes them back when their last [`DeviceTensor`] drops.
///
/// A buffer may be handed out again before the commands that used it have run: commands run
/// in recording order, and uploads go through the same command stream (encoder.rs), so a
/// later writer never overtakes an earlier reader.
#[derive(Debug, Clone)]
pub struct BufferPool {
    device: ::wgpu::Device,
    lists: Arc<Mutex<FreeLists>>,
    counters: Arc<MemoryCounters>,
}

impl BufferPool {
    pub fn new(device: ::wgpu::Device, counters: Arc<MemoryCounters>) -> Self {
        Self {
            device,
            lists: Arc::default(),
            counters,
        }
    }

    /// A buffer of at least `bytes`, recycled when one of its class is free.
    pub fn take(&self, bytes: u64) -> DeviceTensor {
        let class = size_class(bytes);
        let mut lists = self.lists.lock().ok();
        let recycled = lists
            .as_mut()
            .and_then(|l| l.free.get_mut(&class).and_then(BTreeMap::pop_first));
        let (serial, buffer) = recycled.unwrap_or_else(|| {
            let serial = lists.as_mut().map_or(u64::MAX, |l| {
                l.next_serial += 1;
                l.next_serial
            });
            self.counters
                .activations
                .fetch_add(class, Ordering::Relaxed);
            let buffer = self.device.create_buffer(&::wgpu::BufferDescriptor {
                label: Some("activation"),
                size: class,
                usage: ACTIVATION_USAGE,
                mapped_at_creation: false,
            });
            (serial, buffer)
        });
        drop(lists);
        DeviceTensor {
            values: Arc::new(Pooled {
                buffer,
                serial,
                bytes: bytes.max(4),
                class,
                lists: Arc::clone(&self.lists),
            }),
            int8: None,
        }
    }
}

#[derive(Debug)]
struct Pooled {
    buffer: ::wgpu::Buffer,
    serial: u64,
    bytes: u64,
    class: u64,
    lists: Arc<Mutex<FreeLists>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut l) = self.lists.lock() {
            l.free
                .entry(self.class)
                .or_default()
                .insert(self.serial, self.buffer.clone());
        }
    }
}

/// An activation tensor's values on the GPU (f32, row-major). Clones share the buffer; it
/// returns to its pool when the last one drops.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    values: Arc<Pooled>,
    /// The same values quantized to int8, where the kernel that wrote them made that too
    /// (quantize.rs); products with int8 activations take it instead of quantizing again.
    int8: Option<Arc<Int8Activations>>,
}

impl DeviceTensor {
    /// The buffer (possibly larger than the tensor).
    pub fn buffer(&self) -> &::wgpu::Buffer {
        &self.values.buffer
    }

    /// Bytes the tensor's values take (at least 4, so that it can be bound).
    pub fn bytes(&self) -> u64 {
        self.values.bytes
    }

    /// The tensor with its values' int8 form attached.
    pub(super) fn with_int8(self, int8: Int8Activations) -> Self {
        Self {
            int8: Some(Arc::new(int8)),
            ..self
        }
    }

    /// The values' int8 form, if a kernel made it with them.
    pub(super) fn int8(&self) -> Option<&Arc<Int8Activations>> {
        self.int8.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_waste_at_most_a_third_and_never_shrink() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            700,
            768,
            769,
            1024,
            1025,
            5000,
            1 << 20,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes && c >= 256, "{bytes} -> {c}");
            assert!(
                bytes <= 256 || (c as f64) < bytes as f64 * 1.5 + 1.0,
                "{bytes} -> {c}"
            );
        }
        assert_eq!(size_class(700), 768);
        assert_eq!(size_class(769), 1024);
    }
}
