//! Device memory: whether a backend moves CUDA memory here ([`cuda_support`]), the memory type
//! UCX is told for each region and each get or put, the CUDA context the progress thread
//! holds current ([`DeviceContext`]), and the wait for the caller's stream before UCX touches
//! device memory ([`settle_streams`]).
//!
//! Without the `cuda` feature every device but the host is refused, and [`cuda_support`] says
//! the build has no CUDA.

#[cfg(feature = "cuda")]
use std::sync::Arc;

#[cfg(feature = "cuda")]
use ferry_core::cuda::cudarc::driver::CudaContext;
use ferry_core::{Descriptor, Device, Error};

use crate::blob::NAME;
use crate::safe::{Context, MemoryType};

/// Whether a backend whose UCX context is `context` can move CUDA device memory, or why not.
///
/// All of these must hold:
/// - this build has the `cuda` feature;
/// - UCX can handle CUDA memory: the context's memory types (`ucp_context_query`) include
///   `UCS_MEMORY_TYPE_CUDA`, which needs a UCX built with CUDA whose cuda transports
///   (`libuct_cuda`) are installed and enabled by `UCX_TLS`. Debian's UCX 1.13 (`libucx0`)
///   ships none, so there it never holds;
/// - UCX's protocols honour a get's or put's local memory type: UCX's v1 protocols, the
///   default before UCX 1.16 (`UCX_PROTO_ENABLE=n`), treat the local buffer of every get and
///   put as host memory (UCX 1.13's `ucp_rma_request_init` sets it so), and a transport then
///   copies from a device pointer as from host memory;
/// - a CUDA driver and device are present (`ferry_core::cuda::device_count`, which exists with
///   the `cuda` feature).
pub(crate) fn cuda_support(context: &Context) -> Result<(), String> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = context;
        Err("ferry-backend-ucx was built without its `cuda` feature".into())
    }
    #[cfg(feature = "cuda")]
    {
        let (major, minor, release) = crate::safe::version();
        let ucx = format!("UCX {major}.{minor}.{release}");
        match context.supports(MemoryType::Cuda) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{ucx} cannot handle CUDA memory: its context detects no CUDA memory type \
                     (a UCX built without CUDA, its cuda transport module libuct_cuda not \
                     installed or not loadable without a CUDA driver, or UCX_TLS leaving it \
                     out; Debian's libucx0 ships none)"
                ))
            }
            Err(e) => return Err(format!("{ucx}: {e}")),
        }
        let settings = crate::safe::configuration().map_err(|e| format!("{ucx}: {e}"))?;
        let proto = settings
            .iter()
            .find(|(name, _)| name == "PROTO_ENABLE")
            .map(|(_, value)| value.as_str());
        match proto.map(ucx_bool) {
            // No such setting: a UCX whose v1 protocols are gone.
            None | Some(Some(true)) => {}
            Some(Some(false)) => {
                return Err(format!(
                    "{ucx} runs its v1 protocols (UCX_PROTO_ENABLE=n, the default before UCX \
                     1.16), which take the local buffer of a get or put for host memory \
                     whatever its type: set UCX_PROTO_ENABLE=y"
                ))
            }
            Some(None) => {
                return Err(format!(
                    "{ucx}: cannot read its UCX_PROTO_ENABLE setting {proto:?}"
                ))
            }
        }
        ferry_core::cuda::device_count().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A UCX boolean setting's value as UCX parses it (`y`, `yes`, `on`, `1` and their opposites,
/// in any case); `None` for anything else.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn ucx_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "on" | "1" => Some(true),
        "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The CUDA context current on the progress thread.
///
/// UCX's cuda transports (up to UCX 1.18; 1.19 relaxed it for `cuda_copy`) use the calling
/// thread's current context to register device memory and to make the streams and events of
/// their copies, and NIXL's UCX backend makes the memory's context current on its progress
/// thread for that reason. So the progress thread binds the primary context of the first
/// device whose memory it registers or moves, keeps it current (and retained) for its whole
/// life, and refuses memory of any other device: one backend serves one device.
#[derive(Default)]
pub(super) struct DeviceContext {
    #[cfg(feature = "cuda")]
    bound: Option<(u32, Arc<CudaContext>)>,
}

impl DeviceContext {
    /// Whether a device's context has been bound (to the thread that first used device memory).
    pub(super) fn is_bound(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.bound.is_some();
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// Makes memory on `device` usable from this thread (binding its context the first time)
    /// and returns the memory type UCX is told for it. `UnsupportedDevice` for a device this
    /// backend cannot serve (any device in a build without `cuda`; another device than the
    /// one it serves); the driver's error if the context cannot be made current.
    pub(super) fn enter(&mut self, device: Device) -> Result<MemoryType, Error> {
        let refused = Error::UnsupportedDevice {
            device,
            backend: NAME,
        };
        match device {
            Device::Cpu => Ok(MemoryType::Host),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(refused),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => match &self.bound {
                Some((served, _)) if *served == ordinal => Ok(MemoryType::Cuda),
                Some(_) => Err(refused),
                None => {
                    let context = ferry_core::cuda::context(ordinal)?;
                    context
                        .bind_to_thread()
                        .map_err(|e| ferry_core::cuda::driver_error(&e))?;
                    self.bound = Some((ordinal, context));
                    Ok(MemoryType::Cuda)
                }
            },
        }
    }
}

/// Waits until the work queued on the CUDA streams of `descriptors` has finished, so that UCX
/// (whose copies run on streams of its own) reads what the caller's kernels wrote and writes
/// nothing they still read (`ferry_core::cuda::synchronize_streams`, with the `cuda` feature).
pub(super) fn settle_streams(descriptors: &[Descriptor<'_>]) -> Result<(), Error> {
    #[cfg(feature = "cuda")]
    return ferry_core::cuda::synchronize_streams(descriptors);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = descriptors;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_as_ucx_reads_them() {
        for yes in ["y", "YES", "on", "1", " y "] {
            assert_eq!(ucx_bool(yes), Some(true), "{yes}");
        }
        for no in ["n", "No", "OFF", "0"] {
            assert_eq!(ucx_bool(no), Some(false), "{no}");
        }
        assert_eq!(ucx_bool("maybe"), None);
        assert_eq!(ucx_bool(""), None);
    }

    #[test]
    fn host_memory_needs_no_context() {
        let mut context = DeviceContext::default();
        assert_eq!(context.enter(Device::Cpu), Ok(MemoryType::Host));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn device_memory_is_refused_without_the_feature() {
        let mut context = DeviceContext::default();
        assert_eq!(
            context.enter(Device::cuda(0)),
            Err(Error::UnsupportedDevice {
                device: Device::cuda(0),
                backend: NAME,
            })
        );
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn device_memory_needs_a_device() {
        let mut context = DeviceContext::default();
        match ferry_core::cuda::device_count() {
            // No driver: the context cannot be made, and nothing is bound.
            Err(expected) => {
                assert_eq!(context.enter(Device::cuda(0)), Err(expected));
                assert!(context.bound.is_none());
            }
            // A device: its context is bound, and another device is refused.
            Ok(count) => {
                assert_eq!(context.enter(Device::cuda(0)), Ok(MemoryType::Cuda));
                assert_eq!(context.enter(Device::cuda(0)), Ok(MemoryType::Cuda));
                assert_eq!(
                    context.enter(Device::cuda(count)),
                    Err(Error::UnsupportedDevice {
                        device: Device::cuda(count),
                        backend: NAME,
                    })
                );
            }
        }
    }
}
