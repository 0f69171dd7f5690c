//! Choosing an adapter and opening a device: its own limits, the optional features lowbit uses,
//! and errors captured instead of wgpu's default panic.

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Which adapter `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterChoice {
    /// A hardware GPU (discrete first, then integrated); none is an error.
    Hardware,
    /// The best adapter there is, software ones (lavapipe) included.
    Any,
    /// The N-th adapter of [`list_adapters`].
    Index(usize),
}

/// What an adapter is, for logs and `lowbit info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {})",
            self.name, self.backend, self.device_type, self.driver
        )
    }
}

/// The backends lowbit runs on; GL is not a target (DESIGN.md).
const BACKENDS: ::wgpu::Backends = ::wgpu::Backends::VULKAN
    .union(::wgpu::Backends::METAL)
    .union(::wgpu::Backends::DX12);

fn instance() -> ::wgpu::Instance {
    let mut desc = ::wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = BACKENDS;
    ::wgpu::Instance::new(desc)
}

fn summary(index: usize, a: &::wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend).to_lowercase(),
        device_type: match info.device_type {
            ::wgpu::DeviceType::DiscreteGpu => "discrete GPU",
            ::wgpu::DeviceType::IntegratedGpu => "integrated GPU",
            ::wgpu::DeviceType::VirtualGpu => "virtual GPU",
            ::wgpu::DeviceType::Cpu => "software",
            ::wgpu::DeviceType::Other => "other",
        }
        .to_string(),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    }
}

fn adapters() -> Vec<::wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(BACKENDS))
}

/// Every adapter wgpu sees on Vulkan, Metal and DX12, in index order.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters()
        .iter()
        .enumerate()
        .map(|(i, a)| summary(i, a))
        .collect()
}

fn rank(t: ::wgpu::DeviceType) -> u8 {
    match t {
        ::wgpu::DeviceType::DiscreteGpu => 0,
        ::wgpu::DeviceType::IntegratedGpu => 1,
        ::wgpu::DeviceType::VirtualGpu | ::wgpu::DeviceType::Other => 2,
        ::wgpu::DeviceType::Cpu => 3,
    }
}

fn pick(choice: AdapterChoice) -> Result<(::wgpu::Adapter, AdapterSummary)> {
    let all = adapters();
    let names = || {
        let list: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, a)| format!("gpu:{i} {}", summary(i, a)))
            .collect();
        if list.is_empty() {
            "none (is a Vulkan driver installed? e.g. mesa-vulkan-drivers)".to_string()
        } else {
            list.join("; ")
        }
    };
    let chosen = match choice {
        AdapterChoice::Index(i) => all.get(i).map(|a| (i, a)),
        AdapterChoice::Any | AdapterChoice::Hardware => all
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                choice == AdapterChoice::Any
                    || matches!(
                        a.get_info().device_type,
                        ::wgpu::DeviceType::DiscreteGpu | ::wgpu::DeviceType::IntegratedGpu
                    )
            })
            .min_by_key(|(i, a)| (rank(a.get_info().device_type), *i)),
    };
    match chosen {
        Some((i, a)) => Ok((a.clone(), summary(i, a))),
        None => Err(Error::Device(format!(
            "no {} adapter; adapters seen: {}",
            match choice {
                AdapterChoice::Hardware => "hardware GPU".to_string(),
                AdapterChoice::Any => "GPU".to_string(),
                AdapterChoice::Index(i) => format!("gpu:{i}"),
            },
            names()
        ))),
    }
}

/// An open device, the features it was opened with, and where its errors go.
pub struct Gpu {
    pub device: ::wgpu::Device,
    pub queue: ::wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: ::wgpu::Limits,
    pub features: lowbit_shaders::Features,
    pub timestamps: bool,
    /// The first error wgpu reported outside an error scope (validation, out of memory, a lost
    /// device); every later operation fails with it.
    pub fault: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Opens the chosen adapter with its own limits and whichever of `SUBGROUP`,
    /// `SHADER_F16` and `TIMESTAMP_QUERY` it offers (`portable` asks for none of them).
    pub fn open(choice: AdapterChoice, portable: bool) -> Result<Self> {
        let (adapter, info) = pick(choice)?;
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(::wgpu::DownlevelFlags::SHADER_F16_IN_F32)
        {
            return Err(Error::Device(format!(
                "{info} cannot unpack f16 values in shaders (SHADER_F16_IN_F32)"
            )));
        }
        let offered = adapter.features();
        let wanted = if portable {
            ::wgpu::Features::empty()
        } else {
            ::wgpu::Features::SUBGROUP
                | ::wgpu::Features::SHADER_F16
                | ::wgpu::Features::TIMESTAMP_QUERY
        };
        let required_features = offered & wanted;
        let limits = adapter.limits();
        let (device, queue) =
            pollster::block_on(adapter.request_device(&::wgpu::DeviceDescriptor {
                label: Some("lowbit"),
                required_features,
                required_limits: limits.clone(),
                experimental_features: ::wgpu::ExperimentalFeatures::disabled(),
                memory_hints: ::wgpu::MemoryHints::Performance,
                trace: ::wgpu::Trace::Off,
            }))
            .map_err(|e| Error::Device(format!("{info}: cannot open the device: {e}")))?;
        let fault = Arc::new(Mutex::new(None::<String>));
        let sink = Arc::clone(&fault);
        device.on_uncaptured_error(Arc::new(move |e: ::wgpu::Error| {
            let msg = e.to_string();
            tracing::error!(error = %msg, "wgpu error");
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert(msg);
            }
        }));
        let sink = Arc::clone(&fault);
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert(format!("device lost ({reason:?}): {msg}"));
            }
        });
        let features = lowbit_shaders::Features {
            subgroups: required_features.contains(::wgpu::Features::SUBGROUP),
        };
        Ok(Self {
            device,
            queue,
            adapter: info,
            limits,
            features,
            timestamps: required_features.contains(::wgpu::Features::TIMESTAMP_QUERY),
            fault,
        })
    }

    /// The first error the device reported, as an [`Error`].
    pub fn check(&self) -> Result<()> {
        match self.fault.lock() {
            Ok(slot) => match slot.as_ref() {
                Some(msg) => Err(Error::Device(msg.clone())),
                None => Ok(()),
            },
            Err(_) => Err(Error::Device("the device's error slot is poisoned".into())),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they caught
    /// into an error naming `what`.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::OutOfMemory);
        let validation = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match v.or(o) {
            Some(e) => Err(Error::Device(format!("{what}: {e}"))),
            None => Ok(value),
        }
    }
}
