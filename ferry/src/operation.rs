//! The four operations: readable, writable, read, write.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ferry_core::state::{Event, Role, StateMachine};
use ferry_core::{
    BoxFuture, Descriptor, Error, Lease, NotificationKey, OperationKind, OperationStatus,
    RdmaMetadata, Transfer,
};

use crate::connector::Inner;

/// Marker types naming the four kinds of [`Operation`].
pub mod kind {
    /// Exposes local memory for a peer to read ([`ReadableOperation`](crate::ReadableOperation)).
    #[derive(Debug)]
    pub enum Readable {}
    /// Exposes local memory for a peer to write into ([`WritableOperation`](crate::WritableOperation)).
    #[derive(Debug)]
    pub enum Writable {}
    /// Pulls from a peer's readable ([`ReadOperation`](crate::ReadOperation)).
    #[derive(Debug)]
    pub enum Read {}
    /// Pushes into a peer's writable ([`WriteOperation`](crate::WriteOperation)).
    #[derive(Debug)]
    pub enum Write {}

    /// The passive kinds, which have metadata to hand to a peer.
    pub trait Passive: sealed::Sealed {}
    impl Passive for Readable {}
    impl Passive for Writable {}

    mod sealed {
        pub trait Sealed {}
        impl Sealed for super::Readable {}
        impl Sealed for super::Writable {}
    }
}

pub(crate) use kind::{Read, Readable, Writable, Write};

/// Exposes local memory for a peer to read; completes when the peer's read notifies it.
pub type ReadableOperation<'buf> = Operation<'buf, Readable>;
/// Exposes local memory for a peer to write into; completes when the peer's write notifies it.
pub type WritableOperation<'buf> = Operation<'buf, Writable>;
/// Pulls a peer's readable into local memory.
pub type ReadOperation<'buf> = Operation<'buf, Read>;
/// Pushes local memory into a peer's writable.
pub type WriteOperation<'buf> = Operation<'buf, Write>;

/// One transfer, from one side. It borrows the memory of its descriptors for `'buf`, so that
/// memory cannot be freed or reused while the operation can still touch it.
///
/// Dropping an operation that has not ended is a cancel: it posts nothing new, tells the peer
/// where the backend can, and when the drop returns the backend no longer touches the memory.
#[must_use = "dropping an operation cancels it"]
pub struct Operation<'buf, K> {
    core: OpCore<'buf>,
    kind: PhantomData<K>,
}

impl<K> std::fmt::Debug for Operation<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("kind", &self.core.kind)
            .field("role", &self.core.machine.role())
            .field("state", self.core.machine.state())
            .field("descriptors", &self.core.descriptors.len())
            .finish()
    }
}

impl<'buf, K> Operation<'buf, K> {
    pub(crate) fn new(core: OpCore<'buf>) -> Self {
        Operation {
            core,
            kind: PhantomData,
        }
    }

    /// The current status. Never waits for the operation to end: it takes whatever events the
    /// backend has ready (landing bytes that have arrived) and returns. On the nixl and ucx
    /// backends it looks at the transport once; it does not start the polling window an
    /// awaiting owner gets.
    pub fn status(&mut self) -> OperationStatus {
        let mut cx = Context::from_waker(ferry_core::spin::glance());
        let _ = self.core.poll_progress(&mut cx);
        self.core.machine.state().status()
    }

    /// Waits until the operation ends. `Ok` only when it is `Complete` and every byte is in
    /// the destination memory; `Err(Cancelled)` or the failure otherwise. The waiting task is
    /// woken by the backend; nothing polls on a timer.
    pub async fn wait_for_completion(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.core.poll_progress(cx)).await;
        self.core.outcome()
    }

    /// Like [`Operation::wait_for_completion`], but gives up after `timeout` (on the backend's
    /// clock) with `Err(Timeout)`, leaving the operation live: wait again or cancel it.
    pub async fn wait_for_completion_timeout(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut sleep = self.core.inner.backend.sleep(timeout);
        let ended = std::future::poll_fn(|cx| match self.core.poll_progress(cx) {
            Poll::Ready(()) => Poll::Ready(true),
            Poll::Pending => sleep.as_mut().poll(cx).map(|()| false),
        })
        .await;
        if ended {
            self.core.outcome()
        } else {
            Err(Error::Timeout)
        }
    }

    /// Gives this operation its own deadline, `deadline` from now, in place of the Connector's
    /// default ([`ConnectorBuilder::deadline`](crate::ConnectorBuilder::deadline)) or an
    /// earlier call's. When it passes with the operation still live, the operation is
    /// cancelled (its peer told, where the backend can) and ends `Errored(DeadlineExceeded)`.
    /// On an operation that has ended it changes nothing.
    pub fn set_deadline(&mut self, deadline: Duration) {
        if !self.core.machine.state().status().is_terminal() {
            self.core.deadline = Some(self.core.inner.backend.sleep(deadline));
        }
    }

    /// Cancels the operation if it is still live and returns its final status. On an operation
    /// that has already ended this changes nothing (`cancel()` on `Complete` reports
    /// `Complete`); if completion won a race with the cancel, the result is `Complete` too.
    pub fn cancel(&mut self) -> OperationStatus {
        self.core.cancel();
        self.core.machine.state().status()
    }

    /// The local descriptors.
    pub fn descriptors(&self) -> &[Descriptor<'buf>] {
        &self.core.descriptors
    }

    /// Ends the operation (cancelling it if it is live) and gives back its descriptors, for
    /// example to take owned buffers back with [`Descriptor::into_vec`].
    pub fn into_descriptors(mut self) -> Vec<Descriptor<'buf>> {
        self.core.cancel();
        std::mem::take(&mut self.core.descriptors)
    }

    /// Whether this is a read or a write pairing.
    pub fn operation_kind(&self) -> OperationKind {
        self.core.kind
    }

    /// The error an operation that ended `Cancelled` or `Errored` returns, if it has ended so.
    pub fn error(&self) -> Option<Error> {
        self.core.machine.state().outcome().and_then(Result::err)
    }
}

impl<K: kind::Passive> Operation<'_, K> {
    /// What the peer needs to begin the paired operation; send it out of band
    /// (`metadata().to_json()`).
    pub fn metadata(&self) -> &RdmaMetadata {
        // Invariant: passive operations are only built with metadata (Connector::create_*).
        self.core
            .metadata
            .as_ref()
            .expect("passive operations carry metadata")
    }

    /// The key the peer's completion notification must carry.
    pub fn notification_key(&self) -> NotificationKey {
        self.metadata().notification_key
    }
}

/// The `code` of the error an operation ends with when its backend reports an ending it cannot
/// take (a backend bug, surfaced rather than hung on).
pub const INVALID_EVENT: i64 = -1;

/// What the four operations share: the state machine, the backend's transfer, the memory.
pub(crate) struct OpCore<'buf> {
    pub(crate) inner: Arc<Inner>,
    pub(crate) machine: StateMachine,
    pub(crate) kind: OperationKind,
    pub(crate) descriptors: Vec<Descriptor<'buf>>,
    pub(crate) metadata: Option<RdmaMetadata>,
    transfer: Option<Box<dyn Transfer>>,
    leases: Vec<Lease>,
    deadline: Option<BoxFuture<'static, ()>>,
    span: tracing::Span,
    started: Instant,
    bytes: u64,
    finished: bool,
}

impl<'buf> OpCore<'buf> {
    pub(crate) fn new(
        inner: Arc<Inner>,
        role: Role,
        kind: OperationKind,
        descriptors: Vec<Descriptor<'buf>>,
        leases: Vec<Lease>,
    ) -> Self {
        let bytes = descriptors.iter().map(|d| d.len() as u64).sum();
        let span = tracing::debug_span!(
            "ferry_op",
            backend = inner.backend.capabilities().backend,
            role = ?role,
            kind = %kind,
            bytes,
            descriptors = descriptors.len(),
            outcome = tracing::field::Empty,
            micros = tracing::field::Empty,
        );
        OpCore {
            inner,
            machine: StateMachine::new(role),
            kind,
            descriptors,
            metadata: None,
            transfer: None,
            leases,
            deadline: None,
            span,
            started: Instant::now(),
            bytes,
            finished: false,
        }
    }

    /// Takes the backend's transfer and the first event (`Posted` or `Exposed`).
    pub(crate) fn start(&mut self, transfer: Box<dyn Transfer>, event: Event) {
        self.inner.counters.started.fetch_add(1, Ordering::Relaxed);
        self.transfer = Some(transfer);
        self.deadline = self.inner.deadline.map(|d| self.inner.backend.sleep(d));
        self.apply(event);
    }

    fn apply(&mut self, event: Event) {
        let ends = matches!(
            event,
            Event::Completed | Event::PeerCancelled | Event::Failed(_) | Event::DeadlinePassed
        );
        if let Err(invalid) = self.machine.apply(event) {
            // A backend reported an event this operation cannot take (a backend bug). A start
            // is ignored; an ending must not be lost, or the operation would wait forever.
            tracing::debug!(parent: &self.span, %invalid, "invalid event from the backend");
            if ends {
                let _ = self.machine.apply(Event::Failed(Error::Backend {
                    backend: self.inner.backend.capabilities().backend,
                    side: ferry_core::Side::Local,
                    code: INVALID_EVENT,
                    message: invalid.to_string(),
                }));
            }
        }
        if self.machine.state().status().is_terminal() {
            self.finish();
        }
    }

    /// Drives the operation until it ends (`Ready`) or waits for the backend (`Pending`).
    pub(crate) fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.machine.state().status().is_terminal() {
                return Poll::Ready(());
            }
            let Some(transfer) = self.transfer.as_mut() else {
                return Poll::Ready(());
            };
            if let Poll::Ready(event) = transfer.poll_event(cx, &mut self.descriptors) {
                self.apply(event);
                continue;
            }
            if let Some(deadline) = self.deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    self.deadline = None;
                    let event = transfer
                        .cancel(&mut self.descriptors)
                        .unwrap_or(Event::DeadlinePassed);
                    self.apply(event);
                    continue;
                }
            }
            return Poll::Pending;
        }
    }

    pub(crate) fn outcome(&self) -> Result<(), Error> {
        self.machine
            .state()
            .outcome()
            .unwrap_or(Err(Error::Timeout))
    }

    pub(crate) fn cancel(&mut self) {
        if self.machine.state().status().is_terminal() {
            return;
        }
        let decided = match self.transfer.as_mut() {
            Some(transfer) => transfer.cancel(&mut self.descriptors),
            None => None,
        };
        self.apply(decided.unwrap_or(Event::CancelRequested));
    }

    /// Once, at the end: counters, the span, and every backend resource released, so nothing
    /// accumulates per finished operation.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.transfer = None;
        self.deadline = None;
        self.inner.release(std::mem::take(&mut self.leases));
        let counters = &self.inner.counters;
        let status = self.machine.state().status();
        let outcome = match status {
            OperationStatus::Complete => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(self.bytes, Ordering::Relaxed);
                "complete"
            }
            OperationStatus::Cancelled => {
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
                "cancelled"
            }
            OperationStatus::Errored => {
                counters.errored.fetch_add(1, Ordering::Relaxed);
                "errored"
            }
            _ => "abandoned",
        };
        let micros = self.started.elapsed().as_micros() as u64;
        self.span.record("outcome", outcome);
        self.span.record("micros", micros);
        tracing::debug!(parent: &self.span, outcome, micros, "operation ended");
    }
}

impl Drop for OpCore<'_> {
    fn drop(&mut self) {
        self.cancel();
        self.finish();
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::{SimBackend, SimWorld};
    use crate::Connector;

    /// An ending the table refuses (a peer cancel reported to an active operation) ends the
    /// operation `Errored` instead of being dropped, which would leave it waiting forever.
    #[tokio::test]
    async fn an_invalid_ending_from_a_backend_is_not_lost() {
        let world = SimWorld::new(1);
        let connector = |name: &'static str| {
            let backend = SimBackend::new(&world, name).expect("runtime");
            Connector::builder()
                .worker_id(name)
                .backend(backend)
                .build()
        };
        let (a, b) = (
            connector("a").await.expect("a"),
            connector("b").await.expect("b"),
        );
        let source = vec![1u8; 16];
        let mut landing = vec![0u8; 16];
        let readable = a
            .create_readable([Descriptor::from_slice(&source)])
            .await
            .expect("readable");
        let mut read = b
            .begin_read(
                readable.metadata(),
                [Descriptor::from_mut_slice(&mut landing)],
            )
            .await
            .expect("begin");
        read.core.apply(Event::PeerCancelled);
        assert_eq!(read.core.machine.state().status(), OperationStatus::Errored);
        assert!(matches!(
            read.error(),
            Some(Error::Backend {
                code: INVALID_EVENT,
                ..
            })
        ));
        read.core.apply(Event::PeerStarted);
        assert_eq!(
            read.status(),
            OperationStatus::Errored,
            "a stray start changes nothing"
        );
    }
}
