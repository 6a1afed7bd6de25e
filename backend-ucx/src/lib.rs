//! ferry-backend-ucx: ferry's UCX backend, [`UcxBackend`], over UCP bindings generated at
//! build time against the system's UCX (Debian's `libucx-dev`, UCX 1.13), in three layers:
//!
//! ```text
//!  UcxBackend  ferry_core::Backend: one context + worker, owners and a thread drive it
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
//! # Device memory (the `cuda` feature)
//! With `cuda`, a backend also moves CUDA device memory (`Descriptor::from_cuda_slice` and
//! friends), where [`UcxBackend::cuda_support`] says it can, checked once when it starts:
//! - UCX handles CUDA memory: `ucp_context_query` lists `UCS_MEMORY_TYPE_CUDA` among the
//!   context's memory types. That needs a UCX built with CUDA whose cuda transports
//!   (`libuct_cuda`) are installed and enabled by `UCX_TLS`. **Debian's UCX 1.13 ships
//!   none** (its `libucx0` has only the cma, ib and rdmacm modules), so with it device memory
//!   is always refused; a CUDA-enabled UCX with the same sonames (PyPI's `libucx-cu12`, UCX
//!   1.22, say) on `LD_LIBRARY_PATH` is used instead at run time.
//! - UCX's protocols honour a local buffer's memory type: UCX's v1 protocols, its default
//!   before 1.16 (`UCX_PROTO_ENABLE=n`), take every get's and put's local buffer for host
//!   memory; the effective setting is read with `ucp_config_print`.
//! - A CUDA driver and device are present (`ferry_core::cuda::device_count`).
//!
//! Otherwise the capabilities list host memory only and validation refuses device
//! descriptors with `UnsupportedDevice` before any operation exists. Where it can, device
//! regions are mapped with `UCS_MEMORY_TYPE_CUDA` (`UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE`), gets
//! and puts from device memory name their memory type (`UCP_OP_ATTR_FIELD_MEMORY_TYPE`), so
//! UCX picks its GPU paths (cuda_ipc, cuda_copy, GPUDirect RDMA where the hardware has it),
//! and the progress thread makes the memory's device context current first, as UCX's cuda
//! transports need (NIXL does the same): one backend serves one device, and memory of another
//! device is `UnsupportedDevice`. Before UCX touches device memory the descriptors' CUDA
//! streams are synchronised, so it sees what the caller's kernels wrote. **Not verified on a
//! GPU yet.**
//!
//! # Configuration
//! UCX reads its own environment (`UCX_TLS`, `UCX_NET_DEVICES`, ...) in `ucp_config_read`;
//! nothing here overrides it. [`UcxBackend::new`] and [`available`] take ferry's own settings
//! from [`UcxConfig::from_env`] (`FERRY_UCX_ERROR_HANDLING`: `peer`, the default,
//! `peer-if-supported` or `none`). UCX's log goes to standard error, not to UCX's default,
//! standard output, unless `UCX_LOG_FILE` is set ([`safe::log_to_stderr`]). On one host with loopback only, `UCX_NET_DEVICES=lo` keeps
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
pub use config::{ErrorHandling, UcxConfig, ERROR_HANDLING_VAR};
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
