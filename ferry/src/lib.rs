//! ferry moves tensors, embeddings and KV-cache blocks between the workers of a distributed
//! inference graph (encode → prefill → decode), with the API NVIDIA Dynamo ships in Python as
//! `dynamo.nixl_connect`, over pluggable transports.
//!
//! ```text
//!  prefill worker                                decode worker
//!  ──────────────                                ─────────────
//!  create_readable(kv blocks) ──metadata (JSON, out of band)──▶ begin_read(&metadata, bufs)
//!  wait_for_completion() ◀──────── notification key ─────────── wait_for_completion()
//! ```
//!
//! - [`Connector`]: a worker's handle on one backend; makes operations.
//! - [`Descriptor`]: a view of local memory; operations borrow it for `'buf`.
//! - [`ReadableOperation`], [`WritableOperation`] (passive: expose memory, hand out
//!   [`RdmaMetadata`]) and [`ReadOperation`], [`WriteOperation`] (active: move the bytes).
//! - [`OperationStatus`]: Dynamo's six states. `wait_for_completion` is `Ok` only when every
//!   byte landed; a cancelled transfer never looks like success.
//!
//! Backends are chosen with Cargo features (`sim` by default) and at run time by
//! [`Connector::auto`]; [`probe`] says what this build and machine offer.
//!
//! ```
//! use ferry::{Connector, Descriptor, RdmaMetadata};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferry::Error> {
//! let prefill = Connector::auto().await?;
//! let decode = Connector::auto().await?;
//!
//! let kv = vec![42u8; 1 << 20];
//! let mut readable = prefill.create_readable([Descriptor::from_slice(&kv)]).await?;
//! let json = readable.metadata().to_json(); // send it to the peer: HTTP, NATS, a queue
//!
//! let mut landing = vec![0u8; 1 << 20];
//! let metadata = RdmaMetadata::from_json(&json)?;
//! let mut read = decode.begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)]).await?;
//! // Both workers await their own operation; in one process, await both at once.
//! tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion())?;
//! drop(read);
//! assert_eq!(landing, kv);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auto;
mod connector;
pub mod demo;
pub mod kv;
mod operation;

pub use auto::{
    probe, BackendProbe, Probe, SelectedTransport, Transports, BACKEND_ENV, PREFERENCE,
};
pub use connector::{Connector, ConnectorBuilder, ConnectorStats, Registration};
pub use ferry_core::{
    Backend, Capabilities, Descriptor, Device, DeviceKind, EndpointBlob, Error, NotificationKey,
    OperationKind, OperationStatus, RdmaMetadata, Region, RemoteDescriptor, Side,
};
pub use operation::{
    kind, Operation, ReadOperation, ReadableOperation, WritableOperation, WriteOperation,
};

/// The core crate, for backend authors.
pub use ferry_core as core;

/// CUDA detection and cudarc (the `cuda` feature): device memory is described with
/// [`Descriptor::from_cuda_slice`] and friends, over `cuda::cudarc` types.
#[cfg(feature = "cuda")]
pub use ferry_core::cuda;

/// The in-memory simulator backend.
#[cfg(feature = "sim")]
pub mod sim {
    pub use ferry_backend_sim::*;

    use std::sync::OnceLock;

    /// The world `Connector::auto()` puts sim Connectors in, so every sim Connector of this
    /// process can pair with every other. Seeded from `FERRY_SIM_SEED` if set, else 0.
    pub fn default_world() -> SimWorld {
        static WORLD: OnceLock<SimWorld> = OnceLock::new();
        WORLD
            .get_or_init(|| {
                let seed = std::env::var("FERRY_SIM_SEED")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                SimWorld::new(seed)
            })
            .clone()
    }
}

/// The TCP backend.
#[cfg(feature = "tcp")]
pub mod tcp {
    pub use ferry_backend_tcp::*;
}

/// The NIXL backend.
#[cfg(feature = "nixl")]
pub mod nixl {
    pub use ferry_backend_nixl::*;
}

/// The UCX backend.
#[cfg(feature = "ucx")]
pub mod ucx {
    pub use ferry_backend_ucx::*;
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
