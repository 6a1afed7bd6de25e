//! Operation kinds and statuses, with Dynamo's numbering.

use std::fmt;

/// Which pairing an operation belongs to.
///
/// The numbering is Dynamo's `OperationKind` and is what travels in
/// [`RdmaMetadata::operation_kind`](crate::RdmaMetadata): `1` is a readable (paired with a
/// read), `2` a writable (paired with a write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OperationKind {
    /// A read pulls from a peer's readable.
    Read = 1,
    /// A write pushes into a peer's writable.
    Write = 2,
}

impl OperationKind {
    /// The wire value (`1` or `2`).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The kind for a wire value, if it is one.
    pub const fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(OperationKind::Read),
            2 => Some(OperationKind::Write),
            _ => None,
        }
    }

    /// The passive operation of this kind, as a word.
    pub const fn passive_name(self) -> &'static str {
        match self {
            OperationKind::Read => "readable",
            OperationKind::Write => "writable",
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperationKind::Read => "read",
            OperationKind::Write => "write",
        })
    }
}

/// The status of an operation: Dynamo's six values, same numbering.
///
/// `Complete`, `Cancelled` and `Errored` are terminal and sticky.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OperationStatus {
    /// Not yet set up.
    Uninitialized = 0,
    /// A passive operation whose memory is exposed and whose metadata is ready.
    Initialized = 1,
    /// Bytes may be moving.
    InProgress = 2,
    /// Every byte landed and the peer was notified.
    Complete = 3,
    /// Cancelled by either side.
    Cancelled = 4,
    /// Failed: peer lost, transport error or deadline passed.
    Errored = 5,
}

impl OperationStatus {
    /// Whether no event can move this status any more.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            OperationStatus::Complete | OperationStatus::Cancelled | OperationStatus::Errored
        )
    }
}

impl fmt::Display for OperationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperationStatus::Uninitialized => "uninitialized",
            OperationStatus::Initialized => "initialized",
            OperationStatus::InProgress => "in progress",
            OperationStatus::Complete => "complete",
            OperationStatus::Cancelled => "cancelled",
            OperationStatus::Errored => "errored",
        })
    }
}
