//! Where memory lives.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Where a region of memory lives: host memory or one CUDA device.
///
/// Displays as Dynamo writes it (`cpu`, `cuda:N`) and parses as Dynamo 1.6.1 parses it:
/// case-insensitive, surrounding whitespace ignored, `cuda` and `gpu` name a CUDA device
/// (ordinal 0 unless `:N` follows), `cpu` and `host` name host memory.
///
/// ```
/// use ferry_core::Device;
/// assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::cuda(1));
/// assert_eq!(" GPU ".parse::<Device>().unwrap(), Device::cuda(0));
/// assert_eq!("host".parse::<Device>().unwrap(), Device::cpu());
/// assert_eq!(Device::cuda(3).to_string(), "cuda:3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    /// Host (CPU) memory.
    Cpu,
    /// Memory of the CUDA device with this ordinal.
    Cuda(u32),
}

/// The kind of a [`Device`], ignoring the ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Host memory.
    Host,
    /// CUDA device memory.
    Cuda,
}

impl Device {
    /// Host memory.
    pub const fn cpu() -> Self {
        Device::Cpu
    }

    /// Memory of CUDA device `ordinal`.
    pub const fn cuda(ordinal: u32) -> Self {
        Device::Cuda(ordinal)
    }

    /// The kind of memory, without the ordinal.
    pub const fn kind(self) -> DeviceKind {
        match self {
            Device::Cpu => DeviceKind::Host,
            Device::Cuda(_) => DeviceKind::Cuda,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidDevice {
            text: s.chars().take(64).collect(),
        };
        let text = s.trim().to_ascii_lowercase();
        let (name, ordinal) = match text.split_once(':') {
            Some((name, ordinal)) => (name, Some(ordinal)),
            None => (text.as_str(), None),
        };
        match name {
            "cuda" | "gpu" => {
                let ordinal = match ordinal {
                    None => 0,
                    Some(digits) => digits.trim().parse::<u32>().map_err(|_| invalid())?,
                };
                Ok(Device::Cuda(ordinal))
            }
            "cpu" | "host" => match ordinal {
                None => Ok(Device::Cpu),
                Some(digits) => match digits.trim().parse::<u32>() {
                    Ok(0) => Ok(Device::Cpu),
                    _ => Err(invalid()),
                },
            },
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dynamo_spellings() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("CPU", Device::Cpu),
            ("host", Device::Cpu),
            ("cpu:0", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:0", Device::Cuda(0)),
            ("CUDA:7", Device::Cuda(7)),
            ("gpu:2", Device::Cuda(2)),
            ("  cuda:1 ", Device::Cuda(1)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for text in [
            "",
            "tpu",
            "cuda:x",
            "cuda:-1",
            "cpu:3",
            "cuda:99999999999",
            "cudax",
        ] {
            assert!(text.parse::<Device>().is_err(), "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for device in [Device::Cpu, Device::Cuda(0), Device::Cuda(12)] {
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
    }
}
