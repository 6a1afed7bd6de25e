//! Finding and loading `libnixl_capi.so` before the first NIXL call.
//!
//! nixl-sys's `stub-api` resolves every NIXL function through `dlopen("libnixl_capi.so")` and
//! **aborts the process** when that fails. So this module loads the library first, by absolute
//! path where it can find one, with `RTLD_GLOBAL`: the stub's later `dlopen` by name then finds
//! the library already loaded (glibc matches loaded objects by soname) and never aborts. When
//! no library can be loaded, [`load`] returns the reason and the backend reports
//! `BackendUnavailable` without calling NIXL at all.
//!
//! Search order (the first folder holding `libnixl_capi.so` wins):
//! 1. [`NixlConfig::library_dir`](crate::NixlConfig::library_dir), when set;
//! 2. `$FERRY_NIXL_LIB_DIR`;
//! 3. `$FERRY_NIXL_HOME/.nixl_cu12.mesonpy.libs` (the unpacked `nixl-cu12` wheel);
//! 4. `~/.cache/ferry/nixl-cu12-1.5.1/.nixl_cu12.mesonpy.libs`, where
//!    `scripts/install-nixl.sh` unpacks it by default;
//! 5. the dynamic loader's own search by name (`LD_LIBRARY_PATH`, the system folders);
//! 6. `/opt/nvidia/nvda_nixl/lib/x86_64-linux-gnu` and `/opt/nvidia/nvda_nixl/lib64`, where
//!    NIXL's own installer puts it.
//!
//! A process that already has a UCX in its global scope (it links the system's `libucp`, as
//! `ferry-backend-ucx` does) gets [`UCX_CONFLICT`] instead: NIXL's UCX plugin would bind to
//! that UCX rather than the wheel's and abort on an assertion.
//!
//! # The crash at exit, and its containment
//! The wheel bundles UCX and its own copies of `libibverbs` and `libnl`, but its UCX EFA
//! transport module (`libuct_ib_efa.so`) links the system's `libefa`. Where rdma-core's
//! providers are installed (every RDMA host; here, once `libucx-dev` is), loading that module
//! brings the system's `libibverbs`, `libnl-3` and `libnl-route-3` into the process beside the
//! wheel's copies, and at exit the wheel's `libnl-route` destructor crashes
//! (`rtnl_tc_unregister`, SIGSEGV after `main` returns: every test passed, the process still
//! died). That is the intermittent teardown segfault seen with these libraries: it follows
//! whether `libefa` is installed, not timing. A host without EFA devices has no use for that
//! module, so before NIXL is first loaded, [`load`] sets `UCX_MODULES=^*efa*` (UCX then skips
//! it) unless `UCX_MODULES` is already set or an EFA device exists; child processes started
//! afterwards (a Python Dynamo worker, say) inherit the setting. On a host with EFA devices the
//! module loads and the crash at exit can happen: the fix belongs in the wheel (bundling
//! `libefa`, or linking the module against its own `libibverbs`).
//!
//! # UCX's log goes to standard error
//! The wheel's UCX prints its log on standard output unless `UCX_LOG_FILE` says otherwise
//! (seen: `ferry probe` under `UCX_TLS=tcp,bogus` printed UCX's `transport 'bogus' is not
//! available` warning among its own output). A process may use standard output as a data
//! channel (a benchmark's peer speaking JSON lines, a backend host of the conformance suite
//! speaking its protocol), so before NIXL is first loaded [`load`] sets `UCX_LOG_FILE=stderr`
//! unless `UCX_LOG_FILE` is already set, as ferry-backend-ucx sends the system UCX's log to
//! standard error. Child processes started afterwards inherit the setting.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The library's file name.
pub const LIBRARY: &str = "libnixl_capi.so";

/// The wheel version `scripts/install-nixl.sh` installs by default.
pub const WHEEL_VERSION: &str = "1.5.1";

/// What to tell a user whose machine has no NIXL.
pub const INSTALL_HINT: &str =
    "run scripts/install-nixl.sh (it unpacks PyPI's nixl-cu12 wheel into ~/.cache/ferry), or \
     set FERRY_NIXL_LIB_DIR to a folder holding libnixl_capi.so";

const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlerror() -> *const c_char;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's `RTLD_DEFAULT`: look a symbol up in the process's global scope.
const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

/// Why NIXL cannot run in a process whose global scope already holds a UCX.
pub const UCX_CONFLICT: &str =
    "this process already links a UCX of its own (the system's libucp, e.g. through \
     ferry-backend-ucx); NIXL's UCX plugin would bind to it instead of the wheel's UCX and \
     abort (ucs_debug_initialized assertion), so NIXL is not started here";

/// Whether a UCX is in the process's global scope before NIXL loaded one: NIXL's plugin would
/// resolve UCX's symbols to it, a different version, and abort.
fn ucx_already_loaded() -> bool {
    let symbol = c"ucp_init_version";
    // SAFETY: a lookup by a valid NUL-terminated name in the global scope; the result is only
    // compared with null, never called.
    !unsafe { dlsym(RTLD_DEFAULT, symbol.as_ptr()) }.is_null()
}

/// Where the library was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// This file.
    Path(PathBuf),
    /// By name, through the dynamic loader's search.
    ByName,
}

/// The folders searched, in order, given an explicit folder from the configuration.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    dirs.extend(explicit.map(Path::to_path_buf));
    if let Some(dir) = std::env::var_os("FERRY_NIXL_LIB_DIR") {
        dirs.push(dir.into());
    }
    if let Some(home) = std::env::var_os("FERRY_NIXL_HOME") {
        dirs.push(PathBuf::from(home).join(".nixl_cu12.mesonpy.libs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(
            PathBuf::from(home)
                .join(".cache/ferry")
                .join(format!("nixl-cu12-{WHEEL_VERSION}"))
                .join(".nixl_cu12.mesonpy.libs"),
        );
    }
    dirs
}

const SYSTEM_DIRS: [&str; 2] = [
    "/opt/nvidia/nvda_nixl/lib/x86_64-linux-gnu",
    "/opt/nvidia/nvda_nixl/lib64",
];

fn open(name: &CStr) -> Result<(), String> {
    // SAFETY: `name` is a valid NUL-terminated string. dlopen runs the library's initialisers,
    // which is what loading NIXL means; the handle is deliberately never closed, so symbols the
    // stub resolves from it stay valid for the life of the process.
    let handle = unsafe { dlopen(name.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the loader, valid until
    // the next dl* call on this thread; it is copied at once.
    let message = unsafe { dlerror() };
    Err(if message.is_null() {
        "dlopen failed".to_owned()
    } else {
        // SAFETY: non-null, NUL-terminated, see above.
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    })
}

/// The `UCX_MODULES` value that keeps UCX's EFA module out (see the module docs), or `None`
/// where it should load: the user set `UCX_MODULES`, or the host has an EFA device.
fn ucx_modules() -> Option<&'static str> {
    if std::env::var_os("UCX_MODULES").is_some() || has_efa_device() {
        return None;
    }
    Some("^*efa*")
}

/// Whether an RDMA device here is driven by `efa` (AWS's Elastic Fabric Adapter).
fn has_efa_device() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/class/infiniband") else {
        return false;
    };
    devices.flatten().any(|device| {
        std::fs::read_link(device.path().join("device/driver"))
            .is_ok_and(|driver| driver.file_name().is_some_and(|name| name == "efa"))
    })
}

/// The `UCX_LOG_FILE` value that sends the wheel's UCX log to standard error (see the module
/// docs), or `None` where the user set `UCX_LOG_FILE`.
fn ucx_log_file() -> Option<&'static str> {
    std::env::var_os("UCX_LOG_FILE")
        .is_none()
        .then_some("stderr")
}

fn load_once(explicit: Option<&Path>) -> Result<Loaded, String> {
    if ucx_already_loaded() {
        return Err(UCX_CONFLICT.to_owned());
    }
    // Before NIXL, and so UCX, is loaded: libucs reads its global options once, when it is
    // loaded. No other code of this process reads UCX_MODULES or UCX_LOG_FILE.
    if let Some(modules) = ucx_modules() {
        std::env::set_var("UCX_MODULES", modules);
    }
    if let Some(log_file) = ucx_log_file() {
        std::env::set_var("UCX_LOG_FILE", log_file);
    }
    let mut tried = Vec::new();
    let by_path = |dir: &Path, tried: &mut Vec<String>| -> Option<Loaded> {
        let file = dir.join(LIBRARY);
        if !file.is_file() {
            return None;
        }
        let name = CString::new(file.as_os_str().as_encoded_bytes()).ok()?;
        match open(&name) {
            Ok(()) => Some(Loaded::Path(file)),
            Err(e) => {
                tried.push(e);
                None
            }
        }
    };
    for dir in candidates(explicit) {
        if let Some(loaded) = by_path(&dir, &mut tried) {
            return Ok(loaded);
        }
    }
    let name = CString::new(LIBRARY).expect("the library name has no NUL");
    match open(&name) {
        Ok(()) => return Ok(Loaded::ByName),
        Err(e) => tried.push(e),
    }
    for dir in SYSTEM_DIRS {
        if let Some(loaded) = by_path(Path::new(dir), &mut tried) {
            return Ok(loaded);
        }
    }
    Err(format!(
        "{LIBRARY} could not be loaded ({}); {INSTALL_HINT}",
        tried.join("; ")
    ))
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

/// Loads the NIXL C API library once per process; every later call returns the first result
/// (a process loads one NIXL). `explicit` is the configured folder, searched first.
pub fn load(explicit: Option<&Path>) -> Result<&'static Loaded, &'static str> {
    LOADED
        .get_or_init(|| load_once(explicit))
        .as_ref()
        .map_err(String::as_str)
}
