//! [`UcxBackend`]: ferry's `Backend` over UCP, one context and worker per backend, behind one
//! lock that its progress thread and the owners of its operations take in turns (the
//! [`safe`](crate::safe) types are `!Send`; the worker is made in
//! `UCS_THREAD_MODE_SERIALIZED`).
//!
//! ```text
//!  caller threads (Connector, operations)          progress thread "ferry-ucx"
//!  ──────────────────────────────────────          ───────────────────────────
//!  owners drive it (host memory, owner_spin > 0):   runs commands: device memory's maps
//!   map, connect (cached), post under the lock       and posts (its CUDA context is
//!   poll_event: look at the worker for a window ─┐   current there), cancels, and
//!                                                ▼   everything when owner_spin is 0
//!                   Engine (mutex): context, worker, mappings, endpoints, operations
//!                   get/put per descriptor → ep flush → am_send(key) once flushed
//!                   (the flush at the next look, one per peer for all posted since)
//!  poll_event: Settlement ◄── settle + wake ─── Settlers in the table: endings, and
//!                                               inbound AMs matched by key
//!  the thread drives the worker unless owners poll; it sleeps on the worker's event fd
//!  and its wake socket (poll(2), bounded) when idle
//! ```
//!
//! # Completion and cancellation (SPEC §5)
//! The active side puts or gets each descriptor, flushes the endpoint, and only when the flush
//! has completed (every byte is in place at the peer) sends the notification key's text as an
//! active message. Active messages on one endpoint arrive in order after operations flushed
//! before them, so the passive side sees the key after the data. The flush is posted at the
//! next look at the worker after the post (an owner's poll, or the thread's next round once
//! no owner's window parks it), one per peer for every operation posted to it since the last
//! look, cancelled ones included: a batch of
//! operations begun before they are awaited shares one flush, and its peer answers one flush
//! request instead of one per operation (with `ferry-bench-ucx`, a batch of eight 64 KiB writes
//! over shared memory took 74–76 µs p50 instead of 100–103, eight 4 KiB writes over tcp 203–251
//! µs instead of 267–279; BENCHMARKS.md, "ucx").
//!
//! Each operation's ending is decided once, through ferry-core's [`Settlement`]: the operation
//! holds it, the [`table`] holds its `Settler` for whoever drives the worker (see there, and the loom model
//! that runs that file). The active operation is `Complete` once UCX has taken the notification
//! (`ucp_am_send_nbx` accepted it; a send that fails at once is `Errored`): sending it and
//! settling are one step, so a cancel or drop comes wholly before it (the peer is sent
//! `<key>:cancel` instead) or after it (the cancel lost the race: `Complete`). A cancel that
//! decided lets posted gets and puts finish first (UCX cannot take back RMA,
//! `ucp_request_cancel` does nothing for it), for up to [`DRAIN`], before it returns; a post
//! the thread has not yet started is not started. A peer that does not let the requests finish
//! within [`DRAIN`] leaves UCX owning memory the caller is about to free; nothing safe is left,
//! and the process aborts (as the nixl backend does). Force-closing the endpoint instead is not
//! implemented.
//!
//! # What the passive side can see
//! Nothing before the notification: it cannot report `InProgress`, and it holds no endpoint
//! to its peer, so it cannot see the peer vanish. The active side sees a lost peer through
//! UCX's peer error handling (`UCP_ERR_HANDLING_MODE_PEER`) and ends `Errored(PeerLost)`,
//! wherever an enabled transport supports that mode (tcp, verbs). Where none does (UCX 1.13's
//! shared memory and CMA, under `UCX_TLS=posix,cma,self`), the default
//! [`Peer`](crate::ErrorHandling::Peer) refuses to connect;
//! [`PeerIfSupported`](crate::ErrorHandling::PeerIfSupported) and
//! [`None`](crate::ErrorHandling::None) make endpoints without error handling there, and a
//! lost peer is then **not observed** on either side (see `ErrorHandling::None` for what was
//! seen). A connect that `ucp_ep_create` refuses with `UCS_ERR_UNREACHABLE` is
//! `PeerLost` where the same settings connect two workers of this process (the peer is gone,
//! or reaches none of our transports), and a `Backend` error with that code where they do not
//! (the configuration reaches nothing; [`available`] then says so too).
//!
//! # Latency
//! Handing work between threads costs a wake-up each (tens of microseconds on a virtual
//! machine with few cores), and a transfer driven by a progress thread is a chain of them: the
//! caller hands the post to the thread, the peer's thread wakes for the data and the flush,
//! this thread for the flush's acknowledgement, the peer's thread and then its task for the
//! notification. So the owners drive the worker themselves where they can:
//! - **Posting** a small active operation over host memory (at most [`LARGE`] bytes in at
//!   most [`INLINE_DESCRIPTORS`] descriptors: a larger post is real work), mapping a
//!   readable's or writable's host memory, and connecting to a new peer run on the caller's
//!   thread, under the lock ([`UcxStats::thread_commands`] counts what still goes to the
//!   thread).
//! - **Awaiting**: for [`UcxConfig::owner_spin`] (1 ms) from its first poll, an owner looks
//!   at the worker itself, back to back within 200 µs slices ([`ferry_core::spin`]), and at
//!   this process's other ucx workers too (the other side of a `join!` in its task may be
//!   one). An operation over [`LARGE`] bytes is left to the threads from the start.
//!   Until the last owner's window ends the thread leaves the worker alone and sleeps on
//!   its wake socket, unless a live operation relies on it (a large one, or one whose owner's
//!   window ended); afterwards it drives the worker again, lingering [`LINGER`] after its
//!   last event before it sleeps on the event fd. An owner whose window ends with its
//!   operation still running wakes the thread (which may be asleep, armed before that
//!   operation existed).
//! - **The price**: a window lasts its `owner_spin` even when its operation ends sooner, and
//!   meanwhile nobody looks at the worker for an operation that no owner awaits yet. Where
//!   the passive side's worker must progress a transfer (tcp; shared memory's active
//!   messages, which carry small transfers; not RDMA or CMA), a readable or writable exposed
//!   within `owner_spin` of the last awaited operation, but awaited later, holds up its
//!   peer's transfer until it is awaited or the window ends: at most `owner_spin`. Waking the thread instead would cost every
//!   awaited operation a wake-up and a thread competing for the CPU. Await soon after
//!   exposing, or make `owner_spin` smaller.
//!
//! Device memory is the thread's alone: UCX's cuda transports use the calling thread's
//! current CUDA context, so once a backend has moved device memory only its thread drives it.
//! `owner_spin` zero leaves everything to the thread, as before (and no owner of another
//! backend looks at its worker).
//!
//! **CPU cost.** An idle backend's thread sleeps (`the_progress_thread_sleeps_when_idle`); an
//! owner spins (yielding between looks) for at most `owner_spin` per operation it awaits, and
//! the thread for at most [`LINGER`] after its last command or event. Measured with
//! `ferry-bench-ucx` (BENCHMARKS.md, "ucx"): across two processes under
//! `UCX_TLS=posix,cma,self` a 4 KiB write went from a ~100–118 µs p50 to 52 µs; in one
//! process, a 4 KiB writable plus write awaited with `join!` from 48 µs to 8 µs.
//!
//! # Revocation (SPEC §7, §9)
//! Ending a passive operation forgets its key; the memory stays mapped while a registration
//! covers it, and even after `ucp_mem_unmap` some transports (CMA on one host, tcp's software
//! RMA) reach raw addresses without consulting registrations. So a peer holding stale
//! metadata is not refused ([`Capabilities::enforces_revocation`] is false): keep a passive
//! operation's memory alive until its peer is done.
//!
//! Worse, with UCX's tcp transport a peer's get is served by the passive side's own worker,
//! from the raw address: if that memory was freed (a passive operation cancelled or dropped
//! while its peer still reads, or a peer reading with stale metadata), the passive process
//! reads freed memory and may crash. The two-process conformance suite saw this once as a
//! SIGSEGV in `ucp_get_req_handler` inside a backend host. So a peer holding metadata can
//! crash the passive process, against SPEC §9; nothing here prevents it yet.
//!
//! # What a peer's metadata can still do (known, not yet prevented)
//! A review with probes (none of them in the suite) found, on this host's transports (CMA by
//! default, tcp with `UCX_TLS=tcp`):
//! - **Any address.** The region list in a `ferry-ucx/1` blob is the peer's to write; the
//!   active side checks descriptors against it, but CMA and tcp's software RMA serve any
//!   address of the passive process, registered or not. A forged blob read 4 KiB of memory
//!   that was never registered or offered.
//! - **Writes through a readable.** Registrations are mapped without `PROT` flags (the
//!   registration cache shares them between readables and writables), so metadata flipped to
//!   `Write` overwrote a readable's `&[u8]`; verbs would enforce a read-only mapping, CMA and
//!   tcp would not.
//! - **A forged worker address** can trip a UCX assertion in `ucp_ep_create` (SIGABRT): UCX
//!   1.13 parses addresses without a length, and the blob's checksum only catches damage.
//! - **A stalled peer** (alive, not progressing) makes a cancel wait out [`DRAIN`] and then
//!   abort the active process; nixl's backend disconnects the peer first, this one does not
//!   yet.
//!
//! Only the first is inherent to the transports; the others need a read-only mapping per
//! readable, a structural address check, and a forced endpoint close.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use ferry_core::spin::{self, Look, Spin};
use ferry_core::state::Event;
use ferry_core::{
    BoxFuture, Capabilities, Descriptor, Device, DeviceKind, EndpointBlob, Error, Exposed, KeyPool,
    NotificationKey, OperationKind, Peer, RdmaMetadata, Region, RegistrationId, Settlement, Side,
    Transfer,
};

mod device;
mod progress;
mod table;
#[cfg(test)]
mod table_tests;

/// The synchronisation `table` uses: std's here, loom's where ferry-core's loom model compiles
/// that file.
mod sync {
    pub(super) use std::sync::{Mutex, MutexGuard};
}

use crate::blob::{RegionKey, UcxBlob, NAME};
use crate::config::{self, UcxConfig};
use progress::{Command, Engine, Item, Looked, Owners, Progress, Relying};
use table::Table;

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

/// An operation moving more bytes than this is the progress threads' alone: its owner does
/// not poll the worker, and an active one is posted by the thread. The wake-ups owners save
/// matter little to a transfer this long, and an owner spinning beside the threads takes a
/// CPU that they need: an owner drives its worker and the process's others one after
/// another, the threads side by side, and over tcp both sides' workers copy. In one process
/// over tcp (`ferry bench --quick`, `join!` of both sides), 1 MiB writes took a 1.43 ms p50
/// with a 1 ms window, 1.52 ms with one slice, and 0.97–1.09 ms with the threads alone.
const LARGE: usize = 256 * 1024;

/// The most descriptors an active operation posted on its caller's thread may have (and it
/// moves at most [`LARGE`] bytes); a larger one is posted by the progress thread. Posting
/// does real work: over tcp UCX copies a put into the socket as it posts it, so in one
/// process 1 MiB took `begin_write` about 1 ms on the caller's thread (and the whole write
/// 1.5 ms, where the thread posting it took 1.0 ms), and 256 descriptors of 4 KiB 1.1 ms.
/// `begin_*` must not block its task that long.
const INLINE_DESCRIPTORS: usize = 16;

/// How long the progress thread keeps polling (yielding the CPU between polls) after its
/// last command or event before it sleeps. Waking a thread that sleeps in poll(2) costs tens
/// of microseconds on a virtual machine, and a transfer is a chain of such wake-ups on both
/// sides (the post, the data, the flush's acknowledgement, the notification); a thread that
/// lingers catches the next link without one. An idle backend spends at most this much CPU
/// after its last activity.
pub(crate) const LINGER: Duration = Duration::from_micros(200);

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

/// Whether UCX can be used on this machine with the [`UcxConfig`] of this process's
/// environment ([`UcxConfig::from_env`]; by default peer error mode): a context and two
/// workers can be made, and one can connect to the other (in peer error mode, under
/// `UCX_TLS=posix,cma,self` or `UCX_TLS=cma`, say, none can). Checked once per process; a peer
/// on another host may still be unreachable.
pub fn available() -> Result<(), String> {
    available_with(&UcxConfig::from_env()?)
}

/// [`available`] for a backend made with `config`.
pub fn available_with(config: &UcxConfig) -> Result<(), String> {
    config::connects_locally(config.error_handling).map_err(|e| cannot_connect(&e).to_string())
}

/// The error of a connect that `ucp_ep_create` refused. It does no I/O, so its failure is
/// never a lost peer: `UCS_ERR_UNREACHABLE` means no transport enabled here (`UCX_TLS`)
/// reaches the peer's worker with the error handling asked for. The native code is kept.
fn cannot_connect(error: &crate::Error) -> Error {
    match error {
        crate::Error::Status { code, .. } => Error::Backend {
            backend: NAME,
            side: Side::Local,
            code: i64::from(*code),
            message: if error.is_unreachable() {
                format!(
                    "no transport enabled here reaches the peer's worker (check UCX_TLS and \
                     UcxConfig::error_handling): {error}"
                )
            } else {
                format!("cannot connect to the peer's worker: {error}")
            },
        },
        other => other.to_ferry(Side::Local),
    }
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
    /// Live registrations UCX has mapped (`ucp_mem_map`): those a passive operation exposed.
    pub mapped: usize,
    /// Commands sent to the progress thread so far (maps, connects, posts, cancels): each
    /// a wake-up of the thread. Where owners poll ([`UcxConfig::owner_spin`]), a host-memory
    /// operation whose owner awaits it sends none.
    pub thread_commands: u64,
}

/// A registration as callers see it. UCX maps it (`ucp_mem_map`) only when a passive
/// operation first exposes it: an active operation's local memory needs no mapping (UCX
/// registers what a zero-copy transport needs by itself), so registering for a get or a put
/// costs no trip to the progress thread.
struct Registered {
    addr: u64,
    len: u64,
    device: Device,
    /// The packed remote key, once mapped.
    rkey: Option<Vec<u8>>,
}

struct Shared {
    commands: Mutex<Sender<Command>>,
    /// The progress state, taken in turns by the progress thread and polling owners.
    engine: Arc<Engine>,
    /// Until when owners poll the worker themselves.
    owners: Arc<Owners>,
    /// [`UcxConfig::owner_spin`].
    owner_spin: Duration,
    /// [`UcxStats::thread_commands`].
    commands_sent: AtomicU64,
    wake: UnixStream,
    table: Arc<Table>,
    registrations: Mutex<HashMap<u64, Registered>>,
    /// Connected peers by worker address, so a connect to a known peer needs no trip to the
    /// progress thread; whoever drives the worker forgets a peer here when its endpoint fails.
    peers: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
    address: Vec<u8>,
    next: AtomicU64,
    /// Keys from the operating system's generator, a page at a time ([`KeyPool`]).
    entropy: Mutex<(std::fs::File, KeyPool)>,
    capabilities: Capabilities,
    /// Whether this backend moves CUDA device memory, or why not (see [`UcxBackend::cuda_support`]).
    cuda_support: Result<(), String>,
}

impl Shared {
    fn send(&self, command: Command) -> Result<(), Error> {
        self.commands_sent.fetch_add(1, Ordering::Relaxed);
        lock(&self.commands)
            .send(command)
            .map_err(|_| thread_gone())?;
        // The thread drains the socket before reading commands, and sleeps on it: a byte
        // written after it last looked wakes it. A full socket already holds a wake-up.
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }

    /// An owner's poll of its operation (`settlement`): within its window (`spin`) it looks at
    /// the worker itself, back to back for a slice (see [`ferry_core::spin`]), so the ending
    /// needs no wake-up of the progress thread or of the owner's task; past the window it
    /// waits for the thread's settle.
    fn poll_owned(
        &self,
        spin: &mut Spin,
        relying: &mut Option<Relying>,
        settlement: &Settlement,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Event> {
        if let Some(event) = settlement.ended() {
            return Poll::Ready(event);
        }
        if spin::is_glance(cx) {
            // `status()`: one look, no window, nothing handed over.
            let _ = progress::try_look(&self.engine);
            return settlement.ended().map_or(Poll::Pending, Poll::Ready);
        }
        let window_open = spin.until().is_none_or(|until| Instant::now() < until);
        if window_open && !spin.budget().is_zero() {
            let slice = spin.slice();
            if let Some(until) = spin.until() {
                self.owners.poll_until(until);
            }
            loop {
                let looked = progress::try_look(&self.engine);
                if let Some(event) = settlement.ended() {
                    return Poll::Ready(event);
                }
                if looked == Looked::NotOurs {
                    // Shut down, or driven by its thread alone: wait for the settle.
                    relying.get_or_insert_with(|| self.owners.rely());
                    break;
                }
                match spin.next(slice) {
                    Look::Again => {
                        progress::look_at_others(&self.engine);
                        continue;
                    }
                    Look::Later => {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Look::HandOver => {
                        // The thread drives the worker from now on, other owners' windows
                        // notwithstanding; it may be asleep for up to IDLE_SLEEP, armed before
                        // this operation existed.
                        relying.get_or_insert_with(|| self.owners.rely());
                        let _ = (&self.wake).write(&[1]);
                        break;
                    }
                }
            }
        }
        settlement.poll_ended(cx)
    }

    /// How long the owner of an operation moving `bytes` polls the worker itself: not at all
    /// past [`LARGE`].
    fn window(&self, bytes: usize) -> Duration {
        if bytes > LARGE {
            Duration::ZERO
        } else {
            self.owner_spin
        }
    }

    /// Runs `job` on the progress state on this thread, under its lock, where owners drive it
    /// ([`UcxConfig::owner_spin`] not zero; the thread runs and has moved no device memory):
    /// no trip to the progress thread, whose wake-up would cost more than the job. `None`
    /// where the job is the thread's.
    fn inline<R>(&self, job: impl FnOnce(&mut Progress) -> R) -> Option<R> {
        if self.owner_spin.is_zero() {
            return None;
        }
        let mut engine = lock(&self.engine);
        let progress = engine.as_mut().filter(|progress| progress.drivable())?;
        Some(job(progress))
    }

    /// Unmaps registration `id` (best effort: a gone thread unmapped everything).
    fn unmap(&self, id: u64) {
        if self.inline(|progress| progress.unmap(id)).is_none() {
            let _ = self.send(Command::Deregister { id });
        }
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

/// ferry's UCX backend: one UCP context and worker, driven by its progress thread and by the
/// owners of its operations (see the module docs).
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
    /// progress thread, with the [`UcxConfig`] of this process's environment
    /// ([`UcxConfig::from_env`]: the default unless `FERRY_UCX_ERROR_HANDLING` is set).
    /// `BackendUnavailable` where UCX is missing or that variable names no mode.
    pub fn new() -> Result<UcxBackend, Error> {
        let config = UcxConfig::from_env().map_err(|reason| Error::BackendUnavailable {
            backend: NAME,
            reason,
        })?;
        UcxBackend::with_config(config)
    }

    /// [`UcxBackend::new`] with `config`.
    pub fn with_config(config: UcxConfig) -> Result<UcxBackend, Error> {
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
        let table = Arc::new(Table::default());
        let thread_table = table.clone();
        let engine: Arc<Engine> = Arc::new(Mutex::new(None));
        if !config.owner_spin.is_zero() {
            // Owners of other backends may look at this one's worker too.
            progress::enlist(&engine);
        }
        let thread_engine = Arc::clone(&engine);
        let owners = Arc::new(Owners::new());
        let thread_owners = Arc::clone(&owners);
        let peers = Arc::new(Mutex::new(HashMap::new()));
        let thread_peers = Arc::clone(&peers);
        let thread = std::thread::Builder::new()
            .name("ferry-ucx".into())
            .spawn(move || {
                let progress =
                    match Progress::start(thread_table, thread_peers, config.error_handling) {
                        Ok(progress) => progress,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                let address = match progress.address() {
                    Ok(address) => address,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let cuda_support = progress.cuda_support();
                // In place before the backend exists, so its first caller may drive it.
                *lock(&thread_engine) = Some(progress);
                let _ = started.send(Ok((address, cuda_support)));
                progress::run(&thread_engine, &thread_owners, inbox, wake_reader);
            })
            .map_err(|e| unavailable(format!("starting the progress thread: {e}")))?;
        let (address, cuda_support) = match start.recv_timeout(ANSWER) {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(unavailable("the progress thread did not start".into())),
        };
        let devices = match cuda_support {
            Ok(()) => vec![DeviceKind::Host, DeviceKind::Cuda],
            Err(_) => vec![DeviceKind::Host],
        };
        let shared = Arc::new(Shared {
            commands: Mutex::new(commands),
            engine,
            owners,
            owner_spin: config.owner_spin,
            commands_sent: AtomicU64::new(0),
            wake,
            table,
            registrations: Mutex::new(HashMap::new()),
            peers,
            address,
            next: AtomicU64::new(1),
            entropy: Mutex::new((entropy, KeyPool::new())),
            capabilities: Capabilities {
                backend: NAME,
                // The transport reaches the peer's memory from here: the same kinds.
                remote_devices: devices.clone(),
                devices,
                passive_observes_start: false,
                passive_observes_peer_loss: false,
                enforces_revocation: false,
                cross_host: true,
                progress_needs_polling: false,
            },
            cuda_support,
        });
        Ok(UcxBackend {
            shared,
            thread: Some(thread),
        })
    }
}

impl UcxBackend {
    /// Whether this backend moves CUDA device memory (its capabilities then list
    /// [`DeviceKind::Cuda`]), or why not: this needs the `cuda` feature, a UCX that handles
    /// CUDA memory with protocols that honour a buffer's memory type, and a CUDA device (see
    /// the crate docs, "Device memory"). Where it does not, validation refuses device
    /// descriptors with `UnsupportedDevice` before any operation exists.
    pub fn cuda_support(&self) -> Result<(), String> {
        self.shared.cuda_support.clone()
    }

    /// What the backend holds now.
    pub fn stats(&self) -> UcxStats {
        let (registrations, mapped) = {
            let registrations = lock(&self.shared.registrations);
            let mapped = registrations.values().filter(|r| r.rkey.is_some()).count();
            (registrations.len(), mapped)
        };
        let counts = self.shared.table.counts();
        UcxStats {
            live_keys: counts.live_keys,
            live_transfers: counts.live_transfers,
            unmatched_notifications: counts.unmatched,
            registrations,
            mapped,
            thread_commands: self.shared.commands_sent.load(Ordering::Relaxed),
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
        let (source, pool) = &mut *lock(&self.shared.entropy);
        // /dev/urandom does not fail once open; a short read would make keys guessable.
        pool.next(|page| source.read_exact(page))
            .expect("reading /dev/urandom")
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        if !self.shared.capabilities.reaches(region.device) {
            return Err(Error::UnsupportedDevice {
                device: region.device,
                backend: NAME,
            });
        }
        if usize::try_from(region.len).is_err() {
            return Err(Error::Backend {
                backend: NAME,
                side: Side::Local,
                code: 0,
                message: format!("a region of {} bytes", region.len),
            });
        }
        // Mapped when a passive operation first exposes it (see `Registered`).
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.registrations).insert(
            id,
            Registered {
                addr: region.addr,
                len: region.len,
                device: region.device,
                rkey: None,
            },
        );
        Ok(RegistrationId(id))
    }

    fn deregister(&self, id: RegistrationId) {
        let removed = lock(&self.shared.registrations).remove(&id.0);
        if removed.is_some_and(|r| r.rkey.is_some()) {
            self.shared.unmap(id.0);
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
            let known = lock(&self.shared.peers).get(&blob.address).copied();
            let peer = match known {
                Some(peer) => peer,
                None => match self
                    .shared
                    .inline(|progress| progress.connect(&blob.address))
                {
                    Some(connected) => connected?,
                    None => self.shared.ask(|reply| Command::Connect {
                        address: blob.address,
                        reply,
                    })??,
                },
            };
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
        // A peer may read the memory as soon as it has the metadata.
        device::settle_streams(local)?;
        let mut regions: Vec<RegionKey> = Vec::new();
        for (index, descriptor) in local.iter().enumerate() {
            let (addr, len) = (descriptor.addr(), descriptor.len() as u64);
            if len == 0 || regions.iter().any(|r| r.covers(addr, len)) {
                continue;
            }
            let device = descriptor.device();
            let (id, region, mapped) = {
                let registrations = lock(&self.shared.registrations);
                let (&id, covering) = registrations
                    .iter()
                    .filter(|(_, r)| r.len > 0 && r.device == device)
                    .find(|(_, r)| {
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
                let region = RegionKey {
                    addr: covering.addr,
                    len: covering.len,
                    rkey: Vec::new(),
                };
                (id, region, covering.rkey.clone())
            };
            regions.push(match mapped {
                Some(rkey) => RegionKey { rkey, ..region },
                None => self.map(id, region, device)?,
            });
        }
        let endpoint = UcxBlob {
            address: self.shared.address.clone(),
            regions,
        }
        .to_endpoint();
        let window = self.shared.window(local.iter().map(|d| d.len()).sum());
        let relying = window.is_zero().then(|| self.shared.owners.rely());
        if relying.is_some() {
            // The thread watches for this one's notification, even while owners poll: it may
            // be asleep on its wake socket until their windows end.
            let _ = (&self.shared.wake).write(&[1]);
        }
        let settlement = self
            .shared
            .table
            .expose(key)
            .ok_or_else(|| Error::Backend {
                backend: NAME,
                side: Side::Local,
                code: 0,
                message: "this notification key is already live".into(),
            })?;
        Ok(Exposed {
            endpoint,
            transfer: Box::new(PassiveTransfer {
                shared: self.shared.clone(),
                key,
                settlement,
                spin: Spin::new(window),
                relying,
            }),
        })
    }
}

impl UcxBackend {
    /// Maps registration `id` (covering `region`, memory on `device`), on this thread or the
    /// progress thread,
    /// the first time a passive operation exposes it; the region with its packed remote key.
    fn map(&self, id: u64, mut region: RegionKey, device: Device) -> Result<RegionKey, Error> {
        let len = usize::try_from(region.len).map_err(|_| Error::Backend {
            backend: NAME,
            side: Side::Local,
            code: 0,
            message: format!("a region of {} bytes", region.len),
        })?;
        let addr = region.addr as usize;
        // Device memory is mapped with its context current, on the progress thread.
        let inline = match device {
            Device::Cpu => self
                .shared
                .inline(|progress| progress.register(id, addr, len, device)),
            _ => None,
        };
        let rkey = match inline {
            Some(mapped) => mapped?,
            None => self.shared.ask(|reply| Command::Register {
                id,
                addr,
                len,
                device,
                reply,
            })??,
        };
        let mut registrations = lock(&self.shared.registrations);
        match registrations.get_mut(&id) {
            Some(registered) => registered.rkey = Some(rkey.clone()),
            None => {
                // Deregistered while it was being mapped: unmap it again.
                drop(registrations);
                self.shared.unmap(id);
                return Err(Error::Backend {
                    backend: NAME,
                    side: Side::Local,
                    code: 0,
                    message: "the registration ended while it was being mapped".into(),
                });
            }
        }
        region.rkey = rkey;
        Ok(region)
    }
}

/// A passive operation: waits for its key's notification, which whoever drives the worker
/// settles (see [`table`]).
struct PassiveTransfer {
    shared: Arc<Shared>,
    key: NotificationKey,
    settlement: Settlement,
    spin: Spin,
    /// Set while the operation relies on the progress thread (see `Owners`).
    relying: Option<Relying>,
}

impl Transfer for PassiveTransfer {
    fn poll_event(
        &mut self,
        cx: &mut TaskContext<'_>,
        _local: &mut [Descriptor<'_>],
    ) -> Poll<Event> {
        self.shared
            .poll_owned(&mut self.spin, &mut self.relying, &self.settlement, cx)
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        self.shared
            .table
            .close_passive(&self.key, &mut self.settlement)
    }
}

impl Drop for PassiveTransfer {
    fn drop(&mut self) {
        // A second close after a cancel changes nothing.
        self.shared
            .table
            .close_passive(&self.key, &mut self.settlement);
    }
}

/// A connected peer: an endpoint (by id) in the progress state.
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
        // UCX copies device memory on streams of its own: the caller's work comes first.
        device::settle_streams(local)?;
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
                device: mine.device(),
                remote: theirs.ptr,
                rkey: region,
            });
        }
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let settlement = self.shared.table.begin(id);
        let rkeys: Vec<Vec<u8>> = blob.regions.into_iter().map(|r| r.rkey).collect();
        let key = remote.notification_key;
        let bytes: usize = items.iter().map(|item| item.len).sum();
        let window = self.shared.window(bytes);
        // Before the post: the thread must not leave this one to owners' windows.
        let relying = window.is_zero().then(|| self.shared.owners.rely());
        let transfer = |settlement, relying| ActiveTransfer {
            shared: self.shared.clone(),
            id,
            settlement,
            ended: false,
            spin: Spin::new(window),
            relying,
        };
        // Where the owner polls, it posts a small operation too, on this thread. Host memory
        // only: device memory is posted with its context current, on the progress thread.
        let small = bytes <= LARGE && items.len() <= INLINE_DESCRIPTORS;
        if small && items.iter().all(|item| item.device == Device::Cpu) {
            let posted = self
                .shared
                .inline(|progress| progress.post_op(id, self.peer, kind, key, &rkeys, &items));
            if posted.is_some() {
                return Ok(transfer(settlement, relying));
            }
        }
        // The post is not waited for (an answer would cost the caller a wake-up): what fails on
        // the progress thread (a remote key UCX refuses, a failed endpoint, a refused put)
        // ends the operation `Errored` through `poll_event`. Commands run in order, so a
        // cancel or drop sent after this finds the post done, its requests finished.
        let posted = self.shared.send(Command::Post {
            id,
            peer: self.peer,
            kind,
            key,
            rkeys,
            items,
        });
        match posted {
            Ok(()) => Ok(transfer(settlement, relying)),
            Err(e) => {
                // The thread is gone and never saw the post.
                self.shared.table.forget(id);
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

/// An active operation: its gets or puts, flush and notification live in the progress state,
/// and whoever drives the worker settles it (see [`table`]).
struct ActiveTransfer {
    shared: Arc<Shared>,
    id: u64,
    settlement: Settlement,
    /// `poll_event` returned the ending, or `cancel` ran: the drop has nothing to close.
    ended: bool,
    spin: Spin,
    /// Set while the operation relies on the progress thread (see `Owners`).
    relying: Option<Relying>,
}

impl Transfer for ActiveTransfer {
    fn poll_event(
        &mut self,
        cx: &mut TaskContext<'_>,
        _local: &mut [Descriptor<'_>],
    ) -> Poll<Event> {
        let polled =
            self.shared
                .poll_owned(&mut self.spin, &mut self.relying, &self.settlement, cx);
        self.ended = polled.is_ready();
        polled
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        self.ended = true;
        let (shared, id) = (&self.shared, self.id);
        // Requests posted before this close decided may still move the caller's memory: the
        // thread drains them (and tells the peer) before it answers.
        shared.table.close_active(id, &mut self.settlement, || {
            match shared.ask_raw(|reply| Command::Cancel { id, reply }) {
                Ok(()) => {}
                // The thread is gone: nothing progresses the worker any more, so UCX moves no
                // more bytes for this operation.
                Err(RecvTimeoutError::Disconnected) => {}
                // The thread is stuck: UCX may still own the caller's memory.
                Err(RecvTimeoutError::Timeout) => {
                    abort_unsafe("the ucx progress thread did not confirm a cancel in time")
                }
            }
        })
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
    }
}
