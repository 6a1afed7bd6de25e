//! Regression: a process linking the system's UCX (this crate) aborted the moment NIXL loaded
//! its UCX plugin (the plugin bound to the system's libucs: `ucs_debug_initialized`
//! assertion, SIGABRT). NIXL now refuses to start in such a process, with a typed error.

use ferry_backend_nixl::library::UCX_CONFLICT;
use ferry_backend_nixl::{NixlBackend, NixlConfig};
use ferry_backend_ucx::safe::{Context, ContextOptions};
use ferry_backend_ucx::Error;
use ferry_core::Error as FerryError;

#[test]
fn nixl_refuses_to_start_beside_the_system_ucx() {
    // Using the system UCX keeps it linked into this binary.
    match Context::new(&ContextOptions::default()) {
        Ok(_) => {}
        Err(Error::NotInstalled { .. }) => {
            println!("skipped: built without UCX, so no UCX is linked to conflict with");
            return;
        }
        Err(other) => panic!("{other}"),
    }
    assert_eq!(
        ferry_backend_nixl::available(None),
        Err(UCX_CONFLICT.to_owned())
    );
    match NixlBackend::new(NixlConfig::named("beside-ucx-1")) {
        Err(FerryError::BackendUnavailable { reason, .. }) => {
            assert!(reason.contains(UCX_CONFLICT), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("NIXL started beside the system UCX"),
    }
}
