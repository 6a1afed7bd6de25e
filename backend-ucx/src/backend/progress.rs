//! The progress state: the UCP context, worker, memory mappings and endpoints (all `!Send`
//! types), behind one lock ([`Engine`]). The progress thread ([`run`]) runs the commands the
//! backend sends it and, unless owners are polling, moves active operations on (gets or puts,
//! a flush shared by the operations posted to a peer since the last look, then the
//! notification) and matches inbound notifications by key. An owner polling its operation
//! takes the same lock for each look ([`Progress::look`]), and a caller may post its
//! operation under it ([`Progress::post_op`]). Every ending goes through the [`Table`]'s
//! settlers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::{Duration, Instant};

use ferry_core::{Device, Error, NotificationKey, OperationKind, Settler, Side};

use super::device::{self, DeviceContext};
use super::table::Ending;
use super::{
    abort_unsafe, cannot_connect, lock, Table, AM_NOTIFY, BUSY_SLEEP, DRAIN, IDLE_SLEEP, LINGER,
};
use crate::config::{self, ErrorHandling};
use crate::safe::{
    Context, ContextOptions, Endpoint, MemRegion, RemoteKey, Request, Worker, WorkerAddress,
};

/// The progress state behind the lock that the progress thread and polling owners take turns
/// on; `None` once the thread has shut down.
pub(super) type Engine = Mutex<Option<Progress>>;

/// Every engine of this process, so that an owner polling its own can look at the others
/// ([`look_at_others`]).
static ENGINES: Mutex<Vec<Weak<Engine>>> = Mutex::new(Vec::new());

/// Lists `engine` among this process's engines (and forgets those that are gone).
pub(super) fn enlist(engine: &Arc<Engine>) {
    let mut engines = lock(&ENGINES);
    engines.retain(|listed| listed.strong_count() > 0);
    engines.push(Arc::downgrade(engine));
}

/// What [`try_look`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Looked {
    /// It looked at the worker once.
    Once,
    /// Someone else holds the engine now (its thread, or another owner).
    Held,
    /// Not for this thread: shut down, or driven by its thread alone.
    NotOurs,
}

/// Takes `engine`'s lock if nobody holds it, and looks once at its worker if this thread may
/// drive it ([`Progress::drivable`]).
pub(super) fn try_look(engine: &Engine) -> Looked {
    let mut guard = match engine.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return Looked::Held,
    };
    match guard.as_mut().filter(|progress| progress.drivable()) {
        Some(progress) => {
            progress.look();
            Looked::Once
        }
        None => Looked::NotOurs,
    }
}

/// Looks once at every other engine of this process that nobody holds now. An owner polling
/// its own operation stands in for the owners of the others: those may be futures of its own
/// task (both sides of a transfer between two Connectors awaited with `join!`), polled only
/// between its slices. Forgets engines that are gone, and returns at once, allocating
/// nothing, in a process with one engine left.
pub(super) fn look_at_others(own: &Arc<Engine>) {
    let others: Vec<Arc<Engine>> = {
        let mut engines = lock(&ENGINES);
        engines.retain(|listed| listed.strong_count() > 0);
        if engines.len() < 2 {
            return;
        }
        engines
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|engine| !Arc::ptr_eq(engine, own))
            .collect()
    };
    for engine in others {
        let _ = try_look(&engine);
    }
}

/// Until when some owner polls the worker itself (its window, [`ferry_core::spin`]), and how
/// many live operations rely on the progress thread instead (too large for owners to poll, or
/// handed over when their owner's window ended). The thread leaves the worker to owners, and
/// only runs commands, while a window lasts and no operation relies on it.
pub(super) struct Owners {
    epoch: Instant,
    /// Nanoseconds after `epoch`.
    until: AtomicU64,
    relying: AtomicUsize,
}

/// A live operation's reliance on the progress thread, until dropped.
pub(super) struct Relying {
    owners: Arc<Owners>,
}

impl Drop for Relying {
    fn drop(&mut self) {
        self.owners.relying.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Owners {
    pub(super) fn new() -> Owners {
        Owners {
            epoch: Instant::now(),
            until: AtomicU64::new(0),
            relying: AtomicUsize::new(0),
        }
    }

    /// An operation relies on the thread from now until the guard is dropped.
    pub(super) fn rely(self: &Arc<Owners>) -> Relying {
        self.relying.fetch_add(1, Ordering::AcqRel);
        Relying {
            owners: Arc::clone(self),
        }
    }

    /// Whether the thread may leave the worker to owners at `now`: a window lasts (until when)
    /// and no operation relies on the thread.
    fn owned_until(&self, now: Instant) -> Option<Instant> {
        match self.relying.load(Ordering::Acquire) {
            0 => self.until(now),
            _ => None,
        }
    }

    /// An owner polls until `at` (or an earlier window's end, if later).
    pub(super) fn poll_until(&self, at: Instant) {
        let nanos =
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        self.until.fetch_max(nanos, Ordering::AcqRel);
    }

    /// When the last window ends, if that is after `now`.
    fn until(&self, now: Instant) -> Option<Instant> {
        let until = self.epoch + Duration::from_nanos(self.until.load(Ordering::Acquire));
        (until > now).then_some(until)
    }
}

/// One descriptor pair of a post: local memory, remote address, index of its rkey.
pub(super) struct Item {
    pub(super) local: usize,
    pub(super) len: usize,
    /// Where the local memory lives (`local` is a device pointer for CUDA memory).
    pub(super) device: Device,
    pub(super) remote: u64,
    pub(super) rkey: usize,
}

pub(super) enum Command {
    Register {
        id: u64,
        addr: usize,
        len: usize,
        device: Device,
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
    },
    /// The owner closed active operation `id` first (it is cancelled): answer once none of
    /// its requests is in flight and its peer has been told.
    Cancel {
        id: u64,
        reply: SyncSender<()>,
    },
    Shutdown,
}

/// An active operation whose gets or puts, and the flush behind them, are in flight.
struct ActiveOp {
    /// The peer its endpoint reaches: operations to one peer share a flush.
    peer: u64,
    endpoint: Endpoint,
    key: NotificationKey,
    /// The gets or puts.
    requests: Vec<Request>,
    /// The endpoint flush behind them, shared with the operations posted to the same peer
    /// since the last look ([`Progress::issue_flushes`]); `None` until that look.
    flush: Option<SharedFlush>,
    /// Kept until the requests that use them finish.
    _rkeys: Vec<RemoteKey>,
    settler: Settler,
    /// The owner's cancel, waiting for the requests: its answer, and the drain's deadline.
    cancel: Option<(SyncSender<()>, Instant)>,
}

/// One `ucp_ep_flush_nbx`, or why it could not be posted, shared by the operations it
/// covers.
type SharedFlush = Rc<RefCell<Result<Request, crate::Error>>>;

impl ActiveOp {
    /// `None` while a request or the flush is in flight; once none is, how they went (the
    /// first error). A cancelled operation waits for its flush too: the cancel message must not
    /// reach the peer before bytes that are still on their way (on a transport with more than
    /// one lane, a put's local completion does not mean it has landed), or the peer could free
    /// memory a late put then writes into.
    fn poll(&mut self) -> Option<Result<(), crate::Error>> {
        let (mut pending, mut error) = (false, None);
        for request in &mut self.requests {
            match request.poll() {
                None => pending = true,
                Some(Err(e)) => error = error.or(Some(e)),
                Some(Ok(())) => {}
            }
        }
        let flushed = match &self.flush {
            None => None,
            Some(flush) => match &mut *flush.borrow_mut() {
                Ok(request) => request.poll(),
                Err(e) => Some(Err(e.clone())),
            },
        };
        match flushed {
            None => pending = true,
            Some(Err(e)) => error = error.or(Some(e)),
            Some(Ok(())) => {}
        }
        (!pending).then(|| error.map_or(Ok(()), Err))
    }
}

/// The progress state: everything `!Send`, reached only through its [`Engine`].
pub(super) struct Progress {
    table: Arc<Table>,
    /// The callers' cache of connected peers: a failed endpoint's entry is removed.
    peers: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    error_handling: ErrorHandling,
    /// Mapped registrations and their packed remote keys.
    regions: HashMap<u64, (MemRegion, Vec<u8>)>,
    by_address: HashMap<Vec<u8>, u64>,
    endpoints: HashMap<u64, Endpoint>,
    next_peer: u64,
    ops: HashMap<u64, ActiveOp>,
    /// Cancel messages still leaving.
    leaving: Vec<Request>,
    // Dropped last: endpoints and regions hold the worker and context alive anyway.
    worker: Worker,
    context: Context,
    /// Whether the backend moves CUDA memory, or why not ([`device::cuda_support`]).
    cuda_support: Result<(), String>,
    /// The CUDA context current on this thread, once device memory was used; dropped after
    /// the UCX context, whose cuda resources live in it.
    device: DeviceContext,
}

// SAFETY: the UCX objects in a Progress (context, worker, mappings, endpoints, remote keys,
// requests, the flushes its operations share) and the reference counts and cells of the `safe`
// types around them are reachable only through it: no method hands one out, and the active-message
// handler it installs holds only the `Arc<Table>`. A Progress lives in an `Engine`, so one thread
// at a time touches it, and the mutex orders each holder's accesses after the last one's. UCX
// allows a worker made in `UCS_THREAD_MODE_SERIALIZED` (see `safe::Context::create_worker`) to be
// called from any thread, one at a time. CUDA contexts are current per thread, so a Progress that
// has moved device memory is driven by its progress thread alone (`drivable`).
unsafe impl Send for Progress {}

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
    pub(super) fn start(
        table: Arc<Table>,
        peers: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
        error_handling: ErrorHandling,
    ) -> Result<Progress, Error> {
        let context =
            Context::new(&ContextOptions { wakeup: true }).map_err(|e| e.to_ferry(Side::Local))?;
        let worker = context
            .create_worker()
            .map_err(|e| e.to_ferry(Side::Local))?;
        let handler_table = table.clone();
        worker
            .set_am_handler(AM_NOTIFY, move |message| {
                handler_table.notify(message.data);
            })
            .map_err(|e| e.to_ferry(Side::Local))?;
        let cuda_support = device::cuda_support(&context);
        Ok(Progress {
            table,
            peers,
            error_handling,
            regions: HashMap::new(),
            by_address: HashMap::new(),
            endpoints: HashMap::new(),
            next_peer: 1,
            ops: HashMap::new(),
            leaving: Vec::new(),
            worker,
            context,
            cuda_support,
            device: DeviceContext::default(),
        })
    }

    /// Whether the backend moves CUDA memory, or why not.
    pub(super) fn cuda_support(&self) -> Result<(), String> {
        self.cuda_support.clone()
    }

    /// The worker's address, for the blob.
    pub(super) fn address(&self) -> Result<Vec<u8>, Error> {
        self.worker
            .address()
            .map(|address| address.as_bytes().to_vec())
            .map_err(|e| e.to_ferry(Side::Local))
    }

    /// Whether a thread other than the progress thread may drive it: not once it has moved
    /// device memory (UCX's cuda transports use the calling thread's current CUDA context).
    pub(super) fn drivable(&self) -> bool {
        !self.device.is_bound()
    }

    /// Whether an owner's cancel waits for its operation's requests to finish.
    fn cancelling(&self) -> bool {
        self.ops.values().any(|op| op.cancel.is_some())
    }

    /// One look: posts the flushes operations posted since the last look wait for
    /// ([`Progress::issue_flushes`]), progresses the worker until it has nothing more to do (at
    /// most 64 rounds) and ends the operations whose requests all finished. Whether anything
    /// happened.
    pub(super) fn look(&mut self) -> bool {
        self.issue_flushes();
        let mut busy = false;
        for _ in 0..64 {
            match self.worker.progress() {
                Ok(0) | Err(_) => break,
                Ok(_) => busy = true,
            }
        }
        if busy {
            self.forget_failed();
        }
        self.advance() || busy
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                id,
                addr,
                len,
                device,
                reply,
            } => {
                let _ = reply.send(self.register(id, addr, len, device));
            }
            Command::Deregister { id } => self.unmap(id),
            Command::Connect { address, reply } => {
                let _ = reply.send(self.connect(&address));
            }
            Command::Post {
                id,
                peer,
                kind,
                key,
                rkeys,
                items,
            } => self.post_op(id, peer, kind, key, &rkeys, &items),
            Command::Cancel { id, reply } => match self.ops.get_mut(&id) {
                Some(op) => {
                    op.cancel = Some((reply, Instant::now() + DRAIN));
                    self.advance();
                }
                // Already ended: none of its requests is in flight.
                None => {
                    let _ = reply.send(());
                }
            },
            Command::Shutdown => {}
        }
    }

    /// Posts active operation `id` (its gets or puts on the endpoint to `peer`; the flush
    /// behind them waits for the next look), or ends it at once: not posted if its owner closed
    /// it first (the peer is told), `Errored` if the post failed.
    pub(super) fn post_op(
        &mut self,
        id: u64,
        peer: u64,
        kind: OperationKind,
        key: NotificationKey,
        rkeys: &[Vec<u8>],
        items: &[Item],
    ) {
        // Always there: the owner forgets the operation only after it was ended here.
        let live = self.table.settler(id).filter(Settler::is_live);
        let Some(settler) = live else {
            // Closed before it was posted: nothing is posted, the peer is told.
            let endpoint = self.endpoints.get(&peer).cloned();
            self.table.forget(id);
            self.tell_cancelled(endpoint.as_ref(), &key);
            return;
        };
        match self.post(peer, kind, rkeys, items) {
            Ok((endpoint, requests, _rkeys)) => {
                let op = ActiveOp {
                    peer,
                    endpoint,
                    key,
                    requests,
                    flush: None,
                    _rkeys,
                    settler,
                    cancel: None,
                };
                self.ops.insert(id, op);
                self.advance();
            }
            // `post` returned once no request of it could touch the caller's memory.
            Err(e) => {
                let endpoint = self.endpoints.get(&peer).cloned();
                self.end(id, &settler, endpoint.as_ref(), &key, Err(e));
            }
        }
    }

    /// Unmaps registration `id`, if mapped.
    pub(super) fn unmap(&mut self, id: u64) {
        self.regions.remove(&id);
    }

    /// Maps registration `id` (`len` bytes at `addr` on `device`) and packs its remote key;
    /// the key it already has if mapped.
    pub(super) fn register(
        &mut self,
        id: u64,
        addr: usize,
        len: usize,
        device: Device,
    ) -> Result<Vec<u8>, Error> {
        if len == 0 {
            return Ok(Vec::new());
        }
        if let Some((_, rkey)) = self.regions.get(&id) {
            // Two passive operations exposed it at once: both asked.
            return Ok(rkey.clone());
        }
        let memory = self.device.enter(device)?;
        // SAFETY: the Connector registers only memory an operation or a Registration borrows
        // and deregisters it before the borrow ends; the region is dropped (unmapped) on
        // Deregister. A peer's access to it is the capability the metadata grants (SPEC §9).
        // Device memory is mapped as such, with its device's context current (`enter`).
        let region = unsafe { self.context.map_as(addr as *mut u8, len, memory) }
            .map_err(|e| e.to_ferry(Side::Local))?;
        let rkey = region.pack_rkey().map_err(|e| e.to_ferry(Side::Local))?;
        self.regions.insert(id, (region, rkey.clone()));
        Ok(rkey)
    }

    /// The peer whose worker has `address`: a cached endpoint, or a new one.
    pub(super) fn connect(&mut self, address: &[u8]) -> Result<u64, Error> {
        if let Some(&peer) = self.by_address.get(address) {
            match self.endpoints.get(&peer) {
                Some(endpoint) if endpoint.failure().is_none() => return Ok(peer),
                _ => self.forget(peer),
            }
        }
        // SAFETY: the bytes passed the blob's length and checksum, so they are the address a
        // peer's Worker::address produced, intact (a forged blob is outside the capability
        // model: see crate::blob).
        let remote = unsafe { WorkerAddress::from_bytes(address.to_vec()) };
        let (endpoint, _mode) = match config::connect(&self.worker, &remote, self.error_handling) {
            Ok(connected) => connected,
            // The transports here can connect (to a worker of this process), so the peer's
            // cannot be reached: over tcp, its connect was refused.
            Err(e)
                if e.is_unreachable() && config::connects_locally(self.error_handling).is_ok() =>
            {
                return Err(Error::PeerLost {
                    reason: format!(
                        "the peer's worker cannot be reached (gone, or none of its transports \
                         reach ours): {e}"
                    ),
                });
            }
            Err(e) => return Err(cannot_connect(&e)),
        };
        let peer = self.next_peer;
        self.next_peer += 1;
        self.endpoints.insert(peer, endpoint);
        self.by_address.insert(address.to_vec(), peer);
        lock(&self.peers).insert(address.to_vec(), peer);
        Ok(peer)
    }

    /// Drops the endpoint to `peer` and every cache entry naming it, so the next connect to
    /// that worker makes a new endpoint.
    fn forget(&mut self, peer: u64) {
        self.endpoints.remove(&peer);
        self.by_address.retain(|_, p| *p != peer);
        lock(&self.peers).retain(|_, p| *p != peer);
    }

    /// Forgets every peer whose endpoint UCX reported failed.
    fn forget_failed(&mut self) {
        let failed: Vec<u64> = self
            .endpoints
            .iter()
            .filter(|(_, endpoint)| endpoint.failure().is_some())
            .map(|(&peer, _)| peer)
            .collect();
        for peer in failed {
            self.forget(peer);
        }
    }

    /// Posts a get or put per item on the endpoint to `peer` (the flush behind them waits for
    /// the next look, [`Progress::issue_flushes`]): that endpoint, the requests and the remote
    /// keys they use. A post that fails returns once none of its requests is in flight.
    fn post(
        &mut self,
        peer: u64,
        kind: OperationKind,
        packed: &[Vec<u8>],
        items: &[Item],
    ) -> Result<(Endpoint, Vec<Request>, Vec<RemoteKey>), Error> {
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
        // Every remote key the descriptors use, first: a peer's malformed key must fail the
        // post before a single request touches the caller's memory.
        let mut rkeys: Vec<Option<RemoteKey>> = vec![None; packed.len()];
        for item in items {
            let Some(slot) = rkeys.get_mut(item.rkey) else {
                return Err(Error::InvalidMetadata {
                    reason: "a descriptor names a remote key the metadata does not hold".into(),
                });
            };
            if slot.is_none() {
                let rkey = endpoint
                    .unpack_rkey(&packed[item.rkey])
                    .map_err(|e| e.to_ferry(Side::Remote))?;
                *slot = Some(rkey);
            }
        }
        let mut rma = Vec::with_capacity(items.len());
        let mut posted = Ok(());
        for item in items {
            // Unpacked above for every descriptor.
            let Some(Some(rkey)) = rkeys.get(item.rkey) else {
                posted = Err(Error::InvalidMetadata {
                    reason: "a descriptor names a remote key the metadata does not hold".into(),
                });
                break;
            };
            let memory = match self.device.enter(item.device) {
                Ok(memory) => memory,
                Err(e) => {
                    posted = Err(e);
                    break;
                }
            };
            // SAFETY: the operation borrows `item.local` for `item.len` bytes (writable for a
            // read: validated by the facade); its cancel and drop wait, through this thread,
            // until every request has finished (ActiveOp's drain), and a post that fails after
            // posting some requests returns only once they have finished (`drain` below), so
            // the memory outlives UCX's use of it. Device memory is named as such, with its
            // device's context current (`enter`).
            let (local, len, remote) = (item.local, item.len, item.remote);
            let request = unsafe {
                match kind {
                    OperationKind::Read => {
                        endpoint.get_raw(local as *mut u8, len, memory, remote, rkey)
                    }
                    OperationKind::Write => {
                        endpoint.put_raw(local as *const u8, len, memory, remote, rkey)
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
        if let Err(e) = posted {
            // Requests already posted move the caller's memory: the post reports its error
            // only once they have finished, since the caller may free the memory then.
            self.drain(&mut rma);
            return Err(e);
        }
        Ok((endpoint, rma, rkeys.into_iter().flatten().collect()))
    }

    /// Posts one endpoint flush per peer behind every operation posted to it since the last
    /// look, shared by them: operations begun together (a batch of writes before their
    /// owners await them) cost the peer one flush and its reply, not one each.
    fn issue_flushes(&mut self) {
        let mut issued: HashMap<u64, SharedFlush> = HashMap::new();
        for op in self.ops.values_mut() {
            if op.flush.is_some() {
                continue;
            }
            let flush = issued
                .entry(op.peer)
                .or_insert_with(|| Rc::new(RefCell::new(op.endpoint.flush())));
            op.flush = Some(flush.clone());
        }
    }

    /// Progresses the worker until every request in `rma` has finished (well or not), for up to
    /// [`DRAIN`]; past that UCX still owns memory its caller is about to free, and nothing safe
    /// is left but to stop the process.
    fn drain(&mut self, rma: &mut [Request]) {
        let deadline = Instant::now() + DRAIN;
        while rma.iter_mut().any(|request| request.poll().is_none()) {
            if Instant::now() >= deadline {
                abort_unsafe("the requests of a failed UCX post did not finish within the drain");
            }
            let _ = self.worker.progress();
        }
    }

    /// Ends every active operation none of whose requests is still in flight; true if any
    /// ended. A cancelled one that overstays the drain stops the process (see [`DRAIN`]).
    fn advance(&mut self) -> bool {
        self.leaving.retain_mut(|request| request.poll().is_none());
        let mut ended = Vec::new();
        for (&id, op) in &mut self.ops {
            match op.poll() {
                Some(moved) => ended.push((id, moved)),
                None => {
                    if let Some((_, deadline)) = &op.cancel {
                        if Instant::now() >= *deadline {
                            abort_unsafe(
                                "a cancelled UCX transfer did not finish within the drain",
                            );
                        }
                    }
                }
            }
        }
        let any = !ended.is_empty();
        for (id, moved) in ended {
            let Some(op) = self.ops.remove(&id) else {
                continue;
            };
            let moved = moved.map_err(|e| failure(&op.endpoint, &e));
            self.end(id, &op.settler, Some(&op.endpoint), &op.key, moved);
            if let Some((reply, _)) = op.cancel {
                let _ = reply.send(());
            }
        }
        any
    }

    /// Ends active operation `id`, none of whose requests is in flight: through the table, the
    /// completion notification is sent and settles it `Complete` (or the error it met settles
    /// it `Errored`), unless its owner closed it first; then the peer is told it was cancelled.
    fn end(
        &mut self,
        id: u64,
        settler: &Settler,
        endpoint: Option<&Endpoint>,
        key: &NotificationKey,
        moved: Result<(), Error>,
    ) {
        let notify = || match endpoint {
            Some(endpoint) => endpoint
                .am_send(AM_NOTIFY, Vec::new(), key.completion_message())
                .map_err(|e| failure(endpoint, &e)),
            None => Err(Error::PeerLost {
                reason: "the endpoint to this peer failed".into(),
            }),
        };
        match self.table.end(id, settler, moved, notify) {
            Ending::Notified(message) => self.leaving.push(message),
            Ending::Failed => {}
            Ending::Cancelled => self.tell_cancelled(endpoint, key),
        }
    }

    /// Sends `key`'s cancel message (best effort: a peer that cannot be reached learns
    /// nothing); the message is kept until it has left.
    fn tell_cancelled(&mut self, endpoint: Option<&Endpoint>, key: &NotificationKey) {
        let sent = endpoint.map(|e| e.am_send(AM_NOTIFY, Vec::new(), key.cancel_message()));
        if let Some(Ok(message)) = sent {
            self.leaving.push(message);
        }
    }
}

/// The progress thread: runs commands, and drives the worker unless owners poll it
/// themselves ([`Owners`]), until a `Shutdown`; then drops the progress state.
///
/// With nothing to do it keeps polling (yielding the CPU) for [`LINGER`] after its last
/// command or event, then sleeps on the worker's event fd and the wake socket (bounded, in
/// case a transport signals no event). While owners poll it sleeps on the wake socket alone,
/// until their last window ends.
pub(super) fn run(
    engine: &Engine,
    owners: &Owners,
    inbox: Receiver<Command>,
    mut wake: UnixStream,
) {
    // However the thread ends (a panic included), the progress state goes with it: owners
    // then find no engine to drive, and a cancel that finds the thread gone may rely on
    // nothing driving the worker any more.
    struct TakeOnExit<'a>(&'a Engine);
    impl Drop for TakeOnExit<'_> {
        fn drop(&mut self) {
            let progress = lock(self.0).take();
            drop(progress);
        }
    }
    let _take_on_exit = TakeOnExit(engine);
    let event_fd = lock(engine)
        .as_ref()
        .and_then(|progress| progress.worker.event_fd().ok());
    let mut active = Instant::now();
    loop {
        let mut drained = [0u8; 64];
        while matches!(wake.read(&mut drained), Ok(n) if n > 0) {}
        let mut guard = lock(engine);
        let Some(progress) = guard.as_mut() else {
            return;
        };
        let mut busy = false;
        loop {
            match inbox.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    let progress = guard.take();
                    drop(guard);
                    drop(progress);
                    return;
                }
                Ok(command) => {
                    busy = true;
                    progress.handle(command);
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        // A cancel waits on this thread for its operation's requests to finish: drive them.
        let owned = owners
            .owned_until(now)
            .filter(|_| progress.drivable() && !progress.cancelling());
        if owned.is_none() {
            busy |= progress.look();
        }
        if busy {
            active = Instant::now();
            continue;
        }
        if let Some(until) = owned {
            drop(guard);
            wait_readable(&[wake.as_raw_fd()], (until - now).min(BUSY_SLEEP));
            continue;
        }
        if active.elapsed() < LINGER {
            drop(guard);
            std::thread::yield_now();
            continue;
        }
        // Sleep until the worker or a caller has something, with a bound in case a transport
        // signals no event.
        let bound = if progress.ops.is_empty() && progress.leaving.is_empty() {
            IDLE_SLEEP
        } else {
            BUSY_SLEEP
        };
        let armed = progress.worker.arm();
        drop(guard);
        match (event_fd, armed) {
            (_, Ok(false)) => continue,
            (Some(fd), Ok(true)) => wait_readable(&[fd, wake.as_raw_fd()], bound),
            _ => wait_readable(&[wake.as_raw_fd()], bound),
        }
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
    let timeout = timeout.max(Duration::from_micros(1));
    let limit = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `polled` is a live array of `polled.len()` pollfd structs and `limit` a live
    // timespec; ppoll(2) writes only the `revents` fields, keeps no pointer after it returns,
    // and with a null signal mask changes no signal handling.
    let _ = unsafe {
        libc::ppoll(
            polled.as_mut_ptr(),
            polled.len() as libc::nfds_t,
            &limit,
            std::ptr::null(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looking_at_others_forgets_engines_that_are_gone() {
        let own: Arc<Engine> = Arc::new(Mutex::new(None));
        let other: Arc<Engine> = Arc::new(Mutex::new(None));
        enlist(&own);
        enlist(&other);
        // This weak handle keeps the allocation, so no other engine can reuse its address.
        let gone = Arc::downgrade(&other);
        drop(other);
        look_at_others(&own);
        let listed = |engine: &Weak<Engine>| lock(&ENGINES).iter().any(|w| w.ptr_eq(engine));
        assert!(!listed(&gone), "a dropped engine stays listed");
        assert!(listed(&Arc::downgrade(&own)));
    }

    /// Two progress states of this process, one exposing `target` and one writing into it,
    /// or why UCX cannot connect them here.
    fn pair(target: &[u8]) -> Result<(Progress, Progress, u64, Vec<u8>), String> {
        let handling = ErrorHandling::PeerIfSupported;
        super::super::available_with(&crate::UcxConfig {
            error_handling: handling,
            ..crate::UcxConfig::default()
        })?;
        let start = |table| {
            let peers = Arc::new(Mutex::new(HashMap::new()));
            Progress::start(table, peers, handling).map_err(|e| e.to_string())
        };
        let mut passive = start(Arc::new(super::super::table::Table::default()))?;
        let mut active = start(Arc::new(super::super::table::Table::default()))?;
        let rkey = passive
            .register(1, target.as_ptr() as usize, target.len(), Device::Cpu)
            .map_err(|e| e.to_string())?;
        let address = passive.address().map_err(|e| e.to_string())?;
        let peer = active.connect(&address).map_err(|e| e.to_string())?;
        Ok((passive, active, peer, rkey))
    }

    #[test]
    fn operations_posted_to_a_peer_between_looks_share_one_flush() {
        const OPS: usize = 4;
        const PIECE: usize = 4096;
        let target = vec![0u8; OPS * PIECE];
        let (mut passive, mut active, peer, rkey) = match pair(&target) {
            Ok(pair) => pair,
            Err(why) => return println!("skipped: {why}"),
        };
        let sources: Vec<Vec<u8>> = (0..OPS).map(|i| vec![i as u8 + 1; PIECE]).collect();
        let mut settlements = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let id = i as u64;
            settlements.push(active.table.begin(id));
            let item = Item {
                local: source.as_ptr() as usize,
                len: PIECE,
                device: Device::Cpu,
                remote: target.as_ptr() as u64 + (i * PIECE) as u64,
                rkey: 0,
            };
            let key = NotificationKey::from_random_bytes([i as u8 + 1; 16]);
            let kind = OperationKind::Write;
            active.post_op(id, peer, kind, key, std::slice::from_ref(&rkey), &[item]);
        }
        assert!(
            active.ops.values().all(|op| op.flush.is_none()),
            "a post leaves its flush to the next look"
        );
        active.look();
        let flushes: Vec<SharedFlush> = active
            .ops
            .values()
            .filter_map(|op| op.flush.clone())
            .collect();
        assert_eq!(
            flushes.len(),
            OPS,
            "every operation has a flush after a look"
        );
        assert!(
            flushes.iter().all(|flush| Rc::ptr_eq(flush, &flushes[0])),
            "operations to one peer posted between two looks share one flush"
        );
        drop(flushes);
        let deadline = Instant::now() + Duration::from_secs(10);
        while settlements.iter().any(|s| s.ended().is_none()) {
            assert!(
                Instant::now() < deadline,
                "the writes did not end within 10 s"
            );
            active.look();
            passive.look();
        }
        for settlement in &settlements {
            assert_eq!(
                settlement.ended(),
                Some(ferry_core::state::Event::Completed)
            );
        }
        for (i, piece) in target.chunks(PIECE).enumerate() {
            assert!(
                piece.iter().all(|&b| b == i as u8 + 1),
                "piece {i} did not arrive"
            );
        }
    }

    #[test]
    fn a_cancelled_operation_still_waits_for_its_flush() {
        const PIECE: usize = 4096;
        let target = vec![0u8; PIECE];
        let (mut passive, mut active, peer, rkey) = match pair(&target) {
            Ok(pair) => pair,
            Err(why) => return println!("skipped: {why}"),
        };
        let source = vec![7u8; PIECE];
        let id = 1;
        let _settlement = active.table.begin(id);
        let item = Item {
            local: source.as_ptr() as usize,
            len: PIECE,
            device: Device::Cpu,
            remote: target.as_ptr() as u64,
            rkey: 0,
        };
        let key = NotificationKey::from_random_bytes([9; 16]);
        let kind = OperationKind::Write;
        active.post_op(id, peer, kind, key, std::slice::from_ref(&rkey), &[item]);
        // The put finishes locally; no look yet, so no flush is posted.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let op = active.ops.get_mut(&id).expect("posted");
            if op
                .requests
                .iter_mut()
                .all(|request| request.poll().is_some())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the put did not finish within 10 s"
            );
            let _ = active.worker.progress();
            passive.look();
        }
        assert!(active.ops[&id].flush.is_none());
        let (reply, answered) = std::sync::mpsc::sync_channel(1);
        active.handle(Command::Cancel { id, reply });
        assert!(
            active.ops.contains_key(&id) && answered.try_recv().is_err(),
            "a cancel must not end the operation (and tell the peer) before its flush"
        );
        while answered.try_recv().is_err() {
            assert!(
                Instant::now() < deadline,
                "the cancel did not end within 10 s"
            );
            active.look();
            passive.look();
        }
        assert!(!active.ops.contains_key(&id));
    }

    #[test]
    fn an_operation_relying_on_the_thread_keeps_owners_windows_from_parking_it() {
        let owners = Arc::new(Owners::new());
        let now = Instant::now();
        assert_eq!(owners.owned_until(now), None, "no window yet");
        let end = now + Duration::from_secs(60);
        owners.poll_until(end);
        let owned = owners.owned_until(now).expect("a window lasts");
        assert!(owned > now && owned <= end + Duration::from_micros(1));
        let relying = owners.rely();
        assert_eq!(
            owners.owned_until(now),
            None,
            "a large or handed-over operation"
        );
        drop(relying);
        assert!(owners.owned_until(now).is_some());
        assert_eq!(
            owners.owned_until(end + Duration::from_secs(1)),
            None,
            "window over"
        );
    }
}
