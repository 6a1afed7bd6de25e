//! ferry-backend-nixl: ferry over NIXL, one agent per Connector, with the UCX plugin.
//!
//! It speaks Dynamo 1.6.1's `nixl_connect` protocol, so a ferry worker and a Dynamo Python
//! worker pair:
//! - a passive operation's `nixl_metadata` is `"b64:"` + base64 of agent metadata as a zlib
//!   stream, the form Dynamo writes and reads (small metadata is stored in the stream rather
//!   than compressed, which `zlib.decompress` reads alike; see `zlib.rs`). Where Dynamo sends
//!   the whole agent's metadata (`get_local_md`: every region the agent has registered, so
//!   whoever holds one operation's metadata can reach the memory of all the others), ferry's
//!   offers the agent's connection info and the registrations covering that operation's
//!   regions only (NIXL's partial metadata; see `offer.rs`), which Dynamo's workers load
//!   alike. A registration is offered whole: where a region lies inside a larger registration
//!   (a pinned pool, a cached registration), the oldest covering it (the one the Connector
//!   leases for it) is offered, and its peer can reach all of it, as NIXL's keys are per
//!   registration;
//! - the active side loads that metadata (once per distinct blob; see "Remote agents"),
//!   builds transfer descriptor lists over both sides' regions and posts one NIXL transfer
//!   whose notification message is the notification key's text;
//! - the passive side completes when that notification arrives; an active cancel waits for
//!   NIXL to be done with the caller's memory (UCX cannot take back a posted get or put; see
//!   `ActiveTransfer::drain`), then releases the request and sends `<key>:cancel`, which
//!   Dynamo ignores and ferry reports as `Cancelled` by the remote side. A transfer that
//!   finished meanwhile completes instead: the cancel lost the race.
//!
//! ```text
//!  passive (readable/writable)                         active (read/write)
//!  register regions, expose ──── RdmaMetadata ────────► load agent md (cached by blob)
//!                                                      make + post xfer (notif = key)
//!  memory ◄════════ UCX moves bytes (CMA, tcp, RDMA) ══ poll status → Complete
//!  notification "key" ◄──────────────────────────────── (sent by NIXL after the data)
//!  → Complete
//! ```
//!
//! # Loading NIXL
//! nixl-sys is built with `stub-api`, so this crate compiles everywhere; at run time
//! [`NixlBackend::new`] first loads `libnixl_capi.so` itself (search order in [`library`]), and
//! reports [`Error::BackendUnavailable`] with an install hint where it cannot, instead of the
//! stub's abort. `scripts/install-nixl.sh` installs the libraries from PyPI's `nixl-cu12` wheel.
//!
//! # Progress
//! The agent runs without NIXL's progress thread (nixl-sys's default spins a whole core).
//! A task awaiting an operation first polls NIXL itself for [`NixlConfig::owner_spin`] (1 ms):
//! back to back within 200 µs slices, giving up the CPU between looks and yielding to its
//! runtime between slices, so a transfer that ends within it completes on the owner's thread,
//! with no hop. A request NIXL finishes within its post (UCX moved the bytes there, as CMA
//! does for most transfers between processes of one host) is not looked at again: its owner's
//! first poll completes it, and the thread never hears of it. Between its own looks an owner
//! also progresses this process's other agents that have an operation live, whose owners may
//! be other futures of its own task (both sides of a transfer between two Connectors awaited
//! with `join!`), polled only between slices. After that, one ferry thread per backend polls
//! notifications and posted transfers, spinning only while a transfer is in flight, backing
//! off (up to [`NixlConfig::max_poll_interval`]) while only passive operations wait, and
//! blocked on a condition variable, using no CPU, when idle. While owners poll, the thread
//! stays parked: back-to-back operations whose owners await them wake it neither per
//! operation, nor per slice, nor per window. The price: an operation nobody polls (exposed
//! or posted, and not awaited yet) is looked at only within 20 ms of its window's end, so
//! until its owner awaits it, a peer's transfer that needs this agent progressed (a write
//! over UCX's tcp transport, or with `peer` error handling) can wait that long. With
//! `owner_spin` zero the thread looks at every operation at once (see the `progress` module
//! for its rhythm).
//!
//! Its cost, measured with `cargo run --release -p ferry-backend-nixl --example idle_cpu` on a
//! 2-vCPU VM: 0.0 % of a core with no operation; with one passive operation waiting for a peer,
//! about 15 % at the default 100 µs longest pause and about 3.4 % at 1 ms (each round asks UCX
//! to progress, which costs microseconds). A longer pause trades that CPU for up to that much
//! extra delay before a passive operation sees its notification.
//!
//! # Remote agents
//! The active side keeps the blobs it has loaded, by their bytes (up to
//! [`NixlConfig::peer_cache`], least recently used first out), so a blob seen before costs no
//! load. A remote agent stays loaded in NIXL while a cached blob of it or an operation holds
//! it, and is unloaded (`invalidate_remote_md`) when neither does. NIXL adds the regions of
//! every blob it loads to those it holds for the agent and drops none until the agent is
//! unloaded, and a peer that registers memory per operation (Dynamo's way, and ferry's
//! default) sends a new blob each time. So once NIXL holds more than `peer_cache` blobs of an
//! agent, the next new blob that arrives while no operation uses the agent unloads it and
//! loads it again from that blob alone ([`NixlStats::fresh_loads`]): one reconnection per
//! `peer_cache` operations at worst, instead of holding every region the peer ever offered.
//! While operations against an agent overlap without a break, its regions keep adding up
//! until the first new blob after one.
//!
//! # Transfer requests
//! An active operation's request is made with NIXL's `make_xfer_req` from prepared descriptor
//! lists (`prep_xfer_dlist`), kept per list of local regions and per remote agent and list of
//! its regions: with a registration cache on both sides, a worker that reuses its buffers
//! makes each request without NIXL looking its regions up again, which `create_xfer_req`
//! does on every call. Where no list is kept the operation prepares them, at about the cost
//! of `create_xfer_req`. Local lists, and lists prepared against the agent itself (a
//! Connector reading from itself), are released before any memory is deregistered; a remote
//! agent's lists before its metadata is loaded again or unloaded. So a list never outlives
//! what it was prepared against ([`NixlStats::prepared_lists`] counts those held, at most 64
//! per side and per remote agent). A remote region the peer never registered is refused as
//! [`Error::AccessDenied`] when its list is prepared, before anything moves.
//!
//! # Device memory
//! With the `cuda` feature, descriptors over CUDA device memory are registered with NIXL as
//! `VRAM` (device id = the CUDA ordinal) and named so in transfer lists, so NIXL's UCX plugin
//! takes its GPU paths (GPUDirect RDMA where the NIC has it, CUDA copies on one host). The
//! streams of local device memory are synchronised before NIXL touches it. The backend lists
//! [`DeviceKind::Cuda`] only where the UCX plugin lists VRAM and a CUDA device is present
//! ([`NixlBackend::cuda_support`] says why not); elsewhere validation refuses device memory.
//! **Not verified on a GPU yet.**
//!
//! # What NIXL cannot do here
//! - **Revocation.** Ending a passive operation deregisters its memory, but nothing NIXL or
//!   UCX offers stops a peer that holds its metadata: UCX's CMA transport (one host) and its
//!   software RMA (the tcp transport) serve gets and puts from raw addresses without
//!   consulting registrations, and verbs' registration cache keeps a region's key valid after
//!   deregistration. So a peer holding stale metadata is not refused
//!   ([`Capabilities::enforces_revocation`] is false), and memory freed while a peer still
//!   reads or writes it can be read, overwritten or fault. Keep a passive operation's memory
//!   alive until its peer has finished (the operation completed, or the peer is gone).
//! - **Seeing the peer.** A passive operation learns nothing until the notification arrives:
//!   it cannot report `InProgress` or a lost peer.
//! - **Error codes.** nixl-sys 1.5.2 folds NIXL's status codes into `InvalidParam`,
//!   `NotFound` and `BackendError` (NIXL's `REMOTE_DISCONNECT`, `MISMATCH`, `NOT_ALLOWED`,
//!   `CANCELED`, ... all arrive as `BackendError`). ferry reports those as
//!   [`Error::Backend`] with codes −2, −4 and −3 (NIXL's own values for the first three);
//!   a transfer that fails after it was posted ends `PeerLost`, the only cause NIXL reports
//!   there on a healthy local agent.
#![warn(missing_docs)]

pub mod library;
mod offer;
mod prepared;
mod progress;
mod zlib;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ferry_core::spin::{self, Look, Spin};
use ferry_core::state::Event;
use ferry_core::{
    BoxFuture, Capabilities, Descriptor, Device, DeviceKind, EndpointBlob, Error, Exposed, KeyPool,
    NotificationKey, OperationKind, Peer, RdmaMetadata, Region, RegistrationId, RemoteDescriptor,
    Side, Transfer,
};
use nixl_sys::{
    Agent, AgentConfig, MemType, MemoryRegion, NixlDescriptor, NixlError, OptArgs, RegDescList,
    RegistrationHandle, XferOp, XferRequest, XferStatus,
};

use prepared::{Prepared, Stage};

use progress::{lock, ActiveSlot, PassiveSlot, Progress, SharedRequest};

/// The backend's name, as in metadata tags and errors.
pub const NAME: &str = "nixl";

/// How long cancelling a posted transfer waits for it to finish with the caller's memory
/// before disconnecting the peer (see `ActiveTransfer::drain`).
const DRAIN: Duration = Duration::from_secs(5);

/// How long, after disconnecting the peer, UCX may take to fail a cancelled transfer.
const CUT_OFF: Duration = Duration::from_secs(5);

/// The largest agent metadata accepted after decompression (a zlib bomb is refused).
pub const MAX_AGENT_METADATA: usize = 16 << 20;

/// How a [`NixlBackend`] is set up.
#[derive(Debug, Clone)]
pub struct NixlConfig {
    /// The agent's name; unique among the agents that will pair (Dynamo names its agents
    /// `<worker_id>-1`).
    pub agent_name: String,
    /// A folder holding `libnixl_capi.so`, searched before the others ([`library`]).
    pub library_dir: Option<PathBuf>,
    /// How many distinct remote metadata blobs stay loaded (least recently used go first), and
    /// how many blobs of one remote agent NIXL may hold before the agent, once no operation
    /// uses it, is unloaded and loaded again from its newest blob alone.
    pub peer_cache: usize,
    /// The longest pause of the progress thread while only passive operations wait.
    pub max_poll_interval: Duration,
    /// How long a task awaiting an operation polls NIXL itself, yielding to its runtime
    /// between looks, before it leaves the watching to the progress thread. Most transfers of
    /// a few MiB end within it, so their owners see completion without a thread hop (tens of
    /// µs on a busy host); `Duration::ZERO` hands over at once.
    pub owner_spin: Duration,
}

impl NixlConfig {
    /// The defaults, with an agent name.
    pub fn named(agent_name: impl Into<String>) -> Self {
        NixlConfig {
            agent_name: agent_name.into(),
            library_dir: None,
            peer_cache: 256,
            max_poll_interval: Duration::from_micros(100),
            owner_spin: Duration::from_millis(1),
        }
    }
}

/// Whether NIXL can be loaded on this machine: `Ok` with where it came from, or the reason.
pub fn available(library_dir: Option<&std::path::Path>) -> Result<library::Loaded, String> {
    library::load(library_dir).cloned().map_err(str::to_owned)
}

fn backend_error(e: NixlError, side: Side, what: &str) -> Error {
    let code = match e {
        NixlError::InvalidParam => -2,
        NixlError::BackendError => -3,
        NixlError::NotFound => -4,
        _ => -8,
    };
    Error::Backend {
        backend: NAME,
        side,
        code,
        message: format!("{what}: {e}"),
    }
}

/// Blobs kept per registration state (see `Shared::local_endpoint`); past it they start over.
const OFFERS_KEPT: usize = 64;

/// A region as nixl-sys wants it described: host memory (DRAM) or a CUDA device's (VRAM).
#[derive(Debug)]
struct Raw {
    addr: usize,
    len: usize,
    mem: MemType,
    device: u64,
}

/// NIXL's memory type and device id for memory on `device`.
fn mem_of(device: Device) -> (MemType, u64) {
    match device {
        Device::Cpu => (MemType::Dram, 0),
        Device::Cuda(ordinal) => (MemType::Vram, u64::from(ordinal)),
    }
}

impl MemoryRegion for Raw {
    unsafe fn as_ptr(&self) -> *const u8 {
        self.addr as *const u8
    }

    fn size(&self) -> usize {
        self.len
    }
}

impl NixlDescriptor for Raw {
    fn mem_type(&self) -> MemType {
        self.mem
    }

    fn device_id(&self) -> u64 {
        self.device
    }
}

/// Whether `ucx` (a backend of `agent`) can register and move CUDA device memory here.
#[cfg(feature = "cuda")]
fn cuda_support(agent: &Agent, ucx: &nixl_sys::Backend) -> Result<(), String> {
    let (mems, _) = agent
        .get_backend_params(ucx)
        .map_err(|e| format!("NIXL does not say which memory its UCX backend handles: {e}"))?;
    let count = mems.len().unwrap_or(0);
    if !(0..count).any(|i| matches!(mems.get(i), Ok(MemType::Vram))) {
        return Err("NIXL's UCX backend does not list VRAM among its memory types".into());
    }
    ferry_core::cuda::device_count()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Without the `cuda` feature there are no device descriptors to move.
#[cfg(not(feature = "cuda"))]
fn cuda_support(_agent: &Agent, _ucx: &nixl_sys::Backend) -> Result<(), String> {
    Err("ferry-backend-nixl was built without its `cuda` feature".into())
}

/// Waits for the work queued on the streams of `local`'s device memory before NIXL (whose
/// copies do not run on those streams) reads or writes it.
fn settle_streams(local: &[Descriptor<'_>]) -> Result<(), Error> {
    #[cfg(feature = "cuda")]
    return ferry_core::cuda::synchronize_streams(local);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = local;
        Ok(())
    }
}

/// Random keys from the operating system, as Dynamo's `uuid4()` draws them, a page of
/// random bytes at a time ([`KeyPool`]).
struct Entropy {
    source: std::fs::File,
    pool: KeyPool,
}

impl Entropy {
    fn key(&mut self) -> NotificationKey {
        let Entropy { source, pool } = self;
        // /dev/urandom does not fail once open; a short read would make keys guessable.
        pool.next(|page| source.read_exact(page))
            .expect("reading /dev/urandom")
    }
}

struct Peers {
    capacity: usize,
    tick: u64,
    /// Compressed blob → (remote agent name, last use).
    loaded: HashMap<Vec<u8>, (String, u64)>,
    /// Remote agent loaded in NIXL → what holds it there.
    agents: HashMap<String, Holders>,
}

/// What keeps a remote agent loaded: its cached blobs, and the peers and transfers using it.
/// When both are gone its metadata is unloaded (`invalidate_remote_md`), so the agents a
/// long-lived worker keeps are bounded by the blob cache plus those in use.
#[derive(Debug, Default)]
struct Holders {
    blobs: usize,
    users: usize,
    /// Blobs loaded into NIXL since the agent was last loaded afresh. NIXL adds the regions
    /// of each to what it holds for the agent and drops none until the agent is unloaded,
    /// whether or not the blob is still cached here.
    loads: usize,
}

impl Peers {
    /// Counts a cached blob of `agent`.
    fn add_blob(&mut self, agent: &str) {
        self.agents.entry(agent.to_owned()).or_default().blobs += 1;
    }

    /// Forgets cached blobs matching `unwanted`; returns the agents nothing holds any more.
    fn drop_blobs(&mut self, mut unwanted: impl FnMut(&str, u64) -> bool) -> Vec<String> {
        let mut released = Vec::new();
        let agents = &mut self.agents;
        self.loaded.retain(|_, (name, used)| {
            if !unwanted(name, *used) {
                return true;
            }
            if let Some(holders) = agents.get_mut(name.as_str()) {
                holders.blobs = holders.blobs.saturating_sub(1);
                released.push(name.clone());
            }
            false
        });
        released.retain(|name| self.unheld(name));
        released.dedup();
        released
    }

    /// Forgets the least recently used blob where the cache is full; returns the agents
    /// nothing holds any more (a newer blob of the same agent replaces its metadata).
    fn make_room(&mut self) -> Vec<String> {
        if self.loaded.len() < self.capacity {
            return Vec::new();
        }
        match self.loaded.values().map(|(_, used)| *used).min() {
            Some(oldest) => self.drop_blobs(|_, used| used == oldest),
            None => Vec::new(),
        }
    }

    /// Whether nothing holds `agent` any more; forgets it if so.
    fn unheld(&mut self, agent: &str) -> bool {
        match self.agents.get(agent) {
            Some(holders) if holders.blobs == 0 && holders.users == 0 => {
                self.agents.remove(agent);
                true
            }
            _ => false,
        }
    }
}

/// Unloads remote agents nothing holds any more (never the local agent itself), releasing
/// their prepared lists first; called with the peers lock held.
fn unload(shared: &Shared, agents: &[String]) {
    let own = shared.agent.name();
    let mut prepared = lock(&shared.prepared);
    for agent in agents.iter().filter(|a| **a != own) {
        shared.invalidate(&mut prepared, agent);
    }
}

/// A use of a loaded remote agent, by a peer or a transfer: the agent stays loaded while one
/// lives.
struct AgentRef {
    shared: Arc<Shared>,
    name: String,
}

impl AgentRef {
    fn new(shared: Arc<Shared>, name: String) -> AgentRef {
        lock(&shared.peers)
            .agents
            .entry(name.clone())
            .or_default()
            .users += 1;
        AgentRef { shared, name }
    }
}

impl Clone for AgentRef {
    fn clone(&self) -> AgentRef {
        AgentRef::new(self.shared.clone(), self.name.clone())
    }
}

impl Drop for AgentRef {
    fn drop(&mut self) {
        let mut peers = lock(&self.shared.peers);
        if let Some(holders) = peers.agents.get_mut(&self.name) {
            holders.users = holders.users.saturating_sub(1);
        }
        if peers.unheld(&self.name) {
            unload(&self.shared, std::slice::from_ref(&self.name));
        }
    }
}

struct Shared {
    /// Prepared descriptor lists (see `prepared`). Declared before `agent`, so released
    /// while the agent lives. Its lock is held across every deregistration and every load and
    /// unload of remote metadata (lock order: `offers`, then `peers`, then this, then
    /// `registrations`).
    prepared: Mutex<Prepared>,
    agent: Agent,
    progress: Arc<Progress>,
    capabilities: Capabilities,
    /// Live registrations: the region each covers, and NIXL's handle.
    registrations: Mutex<HashMap<u64, (Region, RegistrationHandle)>>,
    next: AtomicU64,
    /// Requests NIXL finished within their post ([`NixlStats::finished_in_post`]).
    finished_in_post: AtomicU64,
    /// Remote agents unloaded and loaded afresh ([`NixlStats::fresh_loads`]).
    fresh_loads: AtomicU64,
    /// Bumped by every registration change: the local metadata changes with it.
    generation: AtomicU64,
    /// The agent's metadata as it was made, with no region registered: its head (the agent's
    /// connection info) heads every offer; `None` where NIXL's serialisation does not read as
    /// expected (see `offer`), and operations then offer the full metadata.
    bare_metadata: Option<Vec<u8>>,
    /// Blobs offered since the registrations last changed, by the regions they offer.
    offers: Mutex<(u64, HashMap<Vec<Region>, EndpointBlob>)>,
    peers: Mutex<Peers>,
    entropy: Mutex<Entropy>,
    owner_spin: Duration,
    /// Whether device memory can be registered and moved, or why not.
    cuda_support: Result<(), String>,
}

/// ferry's NIXL backend: one agent with the UCX plugin, and its progress thread.
pub struct NixlBackend {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NixlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NixlBackend")
            .field("agent", &self.shared.agent.name())
            .finish_non_exhaustive()
    }
}

impl NixlBackend {
    /// Loads NIXL, creates the agent and its UCX backend, and starts the progress thread.
    pub fn new(config: NixlConfig) -> Result<NixlBackend, Error> {
        let unavailable = |reason: String| Error::BackendUnavailable {
            backend: NAME,
            reason,
        };
        library::load(config.library_dir.as_deref()).map_err(|e| unavailable(e.to_owned()))?;
        let entropy = std::fs::File::open("/dev/urandom")
            .map_err(|e| unavailable(format!("no source of random keys (/dev/urandom): {e}")))?;
        let agent_config = AgentConfig {
            enable_prog_thread: false,
            enable_listen_thread: false,
            ..AgentConfig::default()
        };
        let agent = Agent::new_configured(&config.agent_name, &agent_config)
            .map_err(|e| unavailable(format!("creating agent {:?}: {e}", config.agent_name)))?;
        let (_, params) = agent
            .get_plugin_params("UCX")
            .map_err(|e| unavailable(format!("NIXL has no UCX plugin: {e}")))?;
        let ucx = agent
            .create_backend("UCX", &params)
            .map_err(|e| unavailable(format!("creating the UCX backend: {e}")))?;
        let cuda_support = cuda_support(&agent, &ucx);
        let bare_metadata = agent
            .get_local_md()
            .ok()
            .filter(|metadata| offer::head(metadata).is_some());
        if bare_metadata.is_none() {
            tracing::warn!(
                "NIXL's agent metadata does not read as expected: every operation will offer \
                 all of this agent's registered memory"
            );
        }
        let progress = Progress::new(agent.clone(), config.max_poll_interval, config.owner_spin);
        let devices = match cuda_support {
            Ok(()) => vec![DeviceKind::Host, DeviceKind::Cuda],
            Err(_) => vec![DeviceKind::Host],
        };
        let shared = Arc::new(Shared {
            prepared: Mutex::new(Prepared::new(config.agent_name.clone())),
            agent,
            progress: progress.clone(),
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
            registrations: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            finished_in_post: AtomicU64::new(0),
            fresh_loads: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            bare_metadata,
            offers: Mutex::new((0, HashMap::new())),
            peers: Mutex::new(Peers {
                capacity: config.peer_cache.max(1),
                tick: 0,
                loaded: HashMap::new(),
                agents: HashMap::new(),
            }),
            entropy: Mutex::new(Entropy {
                source: entropy,
                pool: KeyPool::new(),
            }),
            owner_spin: config.owner_spin,
            cuda_support,
        });
        let thread = std::thread::Builder::new()
            .name(format!("ferry-nixl-{}", config.agent_name))
            .spawn(move || progress.run())
            .map_err(|e| unavailable(format!("starting the progress thread: {e}")))?;
        Ok(NixlBackend {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether this backend moves CUDA device memory (its capabilities then list
    /// [`DeviceKind::Cuda`]), or why not: this needs the `cuda` feature, a NIXL UCX plugin that
    /// lists VRAM among its memory types, and a CUDA device. Where it does not, validation
    /// refuses device descriptors with `UnsupportedDevice` before any operation exists.
    pub fn cuda_support(&self) -> Result<(), String> {
        self.shared.cuda_support.clone()
    }

    /// The agent's name.
    pub fn agent_name(&self) -> String {
        self.shared.agent.name()
    }

    /// Whether NIXL holds metadata of `agent` (a remote agent's name) covering `region`:
    /// whether this backend could make a request to it without loading that agent's metadata
    /// again.
    pub fn holds_remote_region(&self, agent: &str, region: &RemoteDescriptor) -> bool {
        let span = (region.ptr as usize, region.size as usize, region.device);
        prepared::descriptor_list(std::slice::from_ref(&span))
            .is_ok_and(|list| self.shared.agent.check_remote_metadata(agent, Some(&list)))
    }

    /// What the backend holds now.
    pub fn stats(&self) -> NixlStats {
        let (loaded_peers, remote_agents) = {
            let peers = lock(&self.shared.peers);
            (peers.loaded.len(), peers.agents.len())
        };
        let (prepared_lists, lists_prepared) = {
            let prepared = lock(&self.shared.prepared);
            (prepared.len(), prepared.made)
        };
        let state = self.shared.progress.lock();
        NixlStats {
            live_keys: state.passive.len(),
            live_transfers: state.active.len(),
            unmatched_notifications: state.unmatched,
            thread_wakes: state.wakes,
            thread_parks: state.parks,
            finished_in_post: self.shared.finished_in_post.load(Ordering::Relaxed),
            fresh_loads: self.shared.fresh_loads.load(Ordering::Relaxed),
            registrations: lock(&self.shared.registrations).len(),
            loaded_peers,
            remote_agents,
            prepared_lists,
            lists_prepared,
        }
    }
}

/// A snapshot of a [`NixlBackend`]'s state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NixlStats {
    /// Passive operations waiting for their notification.
    pub live_keys: usize,
    /// Posted transfers the progress thread is watching.
    pub live_transfers: usize,
    /// Notifications that matched no live operation.
    pub unmatched_notifications: u64,
    /// Times an operation or a cancel woke the progress thread (owners that poll their
    /// operations themselves need not: see the crate's Progress section).
    pub thread_wakes: u64,
    /// Times the progress thread parked: once per wake-up, whether an operation, a timer or
    /// nothing at all woke it.
    pub thread_parks: u64,
    /// Transfers NIXL finished within their post, which neither their owner nor the thread
    /// then polled: UCX moved the bytes during the post (CMA does between processes of one
    /// host).
    pub finished_in_post: u64,
    /// Times a remote agent was unloaded and loaded again from its newest blob alone, because
    /// NIXL held the regions of more of its blobs than [`NixlConfig::peer_cache`] (a peer
    /// registering memory per operation sends a new blob each time).
    pub fresh_loads: u64,
    /// Live memory registrations.
    pub registrations: usize,
    /// Distinct remote metadata blobs loaded.
    pub loaded_peers: usize,
    /// Remote agents loaded in NIXL: those with a cached blob or in use.
    pub remote_agents: usize,
    /// Descriptor lists NIXL holds prepared for operations over the same regions again
    /// (local lists until memory is deregistered, a remote agent's until its metadata is
    /// loaded again or unloaded; see the crate's "Transfer requests" section).
    pub prepared_lists: usize,
    /// Descriptor lists prepared since the backend started: an operation over regions whose
    /// lists are kept prepares none.
    pub lists_prepared: u64,
}

impl Drop for NixlBackend {
    fn drop(&mut self) {
        self.shared.progress.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Releases `agent`'s prepared lists, then unloads its metadata from NIXL (which closes
    /// its endpoint); `prepared` is the held `Prepared` lock.
    fn invalidate(&self, prepared: &mut Prepared, agent: &str) {
        prepared.forget_remote(agent);
        if let Err(e) = self.agent.invalidate_remote_md(agent) {
            tracing::debug!(%agent, "unloading a remote agent's metadata: {e}");
        }
    }

    /// The registrations covering `local`'s regions, in order, none inside another: for each
    /// region the oldest live registration covering it, the one the Connector leases for it
    /// (`RegistrationCache::lookup` takes the lowest id), so the offer is the same while they
    /// live. NIXL finds a region in nested sections only by luck (it looks at two neighbours),
    /// so a registration inside another chosen one is left out: the outer one covers it.
    fn covering(&self, local: &[Descriptor<'_>]) -> Result<Vec<Region>, Error> {
        let covers = |outer: &Region, inner: &Region| {
            outer.device == inner.device && outer.contains(inner.addr, inner.len)
        };
        let registrations = lock(&self.registrations);
        let mut chosen: Vec<Region> = Vec::with_capacity(local.len());
        for (index, descriptor) in local.iter().enumerate() {
            // Empty regions are registered too (NIXL wants every descriptor of a request in
            // a registration), so they are offered like the others.
            let region = descriptor.region();
            if chosen.iter().any(|outer| covers(outer, &region)) {
                continue;
            }
            let (_, (registered, _)) = registrations
                .iter()
                .filter(|(_, (registered, _))| covers(registered, &region))
                .min_by_key(|(&id, _)| id)
                .ok_or_else(|| Error::Backend {
                    backend: NAME,
                    side: Side::Local,
                    code: -4,
                    message: format!("descriptor {index} is not inside a registration"),
                })?;
            chosen.push(*registered);
        }
        drop(registrations);
        chosen.sort_unstable_by_key(|r| (r.device, r.addr, r.len));
        chosen.dedup();
        let nested = |inner: &Region| chosen.iter().any(|o| o != inner && covers(o, inner));
        let offered = chosen.iter().copied().filter(|r| !nested(r)).collect();
        Ok(offered)
    }

    /// The endpoint blob offering a peer the registrations that cover `local`, and no other.
    fn local_endpoint(&self, local: &[Descriptor<'_>]) -> Result<EndpointBlob, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        let regions = self.covering(local)?;
        let mut offers = lock(&self.offers);
        if offers.0 < generation {
            *offers = (generation, HashMap::new());
        }
        if let Some(blob) = offers.1.get(&regions).filter(|_| offers.0 == generation) {
            return Ok(blob.clone());
        }
        let metadata = self.offered_metadata(&regions)?;
        let compressed = zlib::deflate(&metadata).map_err(|e| Error::Backend {
            backend: NAME,
            side: Side::Local,
            code: -8,
            message: format!("compressing agent metadata: {e}"),
        })?;
        {
            // Remember our own blobs: a Connector may pair with itself, and NIXL refuses to
            // load an agent's own metadata (it transfers locally under its own name instead).
            let mut peers = lock(&self.peers);
            let own = self.agent.name();
            if !peers.loaded.contains_key(&compressed) {
                let released = peers.make_room();
                unload(self, &released);
                peers.tick += 1;
                let tick = peers.tick;
                peers.loaded.insert(compressed.clone(), (own.clone(), tick));
                peers.add_blob(&own);
            }
        }
        let blob = EndpointBlob::Nixl { compressed };
        if offers.0 == generation {
            if offers.1.len() >= OFFERS_KEPT {
                offers.1.clear();
            }
            offers.1.insert(regions, blob.clone());
        }
        Ok(blob)
    }

    /// Agent metadata offering `regions` (registered ones): the agent's connection info and
    /// those regions' sections, spliced from NIXL's partial metadata (see `offer`); the full
    /// metadata where that cannot be read.
    fn offered_metadata(&self, regions: &[Region]) -> Result<Vec<u8>, Error> {
        let full = || {
            self.agent
                .get_local_md()
                .map_err(|e| backend_error(e, Side::Local, "get_local_md"))
        };
        let Some(bare) = &self.bare_metadata else {
            return full();
        };
        let (mem, _) = mem_of(regions.first().map_or(Device::Cpu, |r| r.device));
        let mut list =
            RegDescList::new(mem).map_err(|e| backend_error(e, Side::Local, "offer list"))?;
        for region in regions {
            list.add_desc(
                region.addr as usize,
                region.len as usize,
                mem_of(region.device).1,
            );
        }
        let partial = self
            .agent
            .get_local_partial_md(&list, None)
            .map_err(|e| backend_error(e, Side::Local, "get_local_partial_md"))?;
        match offer::splice(bare, &partial) {
            Some(offered) => Ok(offered),
            None => {
                tracing::warn!("NIXL's partial metadata does not read as expected: offering all");
                full()
            }
        }
    }

    /// Forgets every blob of `agent`, so the next operation against it loads its metadata and
    /// connects again.
    fn forget(&self, agent: &str) {
        let mut peers = lock(&self.peers);
        let released = peers.drop_blobs(|name, _| name == agent);
        unload(self, &released);
    }

    /// Loads an agent's metadata into NIXL; returns the agent's name.
    fn load(&self, metadata: &[u8]) -> Result<String, Error> {
        // A newer blob of a loaded agent changes what its lists were prepared against; none
        // is prepared or used until the load is done and they are released.
        let mut prepared = lock(&self.prepared);
        let loaded = self.agent.load_remote_md(metadata);
        prepared.loaded(&loaded);
        drop(prepared);
        loaded.map_err(|e| match e {
            // The metadata parsed, but the UCX plugin could not connect to the agent it
            // names (its process is gone, or unreachable).
            NixlError::BackendError => Error::PeerLost {
                reason: format!("NIXL cannot connect to the agent in nixl_metadata: {e}"),
            },
            other => Error::InvalidMetadata {
                reason: format!("NIXL refused the agent metadata: {other}"),
            },
        })
    }

    /// The remote agent a blob names, held for a peer: counted under the lock that loaded or
    /// found it, so no other thread's fresh load or eviction unloads it before it is held.
    fn hold_remote_agent(self: &Arc<Self>, compressed: &[u8]) -> Result<AgentRef, Error> {
        let mut peers = lock(&self.peers);
        let name = self.remote_agent(&mut peers, compressed)?;
        peers.agents.entry(name.clone()).or_default().users += 1;
        Ok(AgentRef {
            shared: self.clone(),
            name,
        })
    }

    /// The remote agent a blob names, loading its metadata unless this exact blob is loaded;
    /// `peers` is the held peers lock.
    ///
    /// Loads and unloads happen under the peers lock, so an agent is never unloaded between
    /// another thread's load of it and that load's entry in the cache.
    fn remote_agent(&self, peers: &mut Peers, compressed: &[u8]) -> Result<String, Error> {
        peers.tick += 1;
        let tick = peers.tick;
        if let Some((name, used)) = peers.loaded.get_mut(compressed) {
            *used = tick;
            return Ok(name.clone());
        }
        let metadata = zlib::inflate(compressed, MAX_AGENT_METADATA).map_err(|e| match e {
            zlib::InflateError::Corrupt(e) => Error::InvalidMetadata {
                reason: format!("nixl_metadata does not inflate: {e}"),
            },
            zlib::InflateError::TooLarge => Error::InvalidMetadata {
                reason: format!("agent metadata inflates past {MAX_AGENT_METADATA} bytes"),
            },
        })?;
        let name = self.load(&metadata)?;
        let capacity = peers.capacity;
        let holders = peers.agents.entry(name.clone()).or_default();
        holders.loads += 1;
        if holders.loads > capacity && holders.users == 0 {
            // NIXL still holds the regions of every blob of this agent loaded since it was
            // last loaded afresh (a peer registering per operation sends a new one each
            // time), which would grow without bound: nothing uses the agent now, so it
            // starts again from this blob alone.
            peers.drop_blobs(|agent, _| agent == name);
            peers.agents.remove(&name);
            unload(self, std::slice::from_ref(&name));
            self.load(&metadata)?;
            self.fresh_loads.fetch_add(1, Ordering::Relaxed);
            peers.agents.entry(name.clone()).or_default().loads = 1;
        }
        let mut released = peers.make_room();
        peers
            .loaded
            .insert(compressed.to_vec(), (name.clone(), tick));
        peers.add_blob(&name);
        released.retain(|agent| *agent != name);
        unload(self, &released);
        Ok(name)
    }
}

impl ferry_core::Backend for NixlBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    fn new_key(&self) -> NotificationKey {
        lock(&self.shared.entropy).key()
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        if !self.shared.capabilities.reaches(region.device) {
            return Err(Error::UnsupportedDevice {
                device: region.device,
                backend: NAME,
            });
        }
        let (mem, device) = mem_of(region.device);
        let raw = Raw {
            addr: region.addr as usize,
            len: region.len as usize,
            mem,
            device,
        };
        let handle = self
            .shared
            .agent
            .register_memory(&raw, None)
            .map_err(|e| backend_error(e, Side::Local, "register_memory"))?;
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.registrations).insert(id, (region, handle));
        self.shared.generation.fetch_add(1, Ordering::Release);
        Ok(RegistrationId(id))
    }

    fn deregister(&self, id: RegistrationId) {
        // No prepared list may refer to the registration once it is gone, nor be prepared
        // against it meanwhile.
        let mut prepared = lock(&self.shared.prepared);
        prepared.forget_local();
        // Dropping the handle deregisters the memory.
        let handle = lock(&self.shared.registrations)
            .remove(&id.0)
            .map(|(_, h)| h);
        let deregistered = handle.is_some();
        drop(handle);
        drop(prepared);
        if deregistered {
            self.shared.generation.fetch_add(1, Ordering::Release);
            self.shared.progress.lock().linger();
        }
    }

    fn expose<'a>(
        &'a self,
        _kind: OperationKind,
        key: NotificationKey,
        local: &'a [Descriptor<'_>],
        _deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Exposed, Error>> {
        let settled = settle_streams(local);
        let exposed = settled
            .and_then(|()| self.shared.local_endpoint(local))
            .map(|endpoint| {
                let progress = &self.shared.progress;
                // Its owner is about to poll for the notification itself (and so progress the
                // agent); the thread stands by for an owner's window (and looks within
                // ADOPT_WITHIN after it, should nobody poll).
                let now = Instant::now();
                let watch_from = now + progress.owner_spin;
                let mut state = progress.lock();
                state.keep_warm(now);
                state.passive.insert(
                    key,
                    PassiveSlot {
                        outcome: None,
                        waker: None,
                        watch_from: Some(watch_from),
                    },
                );
                progress.wake_by(&mut state, progress.first_look(watch_from));
                drop(state);
                Exposed {
                    endpoint,
                    transfer: Box::new(PassiveTransfer {
                        progress: self.shared.progress.clone(),
                        key,
                        ended: false,
                        spin: Spin::new(self.shared.owner_spin),
                    }) as Box<dyn Transfer>,
                }
            });
        Box::pin(async move { exposed })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>> {
        let peer = match endpoint {
            EndpointBlob::Nixl { compressed } => {
                self.shared.hold_remote_agent(compressed).map(|agent| {
                    Arc::new(NixlPeer {
                        shared: self.shared.clone(),
                        agent,
                    }) as Arc<dyn Peer>
                })
            }
            other => Err(Error::BackendMismatch {
                expected: NAME.into(),
                found: other.backend().to_owned(),
            }),
        };
        Box::pin(async move { peer })
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A passive operation: waits for its key's notification.
struct PassiveTransfer {
    progress: Arc<Progress>,
    key: NotificationKey,
    ended: bool,
    spin: Spin,
}

impl PassiveTransfer {
    fn take_outcome(&mut self) -> Option<Event> {
        let mut state = self.progress.lock();
        let outcome = state.passive.get_mut(&self.key)?.outcome.take()?;
        state.passive.remove(&self.key);
        self.ended = true;
        Some(outcome)
    }
}

impl Transfer for PassiveTransfer {
    fn poll_event(&mut self, cx: &mut Context<'_>, _local: &mut [Descriptor<'_>]) -> Poll<Event> {
        if spin::is_glance(cx) {
            // `status()`: one look, no window, nothing handed over.
            if self.take_outcome().is_none() {
                self.progress.poll_notifications();
            }
            return self.take_outcome().map_or(Poll::Pending, Poll::Ready);
        }
        let first = self.spin.until().is_none();
        let slice = self.spin.slice();
        if first {
            // The thread leaves the notifications to this owner until its window ends.
            if let Some(slot) = self.progress.lock().passive.get_mut(&self.key) {
                slot.watch_from = self.spin.until();
            }
        }
        loop {
            if let Some(event) = self.take_outcome() {
                return Poll::Ready(event);
            }
            // Look ourselves before leaving it to the thread.
            self.progress.poll_notifications();
            if let Some(event) = self.take_outcome() {
                return Poll::Ready(event);
            }
            match self.spin.next(slice) {
                Look::Again => {
                    self.progress.progress_others();
                    continue;
                }
                Look::Later => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Look::HandOver => break,
            }
        }
        let mut state = self.progress.lock();
        match state.passive.get_mut(&self.key) {
            Some(slot) if slot.outcome.is_none() => {
                slot.waker = Some(cx.waker().clone());
                slot.watch_from = None;
                self.progress.wake_by(&mut state, Instant::now());
                Poll::Pending
            }
            // The notification landed between the look and the lock.
            Some(_) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Ready(Event::Failed(Error::StaleMetadata)),
        }
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        self.ended = true;
        let outcome = self
            .progress
            .lock()
            .passive
            .remove(&self.key)
            .and_then(|slot| slot.outcome);
        self.progress.linger();
        outcome
    }
}

impl Drop for PassiveTransfer {
    fn drop(&mut self) {
        if !self.ended {
            self.progress.lock().passive.remove(&self.key);
        }
    }
}

/// A connected remote agent.
struct NixlPeer {
    shared: Arc<Shared>,
    agent: AgentRef,
}

impl NixlPeer {
    fn post_now(
        &self,
        kind: OperationKind,
        remote: &RdmaMetadata,
        local: &[Descriptor<'_>],
    ) -> Result<ActiveTransfer, Error> {
        settle_streams(local)?;
        let local_spans: Vec<prepared::Span> = local
            .iter()
            .map(|d| (d.addr() as usize, d.len(), d.device()))
            .collect();
        let remote_spans: Vec<prepared::Span> = remote
            .descriptors
            .iter()
            .map(|d| (d.ptr as usize, d.size as usize, d.device))
            .collect();
        let mut args = OptArgs::new().map_err(|e| backend_error(e, Side::Local, "opt args"))?;
        args.set_notification_message(&remote.notification_key.completion_message())
            .and_then(|()| args.set_has_notification(true))
            .map_err(|e| backend_error(e, Side::Local, "setting the notification"))?;
        let op = match kind {
            OperationKind::Read => XferOp::Read,
            OperationKind::Write => XferOp::Write,
        };
        let agent = &self.shared.agent;
        let request = lock(&self.shared.prepared)
            .request(
                agent,
                op,
                &local_spans,
                &self.agent.name,
                &remote_spans,
                &args,
            )
            .map_err(|(stage, e)| match (stage, e) {
                // The remote regions are not in the agent metadata we hold: the peer never
                // offered them.
                (Stage::Remote, e @ (NixlError::InvalidParam | NixlError::NotFound)) => {
                    Error::AccessDenied {
                        side: Side::Local,
                        reason: format!(
                            "NIXL cannot map the remote regions of {}: {e}",
                            self.agent.name
                        ),
                    }
                }
                // The remote agent's metadata was unloaded since (its peer was cut off).
                (Stage::Make, NixlError::NotFound) => Error::PeerLost {
                    reason: format!("NIXL no longer holds the metadata of {}", self.agent.name),
                },
                (Stage::Local, other) => backend_error(other, Side::Local, "prepare_xfer_dlist"),
                (Stage::Remote, other) => {
                    backend_error(other, Side::Local, "prepare_xfer_dlist (remote)")
                }
                (Stage::Make, other) => backend_error(other, Side::Local, "make_xfer_req"),
            })?;
        let in_progress = agent
            .post_xfer_req(&request, Some(&args))
            .map_err(|e| backend_error(e, Side::Local, "post_xfer_req"))?;
        let request = Arc::new(Mutex::new(Some(request)));
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        if !in_progress {
            self.shared.finished_in_post.fetch_add(1, Ordering::Relaxed);
        } else {
            // Its owner is about to poll it; the thread stands by for an owner's window (and
            // looks within ADOPT_WITHIN after it, should nobody poll).
            let progress = &self.shared.progress;
            let now = Instant::now();
            let watch_from = now + progress.owner_spin;
            let mut state = progress.lock();
            state.keep_warm(now);
            state.active.insert(
                id,
                ActiveSlot {
                    request: request.clone(),
                    waker: None,
                    watch_from: Some(watch_from),
                },
            );
            progress.wake_by(&mut state, progress.first_look(watch_from));
        }
        Ok(ActiveTransfer {
            shared: self.shared.clone(),
            request,
            id,
            remote_agent: self.agent.clone(),
            key: remote.notification_key,
            ended: false,
            done_at_post: !in_progress,
            watched: in_progress,
            spin: Spin::new(self.shared.owner_spin),
        })
    }
}

impl Peer for NixlPeer {
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

/// An active operation: one posted NIXL request.
struct ActiveTransfer {
    shared: Arc<Shared>,
    request: SharedRequest,
    id: u64,
    remote_agent: AgentRef,
    key: NotificationKey,
    ended: bool,
    /// NIXL reported the whole request done within the post (`NIXL_SUCCESS` rather than
    /// `NIXL_IN_PROG`: UCX moved the bytes there, as CMA does, and took the notification).
    /// Nothing is left to poll.
    done_at_post: bool,
    /// Whether the progress state may hold a slot for it: from a post still in progress, or
    /// from the hand-over after its owner's window. Without one, ending it takes no lock.
    watched: bool,
    spin: Spin,
}

impl ActiveTransfer {
    /// Waits until NIXL is done with the request's local memory, and returns its last status.
    ///
    /// UCX cannot take back a get or a put once posted: releasing an unfinished NIXL request
    /// does not stop it, and UCX goes on writing into a read's memory (or reading a write's)
    /// after the caller has freed it — seen as a crash in `ucp_get_rep_handler` with UCX's
    /// tcp transport. So a cancel lets the transfer finish, for up to [`DRAIN`]; a peer that
    /// does not let it finish by then is cut off (`invalidate_remote_md` closes the endpoint,
    /// which fails every request to it), and its requests fail within [`CUT_OFF`].
    fn drain(&self, request: &XferRequest) -> Result<XferStatus, NixlError> {
        let agent = &self.shared.agent;
        let settled = |limit: Duration| {
            let until = Instant::now() + limit;
            loop {
                match agent.get_xfer_status(request) {
                    Ok(XferStatus::InProgress) if Instant::now() < until => {
                        std::thread::yield_now()
                    }
                    Ok(XferStatus::InProgress) => return None,
                    done => return Some(done),
                }
            }
        };
        if let Some(done) = settled(DRAIN) {
            return done;
        }
        tracing::warn!(
            peer = %self.remote_agent.name,
            "a cancelled NIXL transfer did not finish within {DRAIN:?}; disconnecting the peer"
        );
        self.shared
            .invalidate(&mut lock(&self.shared.prepared), &self.remote_agent.name);
        self.shared.forget(&self.remote_agent.name);
        if let Some(done) = settled(CUT_OFF) {
            return done;
        }
        // UCX still owns memory the caller is about to free; going on would let it write into
        // whatever reuses that memory. Nothing safe is left.
        tracing::error!(
            peer = %self.remote_agent.name,
            "UCX kept a cancelled transfer after its peer was disconnected; aborting"
        );
        std::process::abort()
    }

    fn status(&self) -> Option<Result<XferStatus, NixlError>> {
        lock(&self.request)
            .as_ref()
            .map(|request| self.shared.agent.get_xfer_status(request))
    }

    /// Asks NIXL once; the event, if the request has left `InProgress`.
    fn look(&mut self) -> Option<Poll<Event>> {
        match self.status() {
            Some(Ok(XferStatus::Success)) => Some(self.finish(Event::Completed)),
            Some(Err(e)) => Some(self.finish(transfer_failed(e))),
            None => Some(self.finish(Event::Failed(Error::Cancelled { by: Side::Local }))),
            Some(Ok(XferStatus::InProgress)) => None,
        }
    }

    fn finish(&mut self, event: Event) -> Poll<Event> {
        self.ended = true;
        self.unwatch();
        Poll::Ready(event)
    }

    /// Takes its slot, if any, out of the progress state.
    fn unwatch(&mut self) {
        if std::mem::take(&mut self.watched) {
            self.shared.progress.lock().active.remove(&self.id);
        }
    }
}

fn transfer_failed(e: NixlError) -> Event {
    Event::Failed(Error::PeerLost {
        reason: format!("NIXL reported the transfer failed ({e}; nixl-sys folds the cause)"),
    })
}

impl Transfer for ActiveTransfer {
    fn poll_event(&mut self, cx: &mut Context<'_>, _local: &mut [Descriptor<'_>]) -> Poll<Event> {
        if self.done_at_post {
            return self.finish(Event::Completed);
        }
        if spin::is_glance(cx) {
            // `status()`: one look, no window, nothing handed over.
            return self.look().unwrap_or(Poll::Pending);
        }
        let first = self.spin.until().is_none();
        let slice = self.spin.slice();
        if first {
            // The thread leaves the request to this owner until its window ends.
            if let Some(slot) = self.shared.progress.lock().active.get_mut(&self.id) {
                slot.watch_from = self.spin.until();
            }
        }
        loop {
            if let Some(ended) = self.look() {
                return ended;
            }
            match self.spin.next(slice) {
                Look::Again => {
                    self.shared.progress.progress_others();
                    continue;
                }
                Look::Later => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Look::HandOver => break,
            }
        }
        // The owner's window is over: the thread watches the request from now on.
        self.watched = true;
        let progress = &self.shared.progress;
        let mut state = progress.lock();
        state.active.insert(
            self.id,
            ActiveSlot {
                request: self.request.clone(),
                waker: Some(cx.waker().clone()),
                watch_from: None,
            },
        );
        progress.wake_by(&mut state, Instant::now());
        Poll::Pending
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        self.ended = true;
        self.unwatch();
        if self.done_at_post {
            // NIXL reported the whole request done (the bytes moved, the notification handed
            // to UCX) before the cancel.
            return Some(Event::Completed);
        }
        let request = lock(&self.request).take()?;
        if let Ok(XferStatus::Success) = self.drain(&request) {
            // The bytes all moved before the transfer could be stopped, and NIXL has sent the
            // peer its notification: the cancel lost the race.
            return Some(Event::Completed);
        }
        drop(request);
        let _ = self.shared.agent.send_notification(
            &self.remote_agent.name,
            &self.key.cancel_message(),
            None,
        );
        // The notification leaves only while the agent is progressed.
        self.shared.progress.linger();
        None
    }
}

impl Drop for ActiveTransfer {
    fn drop(&mut self) {
        if !self.ended {
            let _ = Transfer::cancel(self, &mut []);
        }
        self.unwatch();
        // Released before the agent reference, which may unload the remote agent.
        drop(lock(&self.request).take());
    }
}
