//! Device and dtype names as the CLI and config files spell them.

use anyhow::{bail, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda` (device 0) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--device: '{other}' is not one of cpu, cuda, cuda:N"),
        },
    };
    if let Device::Cuda(i) = device {
        if !tch::Cuda::is_available() {
            bail!("--device: CUDA requested but libtorch sees no CUDA device");
        }
        if i >= tch::Cuda::device_count() as usize {
            bail!(
                "--device: cuda:{i} requested but only {} CUDA devices are visible",
                tch::Cuda::device_count()
            );
        }
    }
    Ok(device)
}

/// `f32`, `bf16` or `f16` (long spellings accepted).
pub fn parse_dtype(name: &str) -> Result<Kind> {
    Ok(match name {
        "f32" | "float32" | "float" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" | "half" => Kind::Half,
        other => bail!("--dtype: '{other}' is not one of f32, bf16, f16"),
    })
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "other",
    }
}
