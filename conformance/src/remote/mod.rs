//! Running the suite across two processes: a harness whose Connectors are split between this
//! process and backend hosts it spawns.
//!
//! A remote Connector's state machines, validation and keys live here, in the test process;
//! its transport — a real tcp backend with its own listener, connections and §9 admission, or
//! a NIXL agent of its own ([`HostBackend`]) — runs in a child process (`ferry-backend-host`),
//! driven over a pipe by [`RemoteBackend`]. Every byte between a local and a remote Connector
//! therefore crosses a real transport between two processes, and [`Harness::crash`] on a
//! remote Connector kills its process with SIGKILL.
//!
//! ```text
//!  test process                                   backend host process
//!  ┌──────────────────────────────┐   pipe        ┌─────────────────────────┐
//!  │ Connector a ── tcp / nixl ◄──┼── tcp / UCX ──┼──► tcp / nixl           │
//!  │ Connector b ── RemoteBackend ┼── commands ──►│   (owns b's memory copy)│
//!  └──────────────────────────────┘◄── events ────└─────────────────────────┘
//! ```
//!
//! The host's first frame is `Ready`, with its backend's capabilities (or why it could not
//! start); the remote Connector takes them as its own, except that the host polls every
//! transfer itself, so its operations never need their owner's polls.
//!
//! The host holds a copy of the remote Connector's memory: a readable's or a write's bytes go
//! over the pipe when it is posted, and the bytes a read or a writable received come back only
//! with its `Completed` event, so the test process's memory changes only on completion.

pub mod proto;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ferry::core::state::Event;
use ferry::core::{BoxFuture, Exposed, Peer, RegistrationId, Transfer};
use ferry::{
    Backend, Capabilities, Connector, Descriptor, EndpointBlob, Error, NotificationKey,
    OperationKind, RdmaMetadata, Region,
};
use tokio::sync::oneshot;

#[cfg(feature = "nixl")]
use crate::nixl::NixlHarness;
use crate::tcp::TcpHarness;
#[cfg(feature = "ucx")]
use crate::ucx::UcxHarness;
use crate::{Harness, LiveState, NotifyFault, Options, Skip, Wrap};
use proto::{Buffer, CancelOutcome, Command, Reply};

/// How long a synchronous question to a host (a cancel, a leak count) may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a host may take to start its backend and say `Ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The waiter number of the host's unasked `Ready`; questions are numbered from 1.
const READY: u64 = 0;

/// Which backend a backend host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostBackend {
    /// A [`ferry::tcp::TcpBackend`] with its defaults.
    Tcp,
    /// A NIXL agent (UCX plugin) of its own.
    #[cfg(feature = "nixl")]
    Nixl,
    /// A [`ferry::ucx::UcxBackend`] (system UCX) of its own.
    #[cfg(feature = "ucx")]
    Ucx,
}

impl HostBackend {
    /// Whether the backend moves bytes with UCX (nixl's plugin, or ucx itself).
    fn uses_ucx(self) -> bool {
        match self {
            HostBackend::Tcp => false,
            #[cfg(feature = "nixl")]
            HostBackend::Nixl => true,
            #[cfg(feature = "ucx")]
            HostBackend::Ucx => true,
        }
    }

    /// The host's command-line argument naming this backend.
    pub fn arg(self) -> &'static str {
        match self {
            HostBackend::Tcp => "tcp",
            #[cfg(feature = "nixl")]
            HostBackend::Nixl => "nixl",
            #[cfg(feature = "ucx")]
            HostBackend::Ucx => "ucx",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn lost(reason: impl Into<String>) -> Error {
    Error::PeerLost {
        reason: reason.into(),
    }
}

fn is_terminal(event: &Event) -> bool {
    matches!(
        event,
        Event::Completed | Event::PeerCancelled | Event::Failed(_)
    )
}

enum Waiter {
    Async(oneshot::Sender<Reply>),
    Sync(mpsc::Sender<Reply>),
}

#[derive(Default)]
struct Slot {
    events: VecDeque<(Event, Option<Vec<Vec<u8>>>)>,
    waker: Option<Waker>,
}

/// Where remote passive operations' memory really is.
///
/// The facade writes a passive operation's metadata from the descriptors it was given: here,
/// the test process's memory, of which the host holds a copy at other addresses. A Connector
/// in the host would have written the host's addresses. So before any active side posts, the
/// harness rewrites the addresses in metadata whose key names a live remote passive operation
/// into the host's, as if the host had written it: an address inside the operation's memory
/// moves with it, anything else (a forged range, another operation's, a finished operation's
/// metadata) is left alone, so the backend judges it.
#[derive(Debug, Default)]
pub(crate) struct Shadows {
    live: Mutex<HashMap<NotificationKey, Vec<(Region, u64)>>>,
}

impl Shadows {
    /// Records that operation `key`'s memory `here` lives at `there` in a host.
    fn insert(&self, key: NotificationKey, here: Vec<Region>, there: Vec<u64>) {
        lock(&self.live).insert(key, here.into_iter().zip(there).collect());
    }

    fn remove(&self, key: &NotificationKey) {
        lock(&self.live).remove(key);
    }

    /// `metadata` with its operation's addresses made the host's, where it is a remote one.
    pub(crate) fn translate(&self, metadata: &RdmaMetadata) -> RdmaMetadata {
        let live = lock(&self.live);
        let mut translated = metadata.clone();
        let Some(memory) = live.get(&metadata.notification_key) else {
            return translated;
        };
        for descriptor in &mut translated.descriptors {
            let (ptr, size) = (descriptor.ptr, descriptor.size);
            // A descriptor as offered first (empty ones included), else one inside an offer.
            let found = memory
                .iter()
                .find(|(here, _)| here.addr == ptr && here.len == size)
                .or_else(|| {
                    memory.iter().find(|(here, _)| {
                        ptr >= here.addr && here.end().is_some_and(|end| ptr < end)
                    })
                });
            if let Some((here, there)) = found {
                descriptor.ptr = there + (ptr - here.addr);
            }
        }
        translated
    }
}

/// A local Connector's backend, with remote passive operations' addresses translated (see
/// [`Shadows`]) before it posts.
pub(crate) struct Translating {
    pub(crate) inner: Arc<dyn Backend>,
    pub(crate) shadows: Arc<Shadows>,
}

impl Backend for Translating {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn new_key(&self) -> NotificationKey {
        self.inner.new_key()
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        self.inner.register(region)
    }

    fn deregister(&self, id: RegistrationId) {
        self.inner.deregister(id)
    }

    fn expose<'a>(
        &'a self,
        kind: OperationKind,
        key: NotificationKey,
        local: &'a [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Exposed, Error>> {
        self.inner.expose(kind, key, local, deadline)
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>> {
        Box::pin(async move {
            let peer = self.inner.connect(endpoint).await?;
            Ok(Arc::new(TranslatingPeer {
                inner: peer,
                shadows: self.shadows.clone(),
            }) as Arc<dyn Peer>)
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
}

struct TranslatingPeer {
    inner: Arc<dyn Peer>,
    shadows: Arc<Shadows>,
}

impl Peer for TranslatingPeer {
    fn post<'a>(
        &'a self,
        kind: OperationKind,
        remote: &'a RdmaMetadata,
        local: &'a mut [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Box<dyn Transfer>, Error>> {
        let remote = self.shadows.translate(remote);
        Box::pin(async move { self.inner.post(kind, &remote, local, deadline).await })
    }
}

/// What the pipe reader shares with the rest of the link.
#[derive(Default)]
struct Shared {
    dead: OnceLock<String>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    slots: Mutex<HashMap<u64, Arc<Mutex<Slot>>>>,
}

impl Shared {
    fn die(&self, reason: String) {
        let _ = self.dead.set(reason);
        lock(&self.waiters).clear();
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            if let Some(waker) = lock(&slot).waker.take() {
                waker.wake();
            }
        }
    }

    fn deliver(&self, reply: Reply) {
        let id = match reply {
            Reply::Event { op, event, landed } => {
                let slot = lock(&self.slots).get(&op).cloned();
                if let Some(slot) = slot {
                    let mut slot = lock(&slot);
                    slot.events.push_back((event, landed));
                    if let Some(waker) = slot.waker.take() {
                        waker.wake();
                    }
                }
                return;
            }
            Reply::Exposed { op, .. }
            | Reply::Posted { op, .. }
            | Reply::CancelResult { op, .. } => op,
            Reply::Connected { req, .. } | Reply::Live { req, .. } => req,
            Reply::Ready { .. } => READY,
        };
        match lock(&self.waiters).remove(&id) {
            Some(Waiter::Async(tx)) => {
                let _ = tx.send(reply);
            }
            Some(Waiter::Sync(tx)) => {
                let _ = tx.send(reply);
            }
            None => {}
        }
    }

    fn read_loop(self: Arc<Self>, stdout: ChildStdout) {
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let reason = loop {
            match proto::read_frame(&mut reader) {
                Ok(Some((tag, body))) => match Reply::decode(tag, &body) {
                    Ok(reply) => self.deliver(reply),
                    Err(e) => break format!("the backend host sent {e}"),
                },
                Ok(None) => break "the backend host process exited".to_owned(),
                Err(e) => break format!("the pipe from the backend host failed: {e}"),
            }
        };
        self.die(reason);
    }
}

/// One backend host process and the pipe to it.
struct Link {
    child: Mutex<Child>,
    stdin: Mutex<BufWriter<ChildStdin>>,
    shared: Arc<Shared>,
    next: AtomicU64,
}

impl Link {
    /// Starts a host; the receiver gets its `Ready`.
    fn spawn(
        program: &PathBuf,
        backend: HostBackend,
    ) -> std::io::Result<(Arc<Link>, oneshot::Receiver<Reply>)> {
        let mut command = std::process::Command::new(program);
        if backend.uses_ucx() && std::env::var_os("UCX_TLS").is_none() {
            // As if the host were another machine: UCX reaches it over TCP only, so bytes are
            // in flight on a wire rather than copied by the kernel in one call (CMA), and a
            // crash can land mid-transfer.
            command.env("UCX_TLS", "tcp,self");
        }
        let mut child = command
            .arg(backend.arg())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the backend host has no pipes"));
        };
        let shared = Arc::new(Shared::default());
        let (ready, readied) = oneshot::channel();
        lock(&shared.waiters).insert(READY, Waiter::Async(ready));
        let reader = shared.clone();
        std::thread::Builder::new()
            .name("ferry-host-pipe".into())
            .spawn(move || reader.read_loop(stdout))?;
        let link = Arc::new(Link {
            child: Mutex::new(child),
            stdin: Mutex::new(BufWriter::with_capacity(1 << 20, stdin)),
            shared,
            next: AtomicU64::new(READY + 1),
        });
        Ok((link, readied))
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn dead(&self) -> Option<Error> {
        self.shared.dead.get().map(|reason| lost(reason.clone()))
    }

    fn send(&self, command: &Command) -> Result<(), Error> {
        let mut stdin = lock(&self.stdin);
        proto::write_frame(&mut *stdin, &command.encode())
            .map_err(|e| lost(format!("the pipe to the backend host failed: {e}")))
    }

    fn wait(&self, id: u64, waiter: Waiter, command: &Command) -> Result<(), Error> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        lock(&self.shared.waiters).insert(id, waiter);
        // The reader may have died between the check and the insert; it cleared the waiters
        // before we inserted, so look again.
        if let Some(e) = self.dead() {
            lock(&self.shared.waiters).remove(&id);
            return Err(e);
        }
        self.send(command)
    }

    async fn ask(&self, id: u64, command: Command) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.wait(id, Waiter::Async(tx), &command)?;
        rx.await.map_err(|_| {
            self.dead()
                .unwrap_or_else(|| lost("the backend host went away"))
        })
    }

    fn ask_blocking(&self, id: u64, command: Command) -> Result<Reply, Error> {
        let (tx, rx) = mpsc::channel();
        self.wait(id, Waiter::Sync(tx), &command)?;
        rx.recv_timeout(ANSWER_TIMEOUT).map_err(|_| {
            lock(&self.shared.waiters).remove(&id);
            self.dead()
                .unwrap_or_else(|| lost("the backend host did not answer within 10 s"))
        })
    }

    fn open_slot(&self, op: u64) -> Arc<Mutex<Slot>> {
        let slot = Arc::new(Mutex::new(Slot::default()));
        lock(&self.shared.slots).insert(op, slot.clone());
        slot
    }

    fn close_slot(&self, op: u64) {
        lock(&self.shared.slots).remove(&op);
    }

    fn kill(&self) {
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A [`Backend`] whose transport runs in a backend host process (tcp or nixl there), driven
/// over a pipe. See the module docs.
pub struct RemoteBackend {
    link: Arc<Link>,
    shadows: Arc<Shadows>,
    capabilities: Capabilities,
    keys: RandomState,
    registrations: AtomicU64,
}

impl RemoteBackend {
    /// Starts a host running `backend` and waits for its `Ready`.
    async fn spawn(
        program: &PathBuf,
        backend: HostBackend,
        shadows: Arc<Shadows>,
    ) -> Result<RemoteBackend, Error> {
        let unavailable = |reason: String| Error::BackendUnavailable {
            backend: backend.arg(),
            reason,
        };
        let (link, ready) = Link::spawn(program, backend)
            .map_err(|e| unavailable(format!("cannot start {}: {e}", program.display())))?;
        let mut capabilities = match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(Reply::Ready { result })) => result?,
            Ok(Ok(other)) => return Err(unavailable(format!("the host began with {other:?}"))),
            Ok(Err(_)) => {
                let reason = link.shared.dead.get().cloned();
                return Err(unavailable(
                    reason.unwrap_or_else(|| "the host exited".into()),
                ));
            }
            Err(_) => return Err(unavailable("the host did not start within 30 s".into())),
        };
        // Only host bytes cross the pipe to the host process: device memory is refused here,
        // at validation, even where the hosted backend reaches it.
        capabilities
            .devices
            .retain(|kind| *kind == ferry::core::DeviceKind::Host);
        Ok(RemoteBackend {
            link,
            shadows,
            capabilities,
            keys: RandomState::new(),
            registrations: AtomicU64::new(1),
        })
    }
}

fn buffers(local: &[Descriptor<'_>], filled: bool) -> Vec<Buffer> {
    local
        .iter()
        .map(|d| match filled {
            true => Buffer::Filled(d.as_slice().unwrap_or_default().to_vec()),
            false => Buffer::Sized(d.len() as u64),
        })
        .collect()
}

impl Backend for RemoteBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn new_key(&self) -> NotificationKey {
        let n = self.registrations.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.keys.hash_one((n, 0u8)).to_le_bytes());
        bytes[8..].copy_from_slice(&self.keys.hash_one((n, 1u8)).to_le_bytes());
        NotificationKey::from_random_bytes(bytes)
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        // The host registers its own copy when it exposes or posts; this process's memory is
        // never lent to the transport, so the id is bookkeeping.
        if !self.capabilities.reaches(region.device) {
            return Err(Error::UnsupportedDevice {
                device: region.device,
                backend: self.capabilities.backend,
            });
        }
        Ok(RegistrationId(
            self.registrations.fetch_add(1, Ordering::Relaxed),
        ))
    }

    fn deregister(&self, _id: RegistrationId) {}

    fn expose<'a>(
        &'a self,
        kind: OperationKind,
        key: NotificationKey,
        local: &'a [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Exposed, Error>> {
        let op = self.link.id();
        let command = Command::Expose {
            op,
            kind,
            key,
            deadline,
            buffers: buffers(local, kind == OperationKind::Read),
        };
        let here: Vec<Region> = local.iter().map(|d| d.region()).collect();
        Box::pin(async move {
            let slot = self.link.open_slot(op);
            let exposed = match self.link.ask(op, command).await {
                Ok(Reply::Exposed { result, .. }) => result,
                Ok(other) => Err(lost(format!("the backend host answered {other:?}"))),
                Err(e) => Err(e),
            }
            .and_then(|(blob, there)| Ok((EndpointBlob::parse(&blob)?, there)));
            match exposed {
                Ok((endpoint, there)) => {
                    let mut transfer = RemoteTransfer::new(self.link.clone(), op, slot);
                    self.shadows.insert(key, here, there);
                    transfer.shadow = Some((self.shadows.clone(), key));
                    Ok(Exposed {
                        endpoint,
                        transfer: Box::new(transfer),
                    })
                }
                Err(e) => {
                    self.link.close_slot(op);
                    Err(e)
                }
            }
        })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>> {
        Box::pin(async move {
            let req = self.link.id();
            let command = Command::Connect {
                req,
                endpoint: endpoint.encode(),
            };
            match self.link.ask(req, command).await? {
                Reply::Connected { result, .. } => Ok(Arc::new(RemotePeer {
                    link: self.link.clone(),
                    shadows: self.shadows.clone(),
                    peer: result?,
                }) as Arc<dyn Peer>),
                other => Err(lost(format!("the backend host answered {other:?}"))),
            }
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

struct RemotePeer {
    link: Arc<Link>,
    shadows: Arc<Shadows>,
    peer: u64,
}

impl Peer for RemotePeer {
    fn post<'a>(
        &'a self,
        kind: OperationKind,
        remote: &'a RdmaMetadata,
        local: &'a mut [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Box<dyn Transfer>, Error>> {
        let op = self.link.id();
        let command = Command::Post {
            op,
            peer: self.peer,
            kind,
            metadata: self.shadows.translate(remote).to_json(),
            deadline,
            buffers: buffers(local, kind == OperationKind::Write),
        };
        Box::pin(async move {
            let slot = self.link.open_slot(op);
            let posted = match self.link.ask(op, command).await {
                Ok(Reply::Posted { result, .. }) => result,
                Ok(other) => Err(lost(format!("the backend host answered {other:?}"))),
                Err(e) => Err(e),
            };
            match posted {
                Ok(()) => {
                    Ok(Box::new(RemoteTransfer::new(self.link.clone(), op, slot))
                        as Box<dyn Transfer>)
                }
                Err(e) => {
                    self.link.close_slot(op);
                    Err(e)
                }
            }
        })
    }
}

/// A transfer running in the host; its events arrive over the pipe.
struct RemoteTransfer {
    link: Arc<Link>,
    op: u64,
    slot: Arc<Mutex<Slot>>,
    ended: bool,
    /// For a passive operation: its entry in the address translation, removed when it goes.
    shadow: Option<(Arc<Shadows>, NotificationKey)>,
}

/// Copies the bytes the host landed into the operation's memory; an event that cannot be
/// applied becomes a failure.
fn land(event: Event, landed: Option<Vec<Vec<u8>>>, local: &mut [Descriptor<'_>]) -> Event {
    let (Event::Completed, Some(landed)) = (&event, landed) else {
        return event;
    };
    let fits = landed.len() == local.len()
        && local
            .iter()
            .zip(&landed)
            .all(|(d, bytes)| d.len() == bytes.len() && d.is_writable());
    if !fits {
        return Event::Failed(lost("the backend host landed bytes of the wrong shape"));
    }
    for (d, bytes) in local.iter_mut().zip(landed) {
        if let Some(slice) = d.as_mut_slice() {
            slice.copy_from_slice(&bytes);
        }
    }
    Event::Completed
}

impl RemoteTransfer {
    fn new(link: Arc<Link>, op: u64, slot: Arc<Mutex<Slot>>) -> Self {
        RemoteTransfer {
            link,
            op,
            slot,
            ended: false,
            shadow: None,
        }
    }

    /// The terminal event already delivered, if any, skipping the events before it.
    fn queued_terminal(&mut self, local: &mut [Descriptor<'_>]) -> Option<Event> {
        let mut slot = lock(&self.slot);
        while let Some((event, landed)) = slot.events.pop_front() {
            if is_terminal(&event) {
                return Some(land(event, landed, local));
            }
        }
        None
    }
}

impl Transfer for RemoteTransfer {
    fn poll_event(&mut self, cx: &mut Context<'_>, local: &mut [Descriptor<'_>]) -> Poll<Event> {
        let mut slot = lock(&self.slot);
        if let Some((event, landed)) = slot.events.pop_front() {
            self.ended = is_terminal(&event);
            return Poll::Ready(land(event, landed, local));
        }
        if let Some(e) = self.link.dead() {
            self.ended = true;
            return Poll::Ready(Event::Failed(e));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn cancel(&mut self, local: &mut [Descriptor<'_>]) -> Option<Event> {
        if self.ended {
            return None;
        }
        self.ended = true;
        if let Some(event) = self.queued_terminal(local) {
            return Some(event);
        }
        let answer = self
            .link
            .ask_blocking(self.op, Command::Cancel { op: self.op });
        match answer {
            Ok(Reply::CancelResult {
                outcome: CancelOutcome::Cancelled(event, landed),
                ..
            }) => event.map(|event| land(event, landed, local)),
            // The host sent the terminal event before it read the cancel.
            Ok(Reply::CancelResult {
                outcome: CancelOutcome::Ended,
                ..
            }) => Some(self.queued_terminal(local).unwrap_or_else(|| {
                Event::Failed(lost("the backend host ended the transfer without an event"))
            })),
            Ok(other) => Some(Event::Failed(lost(format!(
                "the backend host answered {other:?}"
            )))),
            Err(e) => Some(Event::Failed(e)),
        }
    }
}

impl Drop for RemoteTransfer {
    fn drop(&mut self) {
        if let Some((shadows, key)) = self.shadow.take() {
            shadows.remove(&key);
        }
        self.link.close_slot(self.op);
        if self.link.dead().is_none() {
            let _ = self.link.send(&Command::Drop { op: self.op });
        }
    }
}

/// Which of a [`ProcessHarness`]'s Connectors live in backend hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The first Connector a rule makes is local, the second remote, and so on alternately:
    /// in `pair`, `b` is remote.
    SecondRemote,
    /// The first is remote, the second local, alternately: in `pair`, `a` is remote.
    FirstRemote,
}

/// The harness for this process's own Connectors.
enum Local {
    Tcp(TcpHarness),
    #[cfg(feature = "nixl")]
    Nixl(NixlHarness),
    #[cfg(feature = "ucx")]
    Ucx(UcxHarness),
}

/// Forwards a [`Harness`] call to the local harness, whichever it is.
macro_rules! local {
    ($self:expr, $h:ident => $call:expr) => {
        match &$self.local {
            Local::Tcp($h) => $call,
            #[cfg(feature = "nixl")]
            Local::Nixl($h) => $call,
            #[cfg(feature = "ucx")]
            Local::Ucx($h) => $call,
        }
    };
}

/// The suite across processes: Connectors alternate between this process and backend host
/// processes (one per remote Connector), all on one backend.
pub struct ProcessHarness {
    host: PathBuf,
    backend: HostBackend,
    placement: Placement,
    local: Local,
    shadows: Arc<Shadows>,
    made: AtomicUsize,
    remotes: Mutex<HashMap<String, Arc<Link>>>,
    crashed: Mutex<Vec<Arc<Link>>>,
}

impl ProcessHarness {
    /// A tcp harness spawning `host` (the `ferry-backend-host` binary) for its remote
    /// Connectors.
    pub fn new(host: impl Into<PathBuf>, placement: Placement) -> Self {
        Self::with_backend(host, HostBackend::Tcp, placement)
    }

    /// A harness on `backend`, in this process and in the hosts it spawns.
    pub fn with_backend(
        host: impl Into<PathBuf>,
        backend: HostBackend,
        placement: Placement,
    ) -> Self {
        let local = match backend {
            HostBackend::Tcp => Local::Tcp(TcpHarness::new()),
            #[cfg(feature = "nixl")]
            HostBackend::Nixl => Local::Nixl(NixlHarness::new()),
            #[cfg(feature = "ucx")]
            HostBackend::Ucx => Local::Ucx(UcxHarness::new()),
        };
        ProcessHarness {
            host: host.into(),
            backend,
            placement,
            local,
            shadows: Arc::default(),
            made: AtomicUsize::new(0),
            remotes: Mutex::new(HashMap::new()),
            crashed: Mutex::new(Vec::new()),
        }
    }
}

impl Harness for ProcessHarness {
    fn available(&self) -> Result<(), Skip> {
        local!(self, h => h.available())
    }

    async fn connector(&self, options: Options) -> Connector {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let remote = match self.placement {
            Placement::SecondRemote => n % 2 == 1,
            Placement::FirstRemote => n % 2 == 0,
        };
        if !remote {
            let shadows = self.shadows.clone();
            let options = Options {
                wrap: Some(Wrap(Arc::new(move |inner| {
                    Arc::new(Translating {
                        inner,
                        shadows: shadows.clone(),
                    })
                }))),
                ..options
            };
            return local!(self, h => h.connector(options).await);
        }
        let backend = RemoteBackend::spawn(&self.host, self.backend, self.shadows.clone())
            .await
            .expect("the backend host starts");
        let link = backend.link.clone();
        let name = format!("{}#remote{n}", options.name);
        let connector = options.build(&name, std::sync::Arc::new(backend)).await;
        lock(&self.remotes).insert(name, link);
        connector
    }

    fn crash(&self, connector: &Connector) -> Result<(), Skip> {
        let link = lock(&self.remotes).remove(connector.worker_id());
        match link {
            Some(link) => {
                link.kill();
                lock(&self.crashed).push(link);
                Ok(())
            }
            None => local!(self, h => h.crash(connector)),
        }
    }

    fn fault_notifications(
        &self,
        from: &Connector,
        to: &Connector,
        fault: NotifyFault,
        count: u32,
    ) -> Result<(), Skip> {
        local!(self, h => h.fault_notifications(from, to, fault, count))
    }

    fn partition(&self, a: &Connector, b: &Connector) -> Result<(), Skip> {
        local!(self, h => h.partition(a, b))
    }

    fn live_state(&self) -> Result<LiveState, Skip> {
        let mut state = local!(self, h => h.live_state())?;
        let links: Vec<Arc<Link>> = lock(&self.remotes).values().cloned().collect();
        for link in &links {
            let req = link.id();
            match link.ask_blocking(req, Command::Live { req }) {
                Ok(Reply::Live {
                    operations, keys, ..
                }) => {
                    state.operations += operations as usize;
                    state.keys += keys as usize;
                }
                // A live host that cannot count is a harness bug, not a backend's opt-out.
                Ok(other) => panic!("a backend host answered {other:?}"),
                Err(e) => panic!("a backend host did not answer: {e}"),
            }
        }
        Ok(state)
    }
}
