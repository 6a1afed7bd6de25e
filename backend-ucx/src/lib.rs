//! ferry-backend-ucx: ferry's UCX backend, [`UcxBackend`], over UCP bindings generated at
//! build time against the system's UCX (Debian's `libucx-dev`, UCX 1.13), in three layers:
//!
//! ```text
//!  UcxBackend  ferry_core::Backend: a progress thread owns one context + worker (backend.rs)
//!    │
//!  safe    Context, Worker, MemRegion, Endpoint, RemoteKey, WorkerAddress, Request (RAII)
//!    │
//!  result  one unsafe fn per UCP call, ucs_status_t → Error, UCS_PTR_* request pointers
//!    │
//!  sys     raw bindgen output (OUT_DIR), only the allowlisted ucp_/ucs_ items
//! ```
//!
//! A passive operation's metadata carries a `ferry-ucx/1:b64:…` blob ([`blob`]): the worker's
//! address and the packed remote keys of the registrations covering its descriptors. The
//! active side connects once per peer worker (cached; `UCP_ERR_HANDLING_MODE_PEER` unless
//! [`ErrorHandling`] says otherwise), gets or
//! puts every descriptor, flushes the endpoint and then sends the notification key as an
//! active message; see [`UcxBackend`]'s module docs for ordering, cancellation, what each side
//! observes, and revocation (not enforced).
//!
//! # Not in one process with NIXL
//! This crate links the system's `libucp`/`libucs` at build time. NIXL's UCX plugin loads the
//! UCX 1.23 inside its wheel; in a process that already has the system `libucs`, loading it
//! aborts in `ucs_init` (`Assertion '!ucs_debug_initialized' failed`, observed with NIXL
//! 1.5.1). So ferry-backend-nixl refuses to start in a process whose global scope already
//! holds a UCX (its `library::UCX_CONFLICT`), and ferry's `ucx` feature is not a default.
//!
//! # Building without UCX
//! `build.rs` runs `pkg-config --cflags --libs ucx` and bindgen. Where UCX or libclang is
//! missing (or `FERRY_UCX_DISABLE=1` is set) it warns and builds the same [`safe`] API without
//! any UCX: [`safe::Context::new`] returns [`Error::NotInstalled`], and since every other type
//! is made from a context, none can exist. The `sys` and `result` modules exist only with UCX.
//! `scripts/install-ucx.sh` installs `libucx-dev`, `ucx-utils` and `pkg-config`.
//!
//! # Configuration
//! UCX reads its own environment (`UCX_TLS`, `UCX_NET_DEVICES`, ...) in `ucp_config_read`;
//! nothing here overrides it. On one host with loopback only, `UCX_NET_DEVICES=lo` keeps
//! connection set-up on `tcp/lo`. [`transports()`] reports which transports that enabled and
//! which UCX selects for the backend's endpoints (`ferry probe` shows it).
//!
//! # Example
//! ```
//! use ferry_backend_ucx::safe::{Context, ContextOptions};
//!
//! match Context::new(&ContextOptions::default()) {
//!     Ok(context) => {
//!         let worker = context.create_worker().expect("worker");
//!         assert!(!worker.address().expect("address").as_bytes().is_empty());
//!     }
//!     Err(ferry_backend_ucx::Error::NotInstalled { .. }) => println!("built without UCX"),
//!     Err(other) => panic!("{other}"),
//! }
//! ```
#![warn(missing_docs)]

mod backend;
pub mod blob;
mod config;
mod error;
mod transports;
pub use backend::{available, available_with, UcxBackend, UcxStats, DRAIN};
pub use blob::NAME;
pub use config::{ErrorHandling, UcxConfig};
pub use error::Error;
pub use transports::{transports, Lane, Transports};

#[cfg(not(ferry_ucx_missing))]
pub mod result;
#[cfg(not(ferry_ucx_missing))]
pub mod safe;
#[cfg(not(ferry_ucx_missing))]
pub mod sys;

#[cfg(ferry_ucx_missing)]
#[path = "safe_missing.rs"]
pub mod safe;

/// Whether this build has UCX (the build script found it with `pkg-config`).
pub const UCX_BUILT: bool = cfg!(not(ferry_ucx_missing));
