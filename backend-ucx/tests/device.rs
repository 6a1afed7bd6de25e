//! Device memory on the ucx backend, tested without a GPU (these run everywhere): what UCX
//! says its context can handle, the configuration ferry reads to decide, and the refusal of
//! device memory, before any operation exists, where the backend cannot move it. Round trips
//! of device memory (which need a GPU and a CUDA-enabled UCX) are in `ferry/tests/ucx_cuda.rs`.
//!
//! ```text
//! cargo test -p ferry-backend-ucx --test device [--features cuda] -- --nocapture
//! ```

use std::path::PathBuf;

use ferry_backend_ucx::safe::{self, Context, ContextOptions, MemoryType};
use ferry_backend_ucx::UcxBackend;
use ferry_core::{validate_passive, Backend, Device, Error, OperationKind, Region};

/// A context, or `None` (with the skip line printed) where this build has no UCX.
fn context() -> Option<Context> {
    match Context::new(&ContextOptions { wakeup: true }) {
        Ok(context) => Some(context),
        Err(ferry_backend_ucx::Error::NotInstalled { reason }) => {
            println!("skipped: UCX not installed ({reason})");
            None
        }
        Err(other) => panic!("ucp_init: {other}"),
    }
}

/// The folder UCX loads its transport modules from: `ucx/` beside the `libucs` this process
/// mapped (UCX's module search path, `${libdir}/ucx`).
fn module_folder() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let library = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            std::path::Path::new(path)
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libucs.so"))
        })?;
    Some(std::path::Path::new(library).parent()?.join("ucx"))
}

/// UCX reports CUDA memory only where its cuda transport module is installed; host memory
/// always. With Debian's UCX 1.13 (no `libuct_cuda`) CUDA is never reported.
#[test]
fn the_context_reports_cuda_memory_only_with_a_cuda_module() {
    let Some(context) = context() else { return };
    assert_eq!(context.supports(MemoryType::Host), Ok(true));
    let cuda = context
        .supports(MemoryType::Cuda)
        .expect("ucp_context_query");
    let folder = module_folder().expect("libucs is mapped into this process");
    let module = std::fs::read_dir(&folder)
        .map(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.starts_with("libuct_cuda.so"))
            })
        })
        .unwrap_or(false);
    let (major, minor, release) = safe::version();
    println!(
        "UCX {major}.{minor}.{release}: modules in {}, cuda module: {module}, CUDA memory: {cuda}",
        folder.display()
    );
    assert!(
        !cuda || module,
        "UCX reports CUDA memory without a cuda module in {}",
        folder.display()
    );
}

/// The settings ferry reads are UCX's own: `UCX_PROTO_ENABLE` as the environment sets it,
/// else UCX's default for its version (`n` before 1.16, `y` from then on).
#[test]
fn the_configuration_is_what_ucx_reads() {
    if context().is_none() {
        return;
    }
    let settings = safe::configuration().expect("ucp_config_print");
    let value = |name: &str| {
        settings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert!(value("TLS").is_some(), "no TLS among {settings:?}");
    let proto = value("PROTO_ENABLE").expect("UCX 1.13 to 1.22 have UCX_PROTO_ENABLE");
    let yes = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "y" | "yes" | "on" | "1");
    match std::env::var("UCX_PROTO_ENABLE") {
        Ok(set) => assert_eq!(yes(&proto), yes(&set), "UCX_PROTO_ENABLE={set}: {proto}"),
        Err(_) => {
            let (major, minor, _) = safe::version();
            let default = (major, minor) >= (1, 16);
            assert_eq!(
                yes(&proto),
                default,
                "UCX {major}.{minor}'s default: {proto}"
            );
        }
    }
}

/// A backend lists CUDA memory exactly when it says it can move it; where it cannot, SPEC §4's
/// check and its own registration refuse a device region with `UnsupportedDevice`, naming
/// the device and the backend (a device descriptor needs a CUDA context, which this machine
/// cannot make, so the refusal is checked on the region such a descriptor describes).
#[test]
fn device_memory_is_refused_where_the_backend_cannot_move_it() {
    let backend = match UcxBackend::new() {
        Ok(backend) => backend,
        Err(Error::BackendUnavailable { reason, .. }) => {
            println!("skipped: {reason}");
            return;
        }
        Err(other) => panic!("{other}"),
    };
    let support = backend.cuda_support();
    let capabilities = backend.capabilities();
    assert_eq!(capabilities.reaches(Device::cuda(0)), support.is_ok());
    assert!(capabilities.reaches(Device::cpu()));
    let reason = match support {
        Ok(()) => {
            println!(
                "skipped: this backend moves CUDA memory here (the refusal needs a host without)"
            );
            return;
        }
        Err(reason) => reason,
    };
    println!("device memory refused: {reason}");
    if cfg!(not(feature = "cuda")) {
        assert!(reason.contains("without its `cuda` feature"), "{reason}");
    }
    let region = Region {
        addr: 0x7f00_0000_0000,
        len: 4096,
        device: Device::cuda(0),
    };
    let refused = Err(Error::UnsupportedDevice {
        device: Device::cuda(0),
        backend: "ucx",
    });
    for kind in [OperationKind::Read, OperationKind::Write] {
        assert_eq!(
            validate_passive(kind, capabilities, &[region], &[true]),
            refused
        );
    }
    assert_eq!(backend.register(region).map(|_| ()), refused);
    assert_eq!(backend.stats().registrations, 0);
}

/// With the `cuda` feature on a host whose UCX has no cuda transports (Debian's), the reason
/// names UCX, not CUDA: the check asks UCX first.
#[cfg(feature = "cuda")]
#[test]
fn the_reason_names_what_is_missing() {
    let Some(context) = context() else { return };
    let backend = UcxBackend::new().expect("a backend where a context can be made");
    match (context.supports(MemoryType::Cuda), backend.cuda_support()) {
        (Ok(false), Err(reason)) => {
            assert!(reason.contains("cannot handle CUDA memory"), "{reason}")
        }
        (Ok(false), Ok(())) => panic!("no CUDA memory type, yet the backend moves device memory"),
        (Ok(true), outcome) => println!("UCX handles CUDA memory here: {outcome:?}"),
        (Err(e), _) => panic!("ucp_context_query: {e}"),
    }
}
