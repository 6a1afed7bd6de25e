//! What a transport provides (SPEC §8).
//!
//! A backend is a provider behind two small traits: [`Backend`] (one per Connector) and
//! [`Peer`] (a connected remote endpoint, cached by the backend). Each operation's moving part
//! is a [`Transfer`], which the operation drives with [`Transfer::poll_event`] and ends with
//! [`Transfer::cancel`].
//!
//! Memory is lent to a backend only inside those calls: when posting (`expose`, `post`), on
//! every poll and on cancel. Backends that move host bytes themselves (sim, tcp) copy or serve
//! them there; backends whose hardware reads memory directly (nixl, ucx) use the addresses, and
//! must have stopped all access when `cancel` returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::descriptor::{Descriptor, Region};
use crate::device::{Device, DeviceKind};
use crate::error::Error;
use crate::key::NotificationKey;
use crate::metadata::{EndpointBlob, RdmaMetadata};
use crate::state::Event;
use crate::status::OperationKind;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend can do, for validation, for `ferry probe` and for conformance opt-outs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's name, as in metadata tags (`sim`, `tcp`, `ucx`, `nixl`).
    pub backend: &'static str,
    /// The memory kinds it can move.
    pub devices: Vec<DeviceKind>,
    /// The memory kinds of a peer's descriptors it can pair with. The same as `devices` where
    /// this side's transport touches the peer's memory (RDMA, CMA, CUDA IPC: the local side
    /// needs what reaching it takes); every kind where the peer moves its own memory (tcp,
    /// whose peer stages device memory through its own host buffers, so a host-only build
    /// reads a GPU worker's readable).
    pub remote_devices: Vec<DeviceKind>,
    /// Whether a passive operation sees its peer start (and so reports `InProgress`).
    pub passive_observes_start: bool,
    /// Whether a passive operation sees its peer vanish (and ends `Errored(PeerLost)`).
    pub passive_observes_peer_loss: bool,
    /// Whether ending a passive operation is enforced: a peer holding its metadata gets an
    /// error, never a byte. False where revocation rests on deregistration that a live
    /// registration can outlast (SPEC §7, §9).
    pub enforces_revocation: bool,
    /// Whether two Connectors on different hosts can pair.
    pub cross_host: bool,
    /// Whether operations move bytes only while their owners poll them (await
    /// `wait_for_completion` or call `status`), on both sides. True for tcp, whose safe code
    /// cannot lend borrowed memory to a background task; false where hardware, or a copy made
    /// when posting, moves the bytes on its own.
    pub progress_needs_polling: bool,
}

impl Capabilities {
    /// Whether the backend can reach memory on `device`.
    pub fn reaches(&self, device: Device) -> bool {
        self.devices.contains(&device.kind())
    }

    /// Whether the backend can pair with a peer's memory on `device`.
    pub fn reaches_remote(&self, device: Device) -> bool {
        self.remote_devices.contains(&device.kind())
    }
}

/// A backend's handle for one registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrationId(pub u64);

/// A passive operation, exposed.
pub struct Exposed {
    /// The endpoint blob for the metadata's `nixl_metadata` field.
    pub endpoint: EndpointBlob,
    /// The moving part.
    pub transfer: Box<dyn Transfer>,
}

/// One transport, one per Connector.
pub trait Backend: Send + Sync + 'static {
    /// What it can do.
    fn capabilities(&self) -> &Capabilities;

    /// A fresh notification key. Real transports draw 122 bits from the operating system; the
    /// simulator draws them from its seeded generator so runs replay.
    fn new_key(&self) -> NotificationKey;

    /// Registers (pins) a region for transfers. Called before a region is exposed or posted,
    /// unless a live registration already covers it.
    fn register(&self, region: Region) -> Result<RegistrationId, Error>;

    /// Ends a registration.
    fn deregister(&self, id: RegistrationId);

    /// Exposes local memory to a peer under `key`: a readable (`kind == Read`) or a writable.
    /// With a `deadline`, a backend that mediates access ends the operation then (revoking
    /// access) even if its owner is not polling; the operation's own timer is the backstop.
    fn expose<'a>(
        &'a self,
        kind: OperationKind,
        key: NotificationKey,
        local: &'a [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Exposed, Error>>;

    /// Connects to the peer an endpoint blob names. Backends cache peers by identity and never
    /// reconnect per operation.
    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>>;

    /// A future that is ready after `duration` of the backend's clock (virtual in the
    /// simulator). Deadlines are built on it.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// A connected peer.
pub trait Peer: Send + Sync {
    /// Posts a read (`kind == Read`: pull `remote` into `local`) or a write (push `local` into
    /// `remote`), eagerly, with the completion notification to follow the data. Validation has
    /// already run. `deadline` as for [`Backend::expose`].
    fn post<'a>(
        &'a self,
        kind: OperationKind,
        remote: &'a RdmaMetadata,
        local: &'a mut [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Box<dyn Transfer>, Error>>;
}

/// The moving part of one operation.
pub trait Transfer: Send {
    /// Drives the transfer. Returns the next event for the state machine —
    /// [`Event::PeerStarted`], [`Event::Completed`], [`Event::PeerCancelled`] or
    /// [`Event::Failed`] — or `Pending` after arranging for `cx`'s waker to be woken (never by
    /// sleeping in a loop). `local` is the operation's memory; a backend that lands bytes
    /// itself does so here, and reports `Completed` only once every byte is in `local`.
    ///
    /// A poll whose waker is [`crate::spin::glance`] comes from `Operation::status`: it must
    /// return without waiting, after at most one look at the transport.
    fn poll_event(&mut self, cx: &mut Context<'_>, local: &mut [Descriptor<'_>]) -> Poll<Event>;

    /// Cancels: an active transfer tells its peer (SPEC §5), a passive one revokes access.
    /// When this returns the backend no longer touches `local`. Never called after a terminal
    /// event has been returned by `poll_event`.
    ///
    /// Cancel can race completion. If the transfer had already reached a terminal event that
    /// `poll_event` has not yet returned, `cancel` returns it instead of cancelling (so each
    /// operation gets exactly one terminal state); a passive transfer that returns
    /// [`Event::Completed`] here has landed every byte in `local` first. It never posts a new
    /// transfer.
    fn cancel(&mut self, local: &mut [Descriptor<'_>]) -> Option<Event>;
}
