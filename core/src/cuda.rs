//! CUDA device memory (the `cuda` feature): whether this machine can use it, and the driver's
//! errors as ferry's.
//!
//! cudarc is built with `dynamic-loading`: nothing links `libcuda` at build or load time, and
//! the driver is opened by name (`dlopen`) on the first CUDA call. cudarc **panics** when that
//! fails. So [`device_count`] first looks for the driver library where the dynamic loader
//! would (without loading it: this crate forbids `unsafe`), and only then lets cudarc open it,
//! inside [`std::panic::catch_unwind`] as a last guard (a library that exists but does not
//! load). A machine without the driver gets a typed [`Error::BackendUnavailable`] with the
//! reason, never a panic or an abort.
//!
//! ```
//! // On a machine without CUDA this says why; with a GPU it counts the devices.
//! match ferry_core::cuda::device_count() {
//!     Ok(n) => assert!(n > 0),
//!     Err(e) => assert!(!e.to_string().is_empty()),
//! }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use cudarc;
use cudarc::driver::{CudaContext, DriverError};

use crate::error::{Error, Side};

/// The name errors from the CUDA driver carry as their backend.
pub const DRIVER: &str = "cuda";

/// The file names under which cudarc opens the driver on Linux (the first that loads wins).
pub const LIBRARY_NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Folders the dynamic loader searches besides `LD_LIBRARY_PATH` and its cache.
const SYSTEM_DIRS: [&str; 8] = [
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];

/// The loader's cache of known libraries.
const LD_CACHE: &str = "/etc/ld.so.cache";

/// Why CUDA cannot be used here, or how many devices it has; detected once per process.
static DETECTED: OnceLock<Result<u32, Error>> = OnceLock::new();

/// How many CUDA devices this process can use, or why it can use none: no driver library,
/// a driver that does not initialise (`cuInit`), or no device. Detected once and remembered.
pub fn device_count() -> Result<u32, Error> {
    DETECTED.get_or_init(detect).clone()
}

/// Whether CUDA device memory can be used here (a driver and at least one device).
pub fn available() -> bool {
    device_count().is_ok()
}

/// The primary context of device `ordinal`, after [`device_count`] has said the driver is
/// there: a missing driver or device is an error, never a panic.
pub fn context(ordinal: u32) -> Result<Arc<CudaContext>, Error> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(unavailable(format!(
            "no CUDA device {ordinal}: this machine has {count}"
        )));
    }
    guarded(|| CudaContext::new(ordinal as usize))?.map_err(|e| driver_error(&e))
}

/// Waits until the work queued on the CUDA streams of `descriptors` has finished, so that a
/// backend whose copies run outside those streams (UCX's and NIXL's own streams, an RDMA
/// NIC) reads what the caller's kernels wrote and writes nothing they still read. Host
/// descriptors need nothing; each stream is waited for once.
pub fn synchronize_streams(descriptors: &[crate::Descriptor<'_>]) -> Result<(), Error> {
    use cudarc::driver::DeviceSlice as _;
    let mut waited: Vec<usize> = Vec::new();
    for descriptor in descriptors {
        let Some(view) = descriptor.cuda_view() else {
            continue;
        };
        let stream = view.stream();
        let id = Arc::as_ptr(stream) as usize;
        if waited.contains(&id) {
            continue;
        }
        stream.synchronize().map_err(|e| driver_error(&e))?;
        waited.push(id);
    }
    Ok(())
}

/// A CUDA driver error as ferry's: [`Error::Backend`] named [`DRIVER`], with the driver's own
/// code (`CUresult`) and message.
pub fn driver_error(error: &DriverError) -> Error {
    Error::Backend {
        backend: DRIVER,
        side: Side::Local,
        code: error.0 as i64,
        message: error.to_string(),
    }
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable {
        backend: DRIVER,
        reason,
    }
}

fn detect() -> Result<u32, Error> {
    if find_library().is_none() {
        return Err(unavailable(format!(
            "no CUDA driver: none of {LIBRARY_NAMES:?} is in LD_LIBRARY_PATH, the loader's \
             cache ({LD_CACHE}) or the system library folders"
        )));
    }
    let count = guarded(CudaContext::device_count)?
        .map_err(|e| unavailable(format!("the CUDA driver does not initialise: {e}")))?;
    match u32::try_from(count) {
        Ok(0) | Err(_) => Err(unavailable("the CUDA driver reports no device".into())),
        Ok(n) => Ok(n),
    }
}

/// Runs a cudarc call that may open the driver library, turning its panic (the library is
/// there but does not load, or lacks an entry point) into an error.
fn guarded<T>(call: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, Error> {
    std::panic::catch_unwind(call).map_err(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("cudarc panicked");
        unavailable(format!("the CUDA driver library does not load: {reason}"))
    })
}

/// Where the dynamic loader would find the driver, without loading it: the folders of
/// `LD_LIBRARY_PATH`, then the loader's cache, then the system folders.
pub fn find_library() -> Option<PathBuf> {
    let env_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(found) = find_in(&env_dirs) {
        return Some(found);
    }
    if let Ok(cache) = std::fs::read(LD_CACHE) {
        if LIBRARY_NAMES
            .iter()
            .any(|name| contains_name(&cache, name.as_bytes()))
        {
            return Some(PathBuf::from(LD_CACHE));
        }
    }
    let system: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    find_in(&system)
}

fn find_in(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .filter(|d| !d.as_os_str().is_empty())
        .flat_map(|d| LIBRARY_NAMES.iter().map(move |name| d.join(name)))
        .find(|p| Path::new(p).exists())
}

/// Whether `haystack` holds `name` as a whole NUL-terminated string (how the loader's cache
/// stores library names), so `libcuda.so.1` does not match `libcuda.so.10`.
fn contains_name(haystack: &[u8], name: &[u8]) -> bool {
    haystack
        .windows(name.len() + 2)
        .any(|w| w[0] == 0 && &w[1..=name.len()] == name && w[name.len() + 1] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_match_whole() {
        let cache = b"\0libfoo.so\0libcuda.so.10\0/usr/lib/libcuda.so.10\0";
        assert!(!contains_name(cache, b"libcuda.so.1"));
        assert!(contains_name(cache, b"libcuda.so.10"));
        assert!(
            !contains_name(b"libcuda.so.1", b"libcuda.so.1"),
            "needs NULs"
        );
    }

    #[test]
    fn detection_agrees_with_the_library_search() {
        // Where no driver library exists (this project's CI), detection must say so without
        // panicking; where one exists, it must at least have been found.
        match (find_library(), device_count()) {
            (None, Err(Error::BackendUnavailable { backend, reason })) => {
                assert_eq!(backend, DRIVER);
                assert!(reason.contains("no CUDA driver"), "{reason}");
            }
            (None, other) => panic!("no library, yet detection said {other:?}"),
            (Some(_), Ok(n)) => assert!(n > 0),
            (Some(_), Err(e)) => println!("driver found but unusable: {e}"),
        }
        assert_eq!(available(), device_count().is_ok());
    }

    #[test]
    fn a_missing_device_is_an_error() {
        match context(u32::MAX) {
            Err(Error::BackendUnavailable { backend, .. }) => assert_eq!(backend, DRIVER),
            other => panic!("expected BackendUnavailable, got {other:?}"),
        }
    }
}
