//! ferry-core: the transport-agnostic heart of ferry.
//!
//! ferry moves tensors, embeddings and KV-cache blocks between the workers of a distributed
//! inference graph with the API of NVIDIA Dynamo's `nixl_connect`. This crate holds what every
//! transport shares and no IO at all:
//!
//! ```text
//!   ferry (facade: Connector, operations, CLI)
//!     │ drives                     ▲ events
//!     ▼                            │
//!   ferry-core ── validation (§4) ─ state tables (§3) ─ metadata JSON (§6) ─ key table
//!     ▲ implements Backend / Peer / Transfer
//!     │
//!   ferry-backend-{sim,tcp,ucx,nixl}
//! ```
//!
//! - [`Device`], [`Descriptor`], [`OperationKind`], [`OperationStatus`], [`RdmaMetadata`]: the
//!   vocabulary, with Dynamo 1.6.1's numbering and JSON.
//! - [`validate_active`] / [`validate_passive`]: SPEC §4, the one check every backend goes
//!   through, before any byte moves.
//! - [`state::transition`]: SPEC §3's tables; events in, state out.
//! - [`KeyTable`] and [`RegistrationCache`]: notification matching and registration
//!   bookkeeping.
//! - [`Settlement`]: one operation's ending, decided once between a backend thread and the
//!   operation's owner (model-checked with loom).
//! - [`Backend`], [`Peer`], [`Transfer`]: what a transport provides.
//! - With the `cuda` feature: descriptors over CUDA device memory (cudarc's safe types,
//!   borrowed like host slices; see [`Descriptor`]) and `cuda`, which says whether this
//!   machine has a usable driver and device without ever panicking when it has none. cudarc
//!   loads `libcuda` at run time, so the feature builds everywhere. Without it nothing CUDA is
//!   compiled.
//!
//! What it does not do: open sockets, spawn tasks, read clocks or touch memory through raw
//! pointers (`unsafe` is forbidden here).
//!
//! ```
//! use ferry_core::{state::{transition, Event, OpState, Role, Step}, OperationStatus};
//! let next = transition(Role::Passive, &OpState::Initialized, Event::Completed).unwrap();
//! assert_eq!(next, Step::Moved(OpState::Complete));
//! assert_eq!(OpState::Complete.status(), OperationStatus::Complete);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "cuda")]
pub mod cuda;
mod descriptor;
mod device;
mod error;
mod key;
mod keys;
mod loom;
mod metadata;
mod registration;
mod settlement;
pub mod spin;
pub mod state;
mod status;
mod validate;

pub use backend::{Backend, BoxFuture, Capabilities, Exposed, Peer, RegistrationId, Transfer};
pub use descriptor::{Descriptor, Region};
pub use device::{Device, DeviceKind};
pub use error::{Error, Side};
pub use key::{KeyPool, Notification, NotificationKey, CANCEL_SUFFIX};
pub use keys::KeyTable;
pub use metadata::{
    EndpointBlob, RdmaMetadata, RemoteDescriptor, MAX_DESCRIPTORS, MAX_METADATA_JSON,
};
pub use registration::{coalesce, CacheStats, Lease, PinTicket, RegistrationCache};
pub use settlement::{Settlement, Settler};
pub use status::{OperationKind, OperationStatus};
pub use validate::{validate_active, validate_passive};
