//! ferry's typed errors.

use std::fmt;

use crate::device::Device;
use crate::status::OperationKind;

/// Which side of a transfer an error or a cancellation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This worker: its descriptors, its operation, its backend.
    Local,
    /// The peer: its metadata, its operation, its process.
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "local",
            Side::Remote => "remote",
        })
    }
}

/// Every way a ferry call can fail.
///
/// Grouped by whose fault it is: the caller's (the first group, raised before any byte moves),
/// the peer's, or the backend's. "Still in progress" is a status, never an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- caller misuse, raised before any byte moves (SPEC §4) ----
    /// A read was begun on writable metadata, or a write on readable metadata.
    #[error("operation kind mismatch: expected {} metadata, found {}", expected.passive_name(), found.passive_name())]
    KindMismatch {
        /// The kind the active operation needs.
        expected: OperationKind,
        /// The kind the metadata describes.
        found: OperationKind,
    },
    /// A descriptor list was empty.
    #[error("the {side} descriptor list is empty")]
    EmptyDescriptors {
        /// Which list.
        side: Side,
    },
    /// The two descriptor lists have different lengths.
    #[error("descriptor count mismatch: {local} local, {remote} remote")]
    CountMismatch {
        /// Local count.
        local: usize,
        /// Remote count.
        remote: usize,
    },
    /// Descriptor `index` has different sizes on the two sides.
    #[error("descriptor {index} size mismatch: {local} bytes local, {remote} bytes remote")]
    SizeMismatch {
        /// Position in both lists.
        index: usize,
        /// Local size in bytes.
        local: u64,
        /// Remote size in bytes.
        remote: u64,
    },
    /// One descriptor list spans host and device memory.
    #[error("the {side} descriptor list mixes device kinds")]
    MixedDevices {
        /// Which list.
        side: Side,
    },
    /// The metadata was made by a different backend.
    #[error("metadata from backend {found:?}, this connector uses {expected:?}")]
    BackendMismatch {
        /// This Connector's backend.
        expected: String,
        /// The backend that made the metadata.
        found: String,
    },
    /// The backend cannot reach memory on this device.
    #[error("the {backend} backend cannot reach {device} memory")]
    UnsupportedDevice {
        /// The device named by a descriptor.
        device: Device,
        /// The backend that refused it.
        backend: &'static str,
    },
    /// A descriptor over shared memory was given where the peer or the transfer must write.
    #[error("descriptor {index} is read-only but this operation writes into it")]
    ReadOnlyDescriptor {
        /// Position in the list.
        index: usize,
    },
    /// A device string that is not `cpu`, `host`, `cuda[:N]` or `gpu[:N]`.
    #[error("not a device: {text:?}")]
    InvalidDevice {
        /// The text, truncated.
        text: String,
    },
    /// Metadata that does not decode: bad JSON, a missing or unknown key, a bound exceeded.
    #[error("invalid metadata: {reason}")]
    InvalidMetadata {
        /// What was wrong.
        reason: String,
    },

    // ---- the peer ----
    /// The metadata names an operation the peer has finished, cancelled or never had.
    #[error("stale metadata: the peer has no live operation for this key")]
    StaleMetadata,
    /// The peer is gone: connection closed, endpoint error, process gone.
    #[error("peer lost: {reason}")]
    PeerLost {
        /// What was observed.
        reason: String,
    },
    /// The peer refused a request as outside what it offered (SPEC §9).
    #[error("access denied by the {side} side: {reason}")]
    AccessDenied {
        /// The side that refused.
        side: Side,
        /// Why.
        reason: String,
    },

    // ---- the operation ----
    /// The operation was cancelled; `by` says which side cancelled it.
    #[error("operation cancelled by the {by} side")]
    Cancelled {
        /// Which side cancelled.
        by: Side,
    },
    /// A `wait_for_completion_timeout` returned before the operation ended; the operation
    /// keeps its status and can be waited on again or cancelled.
    #[error("wait timed out; the operation is still live")]
    Timeout,
    /// The operation's deadline passed; it ended `Errored`.
    #[error("deadline exceeded")]
    DeadlineExceeded,

    // ---- the backend ----
    /// The backend cannot run on this machine (missing library, no device).
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why, with a hint where there is one.
        reason: String,
    },
    /// The backend failed; `code` is the backend's own code, never folded into another.
    #[error("{backend} error {code} on the {side} side: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Which side failed.
        side: Side,
        /// The backend's native code.
        code: i64,
        /// The backend's message.
        message: String,
    },
}

impl Error {
    /// Whether the caller caused this error (bad descriptors, bad metadata, wrong pairing).
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Error::KindMismatch { .. }
                | Error::EmptyDescriptors { .. }
                | Error::CountMismatch { .. }
                | Error::SizeMismatch { .. }
                | Error::MixedDevices { .. }
                | Error::BackendMismatch { .. }
                | Error::UnsupportedDevice { .. }
                | Error::ReadOnlyDescriptor { .. }
                | Error::InvalidDevice { .. }
                | Error::InvalidMetadata { .. }
        )
    }
}
