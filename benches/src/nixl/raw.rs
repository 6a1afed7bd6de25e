//! The baseline ferry's nixl backend is judged against: the same transfers through nixl-sys
//! directly, with no ferry code in the path.
//!
//! One agent per process, configured as ferry's backend configures its own (the UCX plugin
//! with NIXL's default parameters for it, no NIXL progress or listener thread), so both see
//! the same UCX settings. A buffer is a nixl-sys [`SystemStorage`], registered once; the
//! target's agent metadata crosses once per buffer ([`RawAgent::metadata`],
//! [`RawAgent::load_remote`]). Then every operation is what a program using NIXL by hand does:
//! `create_xfer_req` (READ or WRITE, with a notification message), `post_xfer_req`, and
//! `get_xfer_status` polled until done ([`RawInitiator::transfer`]), while the target polls
//! `get_notifications` until that message arrives ([`RawAgent::await_notification`]). Both
//! sides then know the transfer finished, which is what ferry's operations give.
//!
//! The same loop can register the initiator's memory per operation ([`Local::PerOperation`]:
//! `register_memory` before `create_xfer_req`, the registration dropped after the request,
//! both in the timed operation, and the target's metadata loaded when it changed), as
//! ferry's default path and Dynamo do; the benchmark shows it beside ferry's rows without
//! judging ferry against it. How each side
//! polls is a [`Polling`]; by default the target backs off as ferry's passive side does, so a
//! waiting target does not take a CPU from the transfer on a small machine.
//!
//! No unsafe code: nixl-sys's safe API covers all of it. `libnixl_capi.so` must be loaded
//! before the first nixl-sys call (nixl-sys's `stub-api` aborts the process otherwise), so
//! [`RawAgent::new`] loads it first, the way ferry's nixl backend does
//! ([`ferry::nixl::available`]).

use std::fmt;
use std::time::{Duration, Instant};

use crate::clock::unix_nanos;

use nixl_sys::{
    Agent, AgentConfig, MemType, NixlError, NixlRegistration, NotificationMap, OptArgs,
    RegistrationHandle, SystemStorage, XferDescList, XferOp, XferStatus,
};

/// Why a raw NIXL step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawError {
    /// `libnixl_capi.so` could not be loaded, or the agent or its UCX backend not created.
    Unavailable(String),
    /// A nixl-sys call failed.
    Nixl {
        /// The call.
        call: &'static str,
        /// What nixl-sys said (it folds NIXL's status codes into a few kinds).
        error: String,
    },
    /// A transfer or notification did not finish within its limit.
    TimedOut {
        /// What was awaited.
        what: &'static str,
        /// The limit.
        limit: Duration,
    },
}

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawError::Unavailable(why) => write!(f, "raw NIXL is unavailable: {why}"),
            RawError::Nixl { call, error } => write!(f, "nixl-sys {call} failed: {error}"),
            RawError::TimedOut { what, limit } => {
                write!(f, "raw NIXL: {what} not done within {limit:?}")
            }
        }
    }
}

impl std::error::Error for RawError {}

/// What a raw loop does between two polls of NIXL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Polling {
    /// The target yields for the first [`BACKOFF_AFTER`] of its wait, then sleeps
    /// [`BACKOFF_SLEEP`] between polls, so a long transfer leaves the CPUs to the bytes at up
    /// to that much added delay; the initiator yields, as with [`Polling::Yield`] (its polls
    /// drive a transfer's progress). ferry's nixl backend works the same way by default: a
    /// passive operation's owner polls back to back for its `owner_spin` window, then its
    /// progress thread backs off to at most `max_poll_interval` while only passive operations
    /// wait.
    #[default]
    Backoff,
    /// Gives up the CPU (`sched_yield`) between polls on both sides. The poller stays
    /// runnable, so a target takes a CPU for as long as it waits: on 2 vCPUs shared with other
    /// work this slowed large raw reads by up to half.
    Yield,
    /// Spins (a CPU pause hint only) on both sides: the lowest latency on idle cores, the
    /// worst when two spinning processes share too few.
    Spin,
}

/// How long a [`Polling::Backoff`] wait polls back to back before it starts sleeping: as long
/// as the owner of a ferry operation polls its own operation by default
/// ([`ferry::nixl::NixlConfig::owner_spin`]), so that neither side's passive wait is handicapped.
pub const BACKOFF_AFTER: Duration = Duration::from_millis(1);

/// How long a [`Polling::Backoff`] wait sleeps between polls after [`BACKOFF_AFTER`]: the
/// longest pause of ferry's progress thread by default
/// ([`ferry::nixl::NixlConfig::max_poll_interval`]).
pub const BACKOFF_SLEEP: Duration = Duration::from_micros(100);

impl Polling {
    /// Every polling, in the order `--help` lists them.
    pub const ALL: [Polling; 3] = [Polling::Backoff, Polling::Yield, Polling::Spin];

    /// `backoff`, `yield` or `spin`.
    pub fn key(self) -> &'static str {
        match self {
            Polling::Yield => "yield",
            Polling::Spin => "spin",
            Polling::Backoff => "backoff",
        }
    }

    /// The polling named `key` ([`Polling::key`]).
    pub fn from_key(key: &str) -> Option<Polling> {
        Polling::ALL.into_iter().find(|p| p.key() == key.trim())
    }

    /// How an initiator polls when the target polls like this.
    pub fn for_initiator(self) -> Polling {
        match self {
            Polling::Backoff => Polling::Yield,
            other => other,
        }
    }

    /// Pauses between two polls of a wait that began `waited` ago.
    fn pause(self, waited: Duration) {
        match self {
            Polling::Yield => std::thread::yield_now(),
            Polling::Spin => std::hint::spin_loop(),
            Polling::Backoff if waited < BACKOFF_AFTER => std::thread::yield_now(),
            Polling::Backoff => std::thread::sleep(BACKOFF_SLEEP),
        }
    }
}

/// Wraps a nixl-sys error with the call that returned it.
fn nixl(call: &'static str) -> impl FnOnce(NixlError) -> RawError {
    move |e| RawError::Nixl {
        call,
        error: e.to_string(),
    }
}

/// One NIXL agent with the UCX backend, used directly.
pub struct RawAgent {
    agent: Agent,
}

impl fmt::Debug for RawAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAgent")
            .field("name", &self.agent.name())
            .finish()
    }
}

impl RawAgent {
    /// Loads NIXL (as ferry's backend does) and creates agent `name` with the UCX backend.
    pub fn new(name: &str) -> Result<RawAgent, RawError> {
        ferry::nixl::available(None).map_err(RawError::Unavailable)?;
        // As ferry-backend-nixl configures its agents: no NIXL threads, the caller progresses.
        let config = AgentConfig {
            enable_prog_thread: false,
            enable_listen_thread: false,
            ..AgentConfig::default()
        };
        let unavailable = |what: &str, e: NixlError| RawError::Unavailable(format!("{what}: {e}"));
        let agent = Agent::new_configured(name, &config)
            .map_err(|e| unavailable(&format!("creating agent {name:?}"), e))?;
        let (_, params) = agent
            .get_plugin_params("UCX")
            .map_err(|e| unavailable("NIXL has no UCX plugin", e))?;
        agent
            .create_backend("UCX", &params)
            .map_err(|e| unavailable("creating the UCX backend", e))?;
        Ok(RawAgent { agent })
    }

    /// The agent's name.
    pub fn name(&self) -> String {
        self.agent.name()
    }

    /// A zeroed buffer of `size` bytes, registered with this agent until dropped.
    pub fn buffer(&self, size: usize) -> Result<RawBuffer, RawError> {
        self.filled_buffer(size, 0)
    }

    /// A buffer of `size` bytes, every one `value`, registered with this agent until dropped.
    pub fn filled_buffer(&self, size: usize, value: u8) -> Result<RawBuffer, RawError> {
        let mut storage = SystemStorage::new(size).map_err(nixl("SystemStorage::new"))?;
        storage.memset(value);
        storage
            .register(&self.agent, None)
            .map_err(nixl("register_memory"))?;
        Ok(RawBuffer { storage })
    }

    /// Registers `storage` with this agent until the handle is dropped (the storage itself
    /// holds no registration: see [`Local::per_operation`]).
    pub fn register(&self, storage: &SystemStorage) -> Result<RegistrationHandle, RawError> {
        self.agent
            .register_memory(storage, None)
            .map_err(nixl("register_memory"))
    }

    /// This agent's metadata (it names every buffer registered now), for the initiator.
    pub fn metadata(&self) -> Result<Vec<u8>, RawError> {
        self.agent.get_local_md().map_err(nixl("get_local_md"))
    }

    /// Loads a target agent's metadata; returns the target agent's name.
    pub fn load_remote(&self, metadata: &[u8]) -> Result<String, RawError> {
        self.agent
            .load_remote_md(metadata)
            .map_err(nixl("load_remote_md"))
    }

    /// An initiator of `op` transfers between `local` and the target's buffer at
    /// `remote_addr` (`remote_len` bytes, registered by agent `remote_agent`, whose metadata
    /// this agent has loaded). The descriptor lists are built once, here.
    pub fn initiator(
        &self,
        op: XferOp,
        local: &RawBuffer,
        remote_agent: String,
        remote_addr: usize,
        remote_len: usize,
    ) -> Result<RawInitiator, RawError> {
        let mut local_list = XferDescList::new(MemType::Dram).map_err(nixl("XferDescList::new"))?;
        local_list.add_desc(local.addr(), local.len(), 0);
        let mut remote_list =
            XferDescList::new(MemType::Dram).map_err(nixl("XferDescList::new"))?;
        remote_list.add_desc(remote_addr, remote_len, 0);
        Ok(RawInitiator {
            agent: self.agent.clone(),
            op,
            local: local_list,
            remote: remote_list,
            remote_agent,
            per_operation: None,
            loaded: Vec::new(),
        })
    }

    /// Polls this agent's notifications back to back (pausing as `polling` says) until one
    /// from any agent carries exactly `message`, for at most `limit`. Polling is also what
    /// progresses a target agent while a peer writes into it (NIXL's UCX backend, `peer` error
    /// handling).
    pub fn await_notification(
        &self,
        message: &[u8],
        limit: Duration,
        polling: Polling,
    ) -> Result<(), RawError> {
        let mut map = NotificationMap::new().map_err(nixl("NotificationMap::new"))?;
        poll_until("the notification", limit, polling, || {
            self.agent
                .get_notifications(&mut map, None)
                .map_err(nixl("get_notifications"))?;
            Ok(map.len().map_err(nixl("NotificationMap::len"))? > 0 && holds(&map, message)?)
        })
    }
}

/// Calls `done` until it says so, pausing between calls as `polling` says; an error once
/// `limit` has passed, naming `what` was awaited.
fn poll_until(
    what: &'static str,
    limit: Duration,
    polling: Polling,
    mut done: impl FnMut() -> Result<bool, RawError>,
) -> Result<(), RawError> {
    let start = Instant::now();
    while !done()? {
        let waited = start.elapsed();
        if waited >= limit {
            return Err(RawError::TimedOut { what, limit });
        }
        polling.pause(waited);
    }
    Ok(())
}

/// Whether any agent's notifications in `map` include `message`.
fn holds(map: &NotificationMap, message: &[u8]) -> Result<bool, RawError> {
    for agent in map.agents() {
        let agent = agent.map_err(nixl("NotificationMap::agents"))?;
        let count = map
            .get_notifications_size(agent)
            .map_err(nixl("get_notifications_size"))?;
        for index in 0..count {
            let bytes = map
                .get_notification_bytes(agent, index)
                .map_err(nixl("get_notification_bytes"))?;
            if bytes == message {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A nixl-sys [`SystemStorage`] registered with a [`RawAgent`]; deregistered when dropped.
#[derive(Debug)]
pub struct RawBuffer {
    storage: SystemStorage,
}

impl RawBuffer {
    /// Where the bytes are, as NIXL's descriptors name them.
    pub fn addr(&self) -> usize {
        self.storage.as_slice().as_ptr() as usize
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.storage.as_slice().len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets every byte to `value` (all SystemStorage offers for filling).
    pub fn fill(&mut self, value: u8) {
        self.storage.memset(value);
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.as_slice()
    }
}

/// Transfers between one local buffer and one remote buffer, over and over. Its descriptor
/// lists are nixl-sys's, which may not leave the thread that made them: [`RawWorker`] runs
/// one on a thread of its own for async code.
pub struct RawInitiator {
    agent: Agent,
    op: XferOp,
    local: XferDescList<'static>,
    remote: XferDescList<'static>,
    remote_agent: String,
    /// The local memory when it is registered per operation.
    per_operation: Option<SystemStorage>,
    /// The target's metadata loaded last, when it is sent per operation.
    loaded: Vec<u8>,
}

impl fmt::Debug for RawInitiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawInitiator")
            .field("op", &self.op)
            .field("remote_agent", &self.remote_agent)
            .finish_non_exhaustive()
    }
}

impl RawInitiator {
    /// One transfer: creates the request with `message` as its notification, posts it, and
    /// polls its status back to back (pausing as `polling` says) until it is done, for at most
    /// `limit`. The request is released before this returns; so is the local memory's
    /// registration when it is registered per operation (made first, released last).
    pub fn transfer(
        &mut self,
        message: &[u8],
        target: Option<&[u8]>,
        limit: Duration,
        polling: Polling,
    ) -> Result<(), RawError> {
        // A target registering per operation sends its metadata with each: loaded when it
        // differs from the last, as ferry loads a blob it does not hold.
        if let Some(metadata) = target.filter(|m| *m != self.loaded.as_slice()) {
            self.agent
                .load_remote_md(metadata)
                .map_err(nixl("load_remote_md"))?;
            self.loaded = metadata.to_vec();
        }
        // Declared before the request, so dropped after it.
        let _registration = match &self.per_operation {
            Some(storage) => Some(
                self.agent
                    .register_memory(storage, None)
                    .map_err(nixl("register_memory"))?,
            ),
            None => None,
        };
        let mut args = OptArgs::new().map_err(nixl("OptArgs::new"))?;
        args.set_notification_message(message)
            .map_err(nixl("set_notification_message"))?;
        args.set_has_notification(true)
            .map_err(nixl("set_has_notification"))?;
        let request = self
            .agent
            .create_xfer_req(
                self.op,
                &self.local,
                &self.remote,
                &self.remote_agent,
                Some(&args),
            )
            .map_err(nixl("create_xfer_req"))?;
        let in_progress = self
            .agent
            .post_xfer_req(&request, Some(&args))
            .map_err(nixl("post_xfer_req"))?;
        if !in_progress {
            return Ok(());
        }
        poll_until("the transfer", limit, polling, || {
            let status = self
                .agent
                .get_xfer_status(&request)
                .map_err(nixl("get_xfer_status"))?;
            Ok(status == XferStatus::Success)
        })
    }
}

/// What a [`RawWorker`] is asked to do: one transfer.
struct Job {
    message: Vec<u8>,
    /// The target's metadata, when it registers per operation.
    target: Option<Vec<u8>>,
    limit: Duration,
    /// A checked warm-up ([`Local::PerOperation`] only): fill the worker's own local memory
    /// with this first, and take its checksum after, both untimed.
    fill: Option<u8>,
    reply: tokio::sync::oneshot::Sender<Result<Timed, RawError>>,
}

/// When a raw transfer started and how long its active side took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    /// Just before `create_xfer_req`, in nanoseconds of the system clock
    /// ([`crate::clock::unix_nanos`]).
    pub start_ns: u64,
    /// From then until `get_xfer_status` said `Success`.
    pub active: Duration,
    /// A checksum ([`crate::checksum`]) of the worker's own local memory after the transfer,
    /// untimed, when the job asked for a checked warm-up ([`Local::PerOperation`] only).
    pub checksum: Option<u64>,
}

/// The local memory of a [`RawWorker`].
#[derive(Debug)]
pub enum Local {
    /// Registered once by the caller, which keeps it: the span names it.
    Registered,
    /// The worker's own, registered per operation; the span's local part must name it.
    PerOperation(SystemStorage),
}

impl Local {
    /// A [`Local::PerOperation`] buffer of `size` bytes, every one `value`, and where it is
    /// (address, length) for the span.
    pub fn per_operation(size: usize, value: u8) -> Result<(Local, (usize, usize)), RawError> {
        let storage = unregistered(size, value)?;
        let at = (storage.as_slice().as_ptr() as usize, size);
        Ok((Local::PerOperation(storage), at))
    }
}

/// `size` bytes, every one `value`, registered with no agent.
pub fn unregistered(size: usize, value: u8) -> Result<SystemStorage, RawError> {
    let mut storage = SystemStorage::new(size).map_err(nixl("SystemStorage::new"))?;
    storage.memset(value);
    Ok(storage)
}

/// A thread that owns a [`RawInitiator`] and runs its transfers one at a time, for async
/// code (nixl-sys's descriptor lists may not cross threads, so they cannot live in a task).
/// The thread ends when this is dropped.
#[derive(Debug)]
pub struct RawWorker {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where an initiator's two buffers are: `(address, length)` here and at the target, and
/// the target's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The local buffer.
    pub local: (usize, usize),
    /// The target agent's name.
    pub remote_agent: String,
    /// The target's buffer.
    pub remote: (usize, usize),
}

impl RawWorker {
    /// Starts a thread with an initiator of `op` on `agent` over `span` and `local` memory,
    /// polling as `polling` says.
    pub fn start(
        agent: &RawAgent,
        op: XferOp,
        span: Span,
        local: Local,
        polling: Polling,
    ) -> Result<RawWorker, RawError> {
        let agent = RawAgent {
            agent: agent.agent.clone(),
        };
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), RawError>>();
        let thread = std::thread::Builder::new()
            .name("ferry-bench-raw".into())
            .spawn(move || {
                let list = |(addr, len): (usize, usize)| {
                    let mut list =
                        XferDescList::new(MemType::Dram).map_err(nixl("XferDescList::new"))?;
                    list.add_desc(addr, len, 0);
                    Ok::<_, RawError>(list)
                };
                let per_operation = match local {
                    Local::Registered => None,
                    Local::PerOperation(storage) => Some(storage),
                };
                let mut initiator = match (list(span.local), list(span.remote)) {
                    (Ok(local), Ok(remote)) => RawInitiator {
                        agent: agent.agent,
                        op,
                        local,
                        remote,
                        remote_agent: span.remote_agent,
                        per_operation,
                        loaded: Vec::new(),
                    },
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = inbox.recv() {
                    if let (Some(storage), Some(value)) =
                        (initiator.per_operation.as_mut(), job.fill)
                    {
                        storage.memset(value);
                    }
                    let start_ns = unix_nanos();
                    let t0 = Instant::now();
                    let target = job.target.as_deref();
                    let polling = polling.for_initiator();
                    let outcome = initiator.transfer(&job.message, target, job.limit, polling);
                    let active = t0.elapsed();
                    let checksum = initiator
                        .per_operation
                        .as_ref()
                        .filter(|_| job.fill.is_some())
                        .map(|storage| crate::checksum(storage.as_slice()));
                    let _ = job.reply.send(outcome.map(|()| Timed {
                        start_ns,
                        active,
                        checksum,
                    }));
                }
            })
            .map_err(|e| RawError::Unavailable(format!("starting a raw worker thread: {e}")))?;
        let mut worker = RawWorker {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        match ready.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                worker.jobs = None;
                Err(RawError::Unavailable(
                    "the raw worker thread ended before it was ready".into(),
                ))
            }
        }
    }

    /// Runs one transfer with `message` as its notification on the worker's thread and
    /// returns when it is done, for at most `limit` (the thread enforces it). `target` is
    /// the target's agent metadata when it registered its buffer for this operation, loaded
    /// in the timed operation when it changed (as ferry's would be). `fill` asks for a checked
    /// warm-up: every byte of the worker's own local memory set first and its checksum
    /// returned after, both untimed ([`Local::PerOperation`]; ignored otherwise).
    pub async fn transfer(
        &self,
        message: &[u8],
        target: Option<Vec<u8>>,
        limit: Duration,
        fill: Option<u8>,
    ) -> Result<Timed, RawError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || RawError::Unavailable("the raw worker thread has ended".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(Job {
                message: message.to_vec(),
                target,
                limit,
                fill,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current transfer, which is bounded.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_target_backs_off_as_a_ferry_owner_and_its_thread_do() {
        let ferry = ferry::nixl::NixlConfig::named("defaults");
        assert_eq!(BACKOFF_AFTER, ferry.owner_spin);
        assert_eq!(BACKOFF_SLEEP, ferry.max_poll_interval);
    }

    #[test]
    fn pollings_by_key() {
        for polling in Polling::ALL {
            assert_eq!(Polling::from_key(polling.key()), Some(polling));
        }
        assert_eq!(Polling::from_key("sleep"), None);
    }

    #[test]
    fn a_wait_ends_at_its_limit() {
        let limit = Duration::from_millis(5);
        for polling in Polling::ALL {
            let t0 = Instant::now();
            let e = poll_until("nothing", limit, polling, || Ok(false)).unwrap_err();
            assert_eq!(
                e,
                RawError::TimedOut {
                    what: "nothing",
                    limit
                }
            );
            assert!(t0.elapsed() >= limit);
        }
        let mut calls = 0;
        poll_until("three calls", limit, Polling::Backoff, || {
            calls += 1;
            Ok(calls == 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn errors_say_what_failed() {
        let e = RawError::Nixl {
            call: "post_xfer_req",
            error: "Backend error occurred".into(),
        };
        assert_eq!(
            e.to_string(),
            "nixl-sys post_xfer_req failed: Backend error occurred"
        );
        let t = RawError::TimedOut {
            what: "the transfer",
            limit: Duration::from_secs(1),
        };
        assert!(t.to_string().contains("not done within 1s"), "{t}");
    }

    /// Two raw agents in this process move 64 KiB each way; skipped without NIXL.
    #[test]
    fn raw_agents_move_bytes_in_one_process() {
        if let Err(why) = ferry::nixl::available(None) {
            println!("skipped: {why}");
            return;
        }
        let id = std::process::id();
        let target = RawAgent::new(&format!("raw-test-target-{id}")).unwrap();
        let initiator = RawAgent::new(&format!("raw-test-initiator-{id}")).unwrap();
        let mut exposed = target.buffer(64 << 10).unwrap();
        exposed.fill(0xa5);
        let mut local = initiator.buffer(64 << 10).unwrap();
        let name = initiator.load_remote(&target.metadata().unwrap()).unwrap();
        assert_eq!(name, target.name());
        let limit = Duration::from_secs(10);
        let mut read = initiator
            .initiator(
                XferOp::Read,
                &local,
                name.clone(),
                exposed.addr(),
                exposed.len(),
            )
            .unwrap();
        // The target must be progressed while the transfer runs: the initiator's thread
        // posts and polls, this one awaits the notification.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| target.await_notification(b"read-1", limit, Polling::Yield));
            read.transfer(b"read-1", None, limit, Polling::Yield)
                .unwrap();
            waiter.join().unwrap().unwrap();
        });
        drop(read);
        assert!(local.bytes().iter().all(|&b| b == 0xa5));
        local.fill(0x5a);
        let mut write = initiator
            .initiator(XferOp::Write, &local, name, exposed.addr(), exposed.len())
            .unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| target.await_notification(b"write-1", limit, Polling::Backoff));
            write
                .transfer(b"write-1", None, limit, Polling::Spin)
                .unwrap();
            waiter.join().unwrap().unwrap();
        });
        assert!(exposed.bytes().iter().all(|&b| b == 0x5a));
    }

    /// Both sides registering per operation, as ferry's default path does: the target
    /// registers its buffer and sends its metadata with each operation and deregisters once
    /// notified; the worker registers its own buffer around each transfer. Skipped without
    /// NIXL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_sides_can_register_per_operation() {
        if let Err(why) = ferry::nixl::available(None) {
            println!("skipped: {why}");
            return;
        }
        let id = std::process::id();
        let target = RawAgent::new(&format!("raw-test-per-op-target-{id}")).unwrap();
        let initiator = RawAgent::new(&format!("raw-test-per-op-initiator-{id}")).unwrap();
        let exposed = unregistered(64 << 10, 0xa5).unwrap();
        let (local, at) = Local::per_operation(64 << 10, 0).unwrap();
        // Once, for the agent's name (and a connection), as any initiator starts.
        let first = target.register(&exposed).unwrap();
        let name = initiator.load_remote(&target.metadata().unwrap()).unwrap();
        drop(first);
        let span = Span {
            local: at,
            remote_agent: name,
            remote: (
                exposed.as_slice().as_ptr() as usize,
                exposed.as_slice().len(),
            ),
        };
        let worker =
            RawWorker::start(&initiator, XferOp::Read, span, local, Polling::Yield).unwrap();
        let limit = Duration::from_secs(10);
        for round in 0..3 {
            let message = format!("per-op-{round}");
            let registration = target.register(&exposed).unwrap();
            let metadata = target.metadata().unwrap();
            let (timed, notified) = std::thread::scope(|s| {
                let waiter = s
                    .spawn(|| target.await_notification(message.as_bytes(), limit, Polling::Yield));
                let fill = Some(0);
                let transfer = worker.transfer(message.as_bytes(), Some(metadata), limit, fill);
                let timed = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(transfer)
                });
                (timed, waiter.join().unwrap())
            });
            drop(registration);
            notified.unwrap();
            let timed = timed.unwrap();
            assert_eq!(
                timed.checksum,
                Some(crate::checksum(&[0xa5; 64 << 10])),
                "round {round}"
            );
        }
    }
}
