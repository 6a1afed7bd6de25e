//! [`UcxBackend`]: ferry's `Backend` over UCP, one context and worker per backend, owned by
//! one progress thread (the [`safe`](crate::safe) types are `!Send`).
//!
//! ```text
//!  caller threads (Connector, operations)        progress thread "ferry-ucx"
//!  ─────────────────────────────────────         ───────────────────────────
//!  register / connect / post / cancel ─ command ─► mem_map + rkey_pack, ep_create (cached),
//!           │ + a byte on the wake socket          get/put per descriptor → ep flush →
//!           ▼                                      am_send(key) once the flush completed
//!  poll_event: outcome in the table ◄── wake ──── outcomes, inbound AMs matched by key
//!                                                  sleeps on the worker's event fd + wake
//!                                                  socket (poll(2), bounded) when idle
//! ```
//!
//! # Completion and cancellation (SPEC §5)
//! The active side puts or gets each descriptor, flushes the endpoint, and only when the flush
//! has completed (every byte is in place at the peer) sends the notification key's text as an
//! active message. Active messages on one endpoint arrive in order after operations flushed
//! before them, so the passive side sees the key after the data. The active operation is
//! `Complete` once that message has left. A cancel lets posted gets and puts finish first
//! (UCX cannot take back RMA, `ucp_request_cancel` does nothing for it), for up to
//! [`DRAIN`]; then sends `<key>:cancel`, or reports `Complete` if the notification had already
//! left (the cancel lost the race). A peer that does not let the requests finish within
//! [`DRAIN`] leaves UCX owning memory the caller is about to free; nothing safe is left, and
//! the process aborts (as the nixl backend does). Force-closing the endpoint instead is not
//! implemented.
//!
//! # What the passive side can see
//! Nothing before the notification: it cannot report `InProgress`, and it holds no endpoint
//! to its peer, so it cannot see the peer vanish. The active side sees a lost peer through
//! UCX's peer error handling (`UCP_ERR_HANDLING_MODE_PEER`) and ends `Errored(PeerLost)`.
//!
//! # Revocation (SPEC §7, §9)
//! Ending a passive operation forgets its key; the memory stays mapped while a registration
//! covers it, and even after `ucp_mem_unmap` some transports (CMA on one host, tcp's software
//! RMA) reach raw addresses without consulting registrations. So a peer holding stale
//! metadata is not refused ([`Capabilities::enforces_revocation`] is false): keep a passive
//! operation's memory alive until its peer is done.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use ferry_core::state::Event;
use ferry_core::{
    BoxFuture, Capabilities, Descriptor, DeviceKind, EndpointBlob, Error, Exposed, Notification,
    NotificationKey, OperationKind, Peer, RdmaMetadata, Region, RegistrationId, Side, Transfer,
};

use crate::blob::{RegionKey, UcxBlob, NAME};
use crate::safe::{
    Context, ContextOptions, Endpoint, ErrorMode, MemRegion, RemoteKey, Request, Worker,
    WorkerAddress,
};

/// How long a cancel lets posted gets and puts finish before giving up (see the module docs).
pub const DRAIN: Duration = Duration::from_secs(10);

/// How long a caller waits for the progress thread to answer a command.
const ANSWER: Duration = Duration::from_secs(20);

/// The active-message id of ferry's notifications.
const AM_NOTIFY: u16 = 0x0f3e;

/// The longest the progress thread sleeps with nothing in flight, and with transfers in
/// flight (a bound in case a transport signals no event).
const IDLE_SLEEP: Duration = Duration::from_millis(100);
const BUSY_SLEEP: Duration = Duration::from_millis(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn thread_gone() -> Error {
    Error::Backend {
        backend: NAME,
        side: Side::Local,
        code: 0,
        message: "the ucx progress thread did not answer".into(),
    }
}

/// Whether UCX can be used on this machine: a context and a worker can be made. Checked once
/// per process.
pub fn available() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let context = Context::new(&ContextOptions { wakeup: true })
                .map_err(|e| e.to_ferry(Side::Local).to_string())?;
            context
                .create_worker()
                .map(drop)
                .map_err(|e| e.to_ferry(Side::Local).to_string())
        })
        .clone()
}

/// A slot of the outcome table: what the progress thread decided, and who to wake.
#[derive(Default)]
struct Slot {
    outcome: Option<Event>,
    waker: Option<Waker>,
}

impl Slot {
    fn settle(&mut self, event: Event) {
        if self.outcome.is_none() {
            self.outcome = Some(event);
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

/// Takes the outcome in `key`'s slot (and the slot with it: the key is consumed), or leaves
/// `cx`'s waker there; `None` when there is no slot.
fn take_or_wait<K: std::hash::Hash + Eq>(
    slots: &mut HashMap<K, Slot>,
    key: &K,
    cx: &TaskContext<'_>,
) -> Option<Poll<Event>> {
    let slot = slots.get_mut(key)?;
    match slot.outcome.take() {
        Some(event) => {
            slots.remove(key);
            Some(Poll::Ready(event))
        }
        None => {
            slot.waker = Some(cx.waker().clone());
            Some(Poll::Pending)
        }
    }
}

#[derive(Default)]
struct Table {
    passive: HashMap<NotificationKey, Slot>,
    active: HashMap<u64, Slot>,
    unmatched: u64,
}

/// What the backend holds now (for leak checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UcxStats {
    /// Passive operations waiting for their notification.
    pub live_keys: usize,
    /// Active operations not yet finished.
    pub live_transfers: usize,
    /// Notifications that matched no live operation.
    pub unmatched_notifications: u64,
    /// Live registrations.
    pub registrations: usize,
}

struct Registered {
    addr: u64,
    len: u64,
    rkey: Vec<u8>,
}

struct Shared {
    commands: Mutex<Sender<Command>>,
    wake: UnixStream,
    table: Arc<Mutex<Table>>,
    registrations: Mutex<HashMap<u64, Registered>>,
    address: Vec<u8>,
    next: AtomicU64,
    entropy: Mutex<std::fs::File>,
    capabilities: Capabilities,
}

impl Shared {
    fn send(&self, command: Command) -> Result<(), Error> {
        lock(&self.commands)
            .send(command)
            .map_err(|_| thread_gone())?;
        // The thread drains the socket before reading commands, and sleeps on it: a byte
        // written after it last looked wakes it. A full socket already holds a wake-up.
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, Error> {
        self.ask_raw(make).map_err(|_| thread_gone())
    }

    /// Sends a command and waits (bounded) for its answer; `Disconnected` when the thread is
    /// gone, `Timeout` when it did not answer in time.
    fn ask_raw<T>(
        &self,
        make: impl FnOnce(SyncSender<T>) -> Command,
    ) -> Result<T, RecvTimeoutError> {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.send(make(reply)).is_err() {
            return Err(RecvTimeoutError::Disconnected);
        }
        answer.recv_timeout(ANSWER)
    }
}

/// ferry's UCX backend: one UCP context and worker, owned by its progress thread.
pub struct UcxBackend {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for UcxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UcxBackend").finish_non_exhaustive()
    }
}

impl UcxBackend {
    /// Creates the context and worker (UCX reads `UCX_*` from the environment) on a new
    /// progress thread. `BackendUnavailable` where UCX is missing.
    pub fn new() -> Result<UcxBackend, Error> {
        let unavailable = |reason: String| Error::BackendUnavailable {
            backend: NAME,
            reason,
        };
        let entropy = std::fs::File::open("/dev/urandom")
            .map_err(|e| unavailable(format!("no source of random keys (/dev/urandom): {e}")))?;
        let (wake, wake_reader) =
            UnixStream::pair().map_err(|e| unavailable(format!("wake socket: {e}")))?;
        wake.set_nonblocking(true)
            .and_then(|()| wake_reader.set_nonblocking(true))
            .map_err(|e| unavailable(format!("wake socket: {e}")))?;
        let (commands, inbox) = mpsc::channel();
        let (started, start) = mpsc::sync_channel(1);
        let table = Arc::new(Mutex::new(Table::default()));
        let thread_table = table.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-ucx".into())
            .spawn(move || {
                let mut progress = match Progress::start(thread_table) {
                    Ok(progress) => progress,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                match progress.worker.address() {
                    Ok(address) => {
                        let _ = started.send(Ok(address.as_bytes().to_vec()));
                    }
                    Err(e) => {
                        let _ = started.send(Err(e.to_ferry(Side::Local)));
                        return;
                    }
                }
                progress.run(inbox, wake_reader);
            })
            .map_err(|e| unavailable(format!("starting the progress thread: {e}")))?;
        let address = match start.recv_timeout(ANSWER) {
            Ok(Ok(address)) => address,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(unavailable("the progress thread did not start".into())),
        };
        let shared = Arc::new(Shared {
            commands: Mutex::new(commands),
            wake,
            table,
            registrations: Mutex::new(HashMap::new()),
            address,
            next: AtomicU64::new(1),
            entropy: Mutex::new(entropy),
            capabilities: Capabilities {
                backend: NAME,
                devices: vec![DeviceKind::Host],
                passive_observes_start: false,
                passive_observes_peer_loss: false,
                enforces_revocation: false,
                cross_host: true,
                progress_needs_polling: false,
            },
        });
        Ok(UcxBackend {
            shared,
            thread: Some(thread),
        })
    }
}

impl UcxBackend {
    /// What the backend holds now.
    pub fn stats(&self) -> UcxStats {
        let table = lock(&self.shared.table);
        UcxStats {
            live_keys: table.passive.len(),
            live_transfers: table.active.len(),
            unmatched_notifications: table.unmatched,
            registrations: lock(&self.shared.registrations).len(),
        }
    }
}

impl Drop for UcxBackend {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ferry_core::Backend for UcxBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    fn new_key(&self) -> NotificationKey {
        let mut bytes = [0u8; 16];
        // /dev/urandom does not fail once open; a short read would make keys guessable.
        lock(&self.shared.entropy)
            .read_exact(&mut bytes)
            .expect("reading /dev/urandom");
        NotificationKey::from_random_bytes(bytes)
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        if !self.shared.capabilities.reaches(region.device) {
            return Err(Error::UnsupportedDevice {
                device: region.device,
                backend: NAME,
            });
        }
        let len = usize::try_from(region.len).map_err(|_| Error::Backend {
            backend: NAME,
            side: Side::Local,
            code: 0,
            message: format!("a region of {} bytes", region.len),
        })?;
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let rkey = self.shared.ask(|reply| Command::Register {
            id,
            addr: region.addr as usize,
            len,
            reply,
        })??;
        lock(&self.shared.registrations).insert(
            id,
            Registered {
                addr: region.addr,
                len: region.len,
                rkey,
            },
        );
        Ok(RegistrationId(id))
    }

    fn deregister(&self, id: RegistrationId) {
        if lock(&self.shared.registrations).remove(&id.0).is_some() {
            let _ = self.shared.send(Command::Deregister { id: id.0 });
        }
    }

    fn expose<'a>(
        &'a self,
        _kind: OperationKind,
        key: NotificationKey,
        local: &'a [Descriptor<'_>],
        _deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Exposed, Error>> {
        let exposed = self.exposed(key, local);
        Box::pin(async move { exposed })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>> {
        let peer = UcxBlob::from_endpoint(endpoint).and_then(|blob| {
            let peer = self.shared.ask(|reply| Command::Connect {
                address: blob.address,
                reply,
            })??;
            Ok(Arc::new(UcxPeer {
                shared: self.shared.clone(),
                peer,
            }) as Arc<dyn Peer>)
        });
        Box::pin(async move { peer })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

impl UcxBackend {
    fn exposed(&self, key: NotificationKey, local: &[Descriptor<'_>]) -> Result<Exposed, Error> {
        let mut regions: Vec<RegionKey> = Vec::new();
        {
            let registrations = lock(&self.shared.registrations);
            for (index, descriptor) in local.iter().enumerate() {
                let (addr, len) = (descriptor.addr(), descriptor.len() as u64);
                if len == 0 || regions.iter().any(|r| r.covers(addr, len)) {
                    continue;
                }
                let covering = registrations
                    .values()
                    .filter(|r| r.len > 0)
                    .find(|r| {
                        RegionKey {
                            addr: r.addr,
                            len: r.len,
                            rkey: Vec::new(),
                        }
                        .covers(addr, len)
                    })
                    .ok_or_else(|| Error::Backend {
                        backend: NAME,
                        side: Side::Local,
                        code: 0,
                        message: format!("descriptor {index} is not inside a registration"),
                    })?;
                regions.push(RegionKey {
                    addr: covering.addr,
                    len: covering.len,
                    rkey: covering.rkey.clone(),
                });
            }
        }
        let endpoint = UcxBlob {
            address: self.shared.address.clone(),
            regions,
        }
        .to_endpoint();
        lock(&self.shared.table)
            .passive
            .insert(key, Slot::default());
        Ok(Exposed {
            endpoint,
            transfer: Box::new(PassiveTransfer {
                shared: self.shared.clone(),
                key,
            }),
        })
    }
}

/// A passive operation: waits for its key's notification.
struct PassiveTransfer {
    shared: Arc<Shared>,
    key: NotificationKey,
}

impl Transfer for PassiveTransfer {
    fn poll_event(
        &mut self,
        cx: &mut TaskContext<'_>,
        _local: &mut [Descriptor<'_>],
    ) -> Poll<Event> {
        let mut table = lock(&self.shared.table);
        take_or_wait(&mut table.passive, &self.key, cx)
            .unwrap_or(Poll::Ready(Event::Failed(Error::StaleMetadata)))
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        lock(&self.shared.table)
            .passive
            .remove(&self.key)
            .and_then(|slot| slot.outcome)
    }
}

impl Drop for PassiveTransfer {
    fn drop(&mut self) {
        lock(&self.shared.table).passive.remove(&self.key);
    }
}

/// A connected peer: an endpoint (by id) on the progress thread.
struct UcxPeer {
    shared: Arc<Shared>,
    peer: u64,
}

impl UcxPeer {
    fn post_now(
        &self,
        kind: OperationKind,
        remote: &RdmaMetadata,
        local: &[Descriptor<'_>],
    ) -> Result<ActiveTransfer, Error> {
        let blob = UcxBlob::from_endpoint(&remote.endpoint()?)?;
        let mut items = Vec::with_capacity(local.len());
        for (index, (mine, theirs)) in local.iter().zip(&remote.descriptors).enumerate() {
            if mine.is_empty() {
                continue;
            }
            let region =
                blob.region_for(theirs.ptr, theirs.size)
                    .ok_or_else(|| Error::AccessDenied {
                        side: Side::Local,
                        reason: format!("no remote key in the metadata covers descriptor {index}"),
                    })?;
            items.push(Item {
                local: mine.addr() as usize,
                len: mine.len(),
                remote: theirs.ptr,
                rkey: region,
            });
        }
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.table).active.insert(id, Slot::default());
        let posted = self.shared.ask(|reply| Command::Post {
            id,
            peer: self.peer,
            kind,
            key: remote.notification_key,
            rkeys: blob.regions.into_iter().map(|r| r.rkey).collect(),
            items,
            reply,
        });
        match posted {
            Ok(Ok(())) => Ok(ActiveTransfer {
                shared: self.shared.clone(),
                id,
                ended: false,
            }),
            Ok(Err(e)) => {
                lock(&self.shared.table).active.remove(&id);
                Err(e)
            }
            Err(e) => {
                // The thread may still hold the post: never return while UCX may touch the
                // caller's memory.
                let transfer = ActiveTransfer {
                    shared: self.shared.clone(),
                    id,
                    ended: false,
                };
                drop(transfer);
                Err(e)
            }
        }
    }
}

impl Peer for UcxPeer {
    fn post<'a>(
        &'a self,
        kind: OperationKind,
        remote: &'a RdmaMetadata,
        local: &'a mut [Descriptor<'_>],
        _deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Box<dyn Transfer>, Error>> {
        let posted = self
            .post_now(kind, remote, local)
            .map(|t| Box::new(t) as Box<dyn Transfer>);
        Box::pin(async move { posted })
    }
}

/// An active operation: its gets or puts, flush and notification live on the thread.
struct ActiveTransfer {
    shared: Arc<Shared>,
    id: u64,
    ended: bool,
}

impl Transfer for ActiveTransfer {
    fn poll_event(
        &mut self,
        cx: &mut TaskContext<'_>,
        _local: &mut [Descriptor<'_>],
    ) -> Poll<Event> {
        let mut table = lock(&self.shared.table);
        let polled = take_or_wait(&mut table.active, &self.id, cx).unwrap_or(Poll::Ready(
            Event::Failed(Error::Cancelled { by: Side::Local }),
        ));
        self.ended = polled.is_ready();
        polled
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        self.ended = true;
        let id = self.id;
        match self.shared.ask_raw(|reply| Command::Cancel { id, reply }) {
            Ok(event) => event,
            // The thread is gone: nothing progresses the worker any more, so UCX moves no more
            // bytes for this operation.
            Err(RecvTimeoutError::Disconnected) => None,
            // The thread is stuck: UCX may still own the caller's memory.
            Err(RecvTimeoutError::Timeout) => {
                abort_unsafe("the ucx progress thread did not confirm a cancel in time")
            }
        }
    }
}

/// Ends the process where going on would let UCX write into memory its owner is freeing.
fn abort_unsafe(why: &str) -> ! {
    eprintln!("ferry-backend-ucx: {why}; UCX may still touch memory about to be freed: aborting");
    std::process::abort()
}

impl Drop for ActiveTransfer {
    fn drop(&mut self) {
        if !self.ended {
            let _ = Transfer::cancel(self, &mut []);
        }
        lock(&self.shared.table).active.remove(&self.id);
    }
}

/// One descriptor pair of a post: local memory, remote address, index of its rkey.
struct Item {
    local: usize,
    len: usize,
    remote: u64,
    rkey: usize,
}

enum Command {
    Register {
        id: u64,
        addr: usize,
        len: usize,
        reply: SyncSender<Result<Vec<u8>, Error>>,
    },
    Deregister {
        id: u64,
    },
    Connect {
        address: Vec<u8>,
        reply: SyncSender<Result<u64, Error>>,
    },
    Post {
        id: u64,
        peer: u64,
        kind: OperationKind,
        key: NotificationKey,
        rkeys: Vec<Vec<u8>>,
        items: Vec<Item>,
        reply: SyncSender<Result<(), Error>>,
    },
    Cancel {
        id: u64,
        reply: SyncSender<Option<Event>>,
    },
    Shutdown,
}

/// Where an active operation is.
enum Phase {
    /// Gets or puts and the flush behind them are in flight.
    Moving {
        rma: Vec<Request>,
        flush: Option<Request>,
    },
    /// The notification (or the cancel message) is leaving.
    Notifying { message: Request },
}

struct ActiveOp {
    endpoint: Endpoint,
    key: NotificationKey,
    phase: Phase,
    /// Kept until the requests that use them finish.
    _rkeys: Vec<RemoteKey>,
    cancel: Option<(SyncSender<Option<Event>>, Instant)>,
}

/// The progress thread's state: everything `!Send`.
struct Progress {
    table: Arc<Mutex<Table>>,
    regions: HashMap<u64, MemRegion>,
    by_address: HashMap<Vec<u8>, u64>,
    endpoints: HashMap<u64, Endpoint>,
    next_peer: u64,
    ops: HashMap<u64, ActiveOp>,
    /// Cancel messages still leaving.
    leaving: Vec<Request>,
    // Dropped last: endpoints and regions hold the worker and context alive anyway.
    worker: Worker,
    context: Context,
}

fn failure(endpoint: &Endpoint, error: &crate::Error) -> Error {
    match endpoint.failure() {
        Some(cause) => Error::PeerLost {
            reason: cause.to_string(),
        },
        None if error.is_peer_failure() => Error::PeerLost {
            reason: error.to_string(),
        },
        None => error.to_ferry(Side::Local),
    }
}

impl Progress {
    fn start(table: Arc<Mutex<Table>>) -> Result<Progress, Error> {
        let context =
            Context::new(&ContextOptions { wakeup: true }).map_err(|e| e.to_ferry(Side::Local))?;
        let worker = context
            .create_worker()
            .map_err(|e| e.to_ferry(Side::Local))?;
        let handler_table = table.clone();
        worker
            .set_am_handler(AM_NOTIFY, move |message| {
                let mut table = lock(&handler_table);
                let matched = match Notification::parse(message.data) {
                    Some(Notification::Complete(key)) => table
                        .passive
                        .get_mut(&key)
                        .map(|slot| slot.settle(Event::Completed)),
                    Some(Notification::Cancel(key)) => table
                        .passive
                        .get_mut(&key)
                        .map(|slot| slot.settle(Event::PeerCancelled)),
                    None => None,
                };
                if matched.is_none() {
                    table.unmatched += 1;
                }
            })
            .map_err(|e| e.to_ferry(Side::Local))?;
        Ok(Progress {
            table,
            regions: HashMap::new(),
            by_address: HashMap::new(),
            endpoints: HashMap::new(),
            next_peer: 1,
            ops: HashMap::new(),
            leaving: Vec::new(),
            worker,
            context,
        })
    }

    fn run(&mut self, inbox: Receiver<Command>, mut wake: UnixStream) {
        let event_fd = self.worker.event_fd().ok();
        loop {
            let mut drained = [0u8; 64];
            while matches!(wake.read(&mut drained), Ok(n) if n > 0) {}
            loop {
                match inbox.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return,
                    Ok(command) => self.handle(command),
                    Err(TryRecvError::Empty) => break,
                }
            }
            let mut busy = false;
            for _ in 0..64 {
                match self.worker.progress() {
                    Ok(0) | Err(_) => break,
                    Ok(_) => busy = true,
                }
            }
            busy |= self.advance();
            if busy {
                continue;
            }
            // Sleep until the worker or a caller has something, with a bound in case a
            // transport signals no event.
            let bound = if self.ops.is_empty() && self.leaving.is_empty() {
                IDLE_SLEEP
            } else {
                BUSY_SLEEP
            };
            match (event_fd, self.worker.arm()) {
                (_, Ok(false)) => continue,
                (Some(fd), Ok(true)) => wait_readable(&[fd, wake.as_raw_fd()], bound),
                _ => wait_readable(&[wake.as_raw_fd()], bound),
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                id,
                addr,
                len,
                reply,
            } => {
                let _ = reply.send(self.register(id, addr, len));
            }
            Command::Deregister { id } => {
                self.regions.remove(&id);
            }
            Command::Connect { address, reply } => {
                let _ = reply.send(self.connect(address));
            }
            Command::Post {
                id,
                peer,
                kind,
                key,
                rkeys,
                items,
                reply,
            } => {
                let posted = self.post(id, peer, kind, key, &rkeys, &items);
                let _ = reply.send(posted);
            }
            Command::Cancel { id, reply } => match self.ops.get_mut(&id) {
                Some(op) => {
                    op.cancel = Some((reply, Instant::now() + DRAIN));
                    self.advance();
                }
                None => {
                    // Already ended: hand over the outcome poll_event has not returned.
                    let outcome = lock(&self.table)
                        .active
                        .remove(&id)
                        .and_then(|slot| slot.outcome);
                    let _ = reply.send(outcome);
                }
            },
            Command::Shutdown => {}
        }
    }

    fn register(&mut self, id: u64, addr: usize, len: usize) -> Result<Vec<u8>, Error> {
        if len == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the Connector registers only memory an operation or a Registration borrows
        // and deregisters it before the borrow ends; the region is dropped (unmapped) on
        // Deregister. A peer's access to it is the capability the metadata grants (SPEC §9).
        let region = unsafe { self.context.map(addr as *mut u8, len) }
            .map_err(|e| e.to_ferry(Side::Local))?;
        let rkey = region.pack_rkey().map_err(|e| e.to_ferry(Side::Local))?;
        self.regions.insert(id, region);
        Ok(rkey)
    }

    fn connect(&mut self, address: Vec<u8>) -> Result<u64, Error> {
        if let Some(&peer) = self.by_address.get(&address) {
            match self.endpoints.get(&peer) {
                Some(endpoint) if endpoint.failure().is_none() => return Ok(peer),
                _ => {
                    self.endpoints.remove(&peer);
                    self.by_address.remove(&address);
                }
            }
        }
        // SAFETY: the bytes passed the blob's length and checksum, so they are the address a
        // peer's Worker::address produced, intact (a forged blob is outside the capability
        // model: see crate::blob).
        let remote = unsafe { WorkerAddress::from_bytes(address.clone()) };
        let endpoint = self.worker.connect(&remote, ErrorMode::Peer).map_err(|e| {
            match e.to_ferry(Side::Remote) {
                Error::Backend { message, .. } => Error::PeerLost {
                    reason: format!("cannot connect to the peer's worker: {message}"),
                },
                other => other,
            }
        })?;
        let peer = self.next_peer;
        self.next_peer += 1;
        self.endpoints.insert(peer, endpoint);
        self.by_address.insert(address, peer);
        Ok(peer)
    }

    fn post(
        &mut self,
        id: u64,
        peer: u64,
        kind: OperationKind,
        key: NotificationKey,
        packed: &[Vec<u8>],
        items: &[Item],
    ) -> Result<(), Error> {
        let endpoint = self
            .endpoints
            .get(&peer)
            .cloned()
            .ok_or_else(|| Error::PeerLost {
                reason: "the endpoint to this peer failed".into(),
            })?;
        if let Some(cause) = endpoint.failure() {
            return Err(Error::PeerLost {
                reason: cause.to_string(),
            });
        }
        let mut rkeys: Vec<Option<RemoteKey>> = vec![None; packed.len()];
        let mut rma = Vec::with_capacity(items.len());
        let mut posted = Ok(());
        for item in items {
            let rkey = match &rkeys[item.rkey] {
                Some(rkey) => rkey.clone(),
                None => match endpoint.unpack_rkey(&packed[item.rkey]) {
                    Ok(rkey) => {
                        rkeys[item.rkey] = Some(rkey.clone());
                        rkey
                    }
                    Err(e) => {
                        posted = Err(e.to_ferry(Side::Remote));
                        break;
                    }
                },
            };
            // SAFETY: the operation borrows `item.local` for `item.len` bytes (writable for a
            // read: validated by the facade) and its cancel and drop wait, through this
            // thread, until every request has finished (ActiveOp's drain), so the memory
            // outlives UCX's use of it.
            let request = unsafe {
                match kind {
                    OperationKind::Read => {
                        endpoint.get_raw(item.local as *mut u8, item.len, item.remote, &rkey)
                    }
                    OperationKind::Write => {
                        endpoint.put_raw(item.local as *const u8, item.len, item.remote, &rkey)
                    }
                }
            };
            match request {
                Ok(request) => rma.push(request),
                Err(e) => {
                    posted = Err(failure(&endpoint, &e));
                    break;
                }
            }
        }
        let flush = match posted {
            Ok(()) => endpoint.flush().map_err(|e| failure(&endpoint, &e)),
            Err(e) => Err(e),
        };
        let flush = match flush {
            Ok(flush) => Some(flush),
            Err(e) if rma.is_empty() => return Err(e),
            Err(e) => {
                // Some requests are in flight: they must finish before the caller's memory is
                // released, so they stay as an operation already being cancelled (its peer is
                // told `<key>:cancel`), and the post reports the error.
                let (orphan, _) = mpsc::sync_channel(1);
                self.ops.insert(
                    id,
                    ActiveOp {
                        endpoint,
                        key,
                        phase: Phase::Moving { rma, flush: None },
                        _rkeys: rkeys.into_iter().flatten().collect(),
                        cancel: Some((orphan, Instant::now() + DRAIN)),
                    },
                );
                return Err(e);
            }
        };
        self.ops.insert(
            id,
            ActiveOp {
                endpoint,
                key,
                phase: Phase::Moving { rma, flush },
                _rkeys: rkeys.into_iter().flatten().collect(),
                cancel: None,
            },
        );
        self.advance();
        Ok(())
    }

    /// Moves every active operation on as far as its requests allow; true if any moved.
    fn advance(&mut self) -> bool {
        self.leaving.retain_mut(|request| request.poll().is_none());
        let mut moved = false;
        let mut ended = Vec::new();
        for (&id, op) in &mut self.ops {
            match step(op) {
                Step::Waiting => {}
                Step::Moved => moved = true,
                Step::Ended(event) => {
                    moved = true;
                    ended.push((id, event));
                }
            }
        }
        for (id, event) in ended {
            let Some(op) = self.ops.remove(&id) else {
                continue;
            };
            let ActiveOp { phase, cancel, .. } = op;
            let mut table = lock(&self.table);
            match cancel {
                Some((reply, _)) => {
                    table.active.remove(&id);
                    drop(table);
                    let _ = reply.send(event);
                    // A cancel message (or a notification that won the race) still leaving.
                    if let Phase::Notifying { message } = phase {
                        self.leaving.push(message);
                    }
                }
                None => {
                    if let (Some(slot), Some(event)) = (table.active.get_mut(&id), event) {
                        slot.settle(event);
                    }
                }
            }
        }
        moved
    }
}

enum Step {
    Waiting,
    Moved,
    /// The op is over: its outcome (for a cancel: `None` when cancelled, the terminal event
    /// when it lost the race).
    Ended(Option<Event>),
}

fn step(op: &mut ActiveOp) -> Step {
    let cancelling = op.cancel.is_some();
    match &mut op.phase {
        Phase::Moving { rma, flush } => {
            let mut error = None;
            let mut pending = false;
            for request in rma.iter_mut() {
                match request.poll() {
                    None => pending = true,
                    Some(Err(e)) => error = error.or(Some(e)),
                    Some(Ok(())) => {}
                }
            }
            match flush.as_mut().map(Request::poll) {
                Some(None) => pending = true,
                Some(Some(Err(e))) => error = error.or(Some(e)),
                Some(Some(Ok(()))) | None => {}
            }
            if pending {
                if let Some((_, deadline)) = &op.cancel {
                    if Instant::now() >= *deadline {
                        abort_unsafe("a cancelled UCX transfer did not finish within the drain");
                    }
                }
                return Step::Waiting;
            }
            if let Some(e) = error {
                if cancelling {
                    let sent = op
                        .endpoint
                        .am_send(AM_NOTIFY, Vec::new(), op.key.cancel_message());
                    return match sent {
                        Ok(message) => {
                            op.phase = Phase::Notifying { message };
                            Step::Ended(None)
                        }
                        Err(_) => Step::Ended(None),
                    };
                }
                return Step::Ended(Some(Event::Failed(failure(&op.endpoint, &e))));
            }
            let message = if cancelling {
                op.key.cancel_message()
            } else {
                op.key.completion_message()
            };
            match op.endpoint.am_send(AM_NOTIFY, Vec::new(), message) {
                Ok(message) => {
                    op.phase = Phase::Notifying { message };
                    if cancelling {
                        // The bytes moved, but the peer is told it was cancelled.
                        Step::Ended(None)
                    } else {
                        Step::Moved
                    }
                }
                Err(e) if cancelling => {
                    let _ = e;
                    Step::Ended(None)
                }
                Err(e) => Step::Ended(Some(Event::Failed(failure(&op.endpoint, &e)))),
            }
        }
        Phase::Notifying { message } => match message.poll() {
            None if cancelling => {
                // The notification is on its way: the cancel lost the race.
                Step::Ended(Some(Event::Completed))
            }
            None => Step::Waiting,
            Some(Ok(())) => Step::Ended(Some(Event::Completed)),
            Some(Err(e)) if cancelling => {
                let _ = e;
                Step::Ended(None)
            }
            Some(Err(e)) => Step::Ended(Some(Event::Failed(failure(&op.endpoint, &e)))),
        },
    }
}

/// Sleeps until one of `fds` is readable or `timeout` passes.
fn wait_readable(fds: &[std::os::fd::RawFd], timeout: Duration) {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: `polled` is a live array of `polled.len()` pollfd structs; poll(2) writes only
    // their `revents` fields and keeps no pointer after it returns.
    let _ = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, millis) };
}
