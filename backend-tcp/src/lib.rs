//! ferry-backend-tcp: ferry over plain TCP, for any machine. Host bytes move straight between
//! the socket and the operation's descriptors, in frames, with no whole-transfer buffer; with
//! the `cuda` feature, CUDA device memory moves through two host staging buffers per
//! connection (see "Device memory" below).
//!
//! ```text
//!   active side (read / write)                passive side (readable / writable)
//!   ┌──────────────┐  pooled connections   ┌─────────────┐   lends the connection   ┌───────────┐
//!   │ ReadOperation├──── READ ─────────────▶│ connection  ├─────────────────────────▶│ Readable  │
//!   │              │◀─── DATA… DONE ───────┤ task: §9    │◀──── handed back ───────┤ (in its   │
//!   │              ├──── NOTIFY(key) ─────▶│ admission   │                          │  owner's  │
//!   └──────────────┘                       └─────────────┘   completes on NOTIFY    │  polls)   │
//!                                                                                   └───────────┘
//! ```
//!
//! # What it does
//! - One listener per Connector ([`TcpConfig::bind`], default `127.0.0.1:0`), advertised in
//!   the metadata's tagged blob `ferry-tcp/1:b64:…` as `<instance id>@<address>`
//!   ([`TcpConfig::advertise`] for use across hosts).
//! - Connections are pooled per peer and reused; each carries one transfer at a time, so
//!   many operations in flight use many connections, up to
//!   [`TcpConfig::max_connections_per_peer`] (64): operations beyond it are begun at once but
//!   wait, in their own polls, for a connection to come back; if none comes back at all for
//!   [`TcpConfig::queue_patience`] (100 ms), they dial one beyond the cap. Transfers of at least
//!   [`TcpConfig::parallel_threshold`] bytes can be spread over
//!   [`TcpConfig::parallel_connections`] connections.
//! - Every request is checked on the serving side (SPEC §9): the key must name a live
//!   operation of the right kind, every range must lie inside its descriptors (with the end
//!   computed without overflow), and access ends when the operation ends. A violation gets an
//!   `ERROR` reply and a counter ([`TcpStats::denied`]), never a byte.
//! - Hostile peers are bounded: frame bodies have per-type limits checked before anything is
//!   allocated, reads have a read-ahead of 64 KiB, a peer that stalls inside a frame is cut
//!   off after [`TcpConfig::frame_timeout`], an idle one after [`TcpConfig::idle_timeout`],
//!   and each connection has its own task, so a stalled peer blocks nobody else.
//!
//! # Progress: operations move bytes inside their owners' polls
//! This crate has no `unsafe`, so a background task cannot touch memory an operation merely
//! borrows. The serving side therefore lends each admitted request's connection to the
//! passive operation, which streams the bytes while its owner awaits it
//! (`wait_for_completion`) or polls it (`status`); the active side lands or sends bytes in its
//! own polls the same way. A peer's read of a readable that nobody is awaiting waits until
//! someone does (bounded by the peer's deadline). Await the passive operation concurrently
//! with whatever you do while the peer works (`tokio::join!`, or its own task with owned
//! buffers), which is what a worker that hands metadata to another process does anyway.
//! [`ferry_core::Capabilities`] reports this as `progress_needs_polling`.
//!
//! # Device memory (the `cuda` feature)
//! Descriptors over CUDA memory (`Descriptor::from_cuda_slice` and friends) are moved through
//! host buffers of 4 MiB, two per sending or receiving connection: while one buffer is on the
//! socket, the next chunk is copied from the device into the other (sending), or the chunk
//! just read is copied to the device while the socket fills the other (receiving). The copies
//! run on a CUDA stream of the transfer's own, ordered after the memory's earlier work by
//! cudarc's events; a receiving side completes only once its last copy has finished, and a
//! cancelled or failed transfer waits for its copies before it lets go of the memory. A CUDA
//! error ends the operation with [`Error::Backend`] named `cuda` and the driver's code. The
//! wire protocol does not change: a peer cannot tell device memory from host memory, so
//! either side may use either, and a build without `cuda` pairs with a peer's device memory
//! (`Capabilities::remote_devices` lists every kind): a CPU-only worker reads a GPU worker's
//! readable.
//!
//! The staging buffers are **pageable** host memory: cudarc's pinned allocation is an
//! `unsafe fn` and this crate forbids `unsafe`. The driver then stages each copy through its
//! own pinned buffer, a device-to-host copy returns only when it is done, and copies overlap
//! socket IO only as far as the socket buffers and the peer absorb.
//!
//! # Who observes what (SPEC §5)
//! - The active side sees its peer vanish on its connection: `Errored(PeerLost)`.
//! - The passive side sees it once a request has reached it: a connection that closes
//!   before the completion notification ends the operation `Errored(PeerLost)`. A passive
//!   operation no request has reached cannot tell, and waits for its deadline.
//! - Cancellation by the active side sends `<key>:cancel` on the same connection as the data,
//!   after the frame in flight (padded with zeros if the memory may no longer be read).
//!
//! # The wire protocol, version 1
//! Every frame is an 8-byte header, `[type u8][0u8][0u16][body length u32 LE]`, then the body.
//!
//! | type | name | body | direction |
//! |---|---|---|---|
//! | 1 | `HELLO` | `"FERRYTCP"`, version `u16`, `0u16` | both, first frame; a mismatch gets `ERROR(VERSION)` and a close |
//! | 2 | `READ` | key (16 bytes), count `u32`, count × (descriptor `u32`, offset `u64`, length `u64`) | active → passive |
//! | 3 | `WRITE` | as `READ`; `DATA` frames carrying the ranges' bytes follow | active → passive |
//! | 4 | `DATA` | at most 16 MiB of the stream of ranges, in order | either way |
//! | 5 | `DONE` | empty: every byte of a `READ` was sent | passive → active |
//! | 6 | `ACK` | empty: every byte of a `WRITE` landed | passive → active |
//! | 7 | `NOTIFY` | the key's text (completion) or `<key>:cancel` | active → passive |
//! | 8 | `ERROR` | code `u16`, UTF-8 message | passive → active |
//!
//! Each `READ` gets `DATA…` then `DONE`, or one `ERROR`; each `WRITE` gets one `ACK` or one
//! `ERROR` (possibly before its data has all arrived; the writer then finishes the frame in
//! flight and stops). The completion `NOTIFY` follows every `DONE` or `ACK` of the transfer,
//! so the passive side completes only after every byte is in place. All integers are
//! little-endian. Bodies longer than their type allows (`READ`/`WRITE` 1.3 MiB, `DATA`
//! 16 MiB, `DONE`/`ACK` 0, others 1 KiB) are refused before they are read.
//!
//! Error codes: 1 unknown key, 2 wrong kind, 3 out of bounds, 4 malformed, 5 oversized,
//! 6 revoked, 7 cancelled, 8 version, 9 busy. Unknown key and revoked surface as
//! [`Error::StaleMetadata`], wrong kind and out of bounds as [`Error::AccessDenied`], the rest
//! as [`Error::Backend`] with the code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::{
    Backend, BoxFuture, Capabilities, Descriptor, DeviceKind, EndpointBlob, Error, Exposed,
    KeyPool, NotificationKey, OperationKind, Peer, Region, RegistrationId,
};
use tokio::net::TcpListener;

mod conn;
mod peer;
mod server;
#[cfg(feature = "cuda")]
mod staging;
pub mod wire;

pub use peer::PROTOCOL_VIOLATION;

use conn::Registry;
use peer::{PeerHandle, RemotePeer};
use server::Server;

/// The backend's name in metadata tags.
pub const NAME: &str = "tcp";

/// The blob format version.
pub const BLOB_VERSION: u32 = 1;

/// The memory kinds this build moves: host memory, and CUDA device memory (staged through
/// host buffers) with the `cuda` feature.
pub const DEVICES: &[DeviceKind] = &[
    DeviceKind::Host,
    #[cfg(feature = "cuda")]
    DeviceKind::Cuda,
];

/// Code of the local error for a notification key drawn twice.
pub const DUPLICATE_KEY: i64 = 2;

/// How a tcp Connector listens and connects.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Where to listen. Default `127.0.0.1:0` (loopback, any port).
    pub bind: SocketAddr,
    /// The address peers should dial, if not the bound one (another host's view of this one,
    /// or a concrete address when binding `0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// How many connections one large transfer may spread over. Default 1.
    pub parallel_connections: usize,
    /// The size from which a transfer is spread. Default 16 MiB.
    pub parallel_threshold: usize,
    /// The payload of one `DATA` frame sent by this side. Default 1 MiB.
    pub frame_size: usize,
    /// How long a connection may sit between frames before it is closed. Default 5 min.
    pub idle_timeout: Duration,
    /// How long a peer may stall inside a frame (and a handshake may take). Default 10 s.
    pub frame_timeout: Duration,
    /// How long dialling a peer may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Connections this Connector keeps open at most, both ways. Default 4 096.
    pub max_connections: usize,
    /// Idle connections kept per peer. Default 64.
    pub max_idle_per_peer: usize,
    /// Connections this side holds to one peer at most, dialling, busy and idle together.
    /// Operations beyond it wait, in their own polls, for a connection to come back. Default
    /// 64.
    pub max_connections_per_peer: usize,
    /// How long an operation waits for one of those connections, with none coming back at all,
    /// before it dials one beyond the cap. The busy connections belong to operations that move
    /// bytes only while their owners poll them; an owner awaiting a later operation first
    /// would otherwise wait for ever. While connections keep coming back the operation keeps
    /// waiting. Default 100 ms.
    pub queue_patience: Duration,
}

impl TcpConfig {
    /// The default configuration with overrides from the environment: `FERRY_TCP_BIND` and
    /// `FERRY_TCP_ADVERTISE` (socket addresses), `FERRY_TCP_PARALLEL` (connections per large
    /// transfer). `Connector::auto()` builds tcp Connectors this way.
    pub fn from_env() -> Result<Self, Error> {
        let mut config = TcpConfig::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let bad = |name: &str, value: &str| Error::BackendUnavailable {
            backend: NAME,
            reason: format!("{name}={value:?} does not parse"),
        };
        if let Some(v) = var("FERRY_TCP_BIND") {
            config.bind = v.trim().parse().map_err(|_| bad("FERRY_TCP_BIND", &v))?;
        }
        if let Some(v) = var("FERRY_TCP_ADVERTISE") {
            config.advertise = Some(
                v.trim()
                    .parse()
                    .map_err(|_| bad("FERRY_TCP_ADVERTISE", &v))?,
            );
        }
        if let Some(v) = var("FERRY_TCP_PARALLEL") {
            config.parallel_connections = v
                .trim()
                .parse()
                .map_err(|_| bad("FERRY_TCP_PARALLEL", &v))?;
        }
        Ok(config)
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            parallel_connections: 1,
            parallel_threshold: 16 << 20,
            frame_size: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_connections: 4096,
            max_idle_per_peer: 64,
            max_connections_per_peer: 64,
            queue_patience: Duration::from_millis(100),
        }
    }
}

/// Counters of one tcp Connector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Inbound connections accepted.
    pub connections: u64,
    /// Inbound connections refused for the connection limit.
    pub refused_connections: u64,
    /// Sockets open now, both ways.
    pub open_sockets: usize,
    /// `READ` and `WRITE` requests received.
    pub requests: u64,
    /// Requests refused by SPEC §9's check (unknown key, wrong kind, out of bounds).
    pub denied: u64,
    /// Frames refused as malformed, oversized or out of place (the connection is closed).
    pub malformed: u64,
    /// Connections closed for stalling or idling.
    pub timeouts: u64,
    /// Notifications received.
    pub notifications: u64,
    /// Notifications that matched no live key.
    pub unmatched_notifications: u64,
    /// `DATA` bytes dropped because no operation was receiving them.
    pub discarded_bytes: u64,
    /// Bytes served to readers.
    pub served_bytes: u64,
    /// Bytes landed by writers.
    pub landed_bytes: u64,
    /// Passive keys accepting requests now.
    pub live_keys: usize,
    /// Transfers (both kinds) alive now.
    pub live_transfers: usize,
}

/// Keys from the operating system's generator, a page at a time ([`KeyPool`]).
struct Entropy {
    source: std::fs::File,
    pool: KeyPool,
}

impl Entropy {
    fn open() -> Result<Self, Error> {
        let source =
            std::fs::File::open("/dev/urandom").map_err(|e| Error::BackendUnavailable {
                backend: NAME,
                reason: format!("no source of random keys (/dev/urandom): {e}"),
            })?;
        Ok(Entropy {
            source,
            pool: KeyPool::new(),
        })
    }

    fn next(&mut self) -> NotificationKey {
        let Entropy { source, pool } = self;
        // /dev/urandom does not fail once open; should it, the process has bigger problems
        // than a key, and a zero page would make keys guessable: refuse loudly.
        pool.next(|page| source.read_exact(page))
            .expect("reading /dev/urandom")
    }
}

/// The tcp backend: one listener, one pool of connections per peer.
pub struct TcpBackend {
    capabilities: Capabilities,
    server: Arc<Server>,
    peers: Mutex<HashMap<u128, Arc<RemotePeer>>>,
    endpoint: EndpointBlob,
    local_addr: SocketAddr,
    entropy: Mutex<Entropy>,
    registrations: AtomicU64,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TcpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpBackend")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Closes a tcp Connector's sockets from outside, as if its process died.
#[derive(Debug, Clone)]
pub struct AbortHandle {
    registry: Arc<Registry>,
    listener: tokio::task::AbortHandle,
}

impl AbortHandle {
    /// Stops listening and shuts every socket down at once; operations on either side that
    /// depended on them end `Errored(PeerLost)`.
    pub fn abort(&self) {
        self.listener.abort();
        self.registry.close_all();
    }
}

impl TcpBackend {
    /// Binds a listener with the default configuration. Must run inside a tokio runtime.
    pub async fn new() -> Result<Self, Error> {
        Self::bind(TcpConfig::default()).await
    }

    /// Binds a listener. Must run inside a tokio runtime.
    pub async fn bind(config: TcpConfig) -> Result<Self, Error> {
        let unavailable = |what: String| Error::BackendUnavailable {
            backend: NAME,
            reason: what,
        };
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|e| unavailable(format!("cannot listen on {}: {e}", config.bind)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| unavailable(format!("no local address: {e}")))?;
        let advertised = config.advertise.unwrap_or(local_addr);
        let mut entropy = Entropy::open()?;
        // 122 random bits, as in a key.
        let instance = u128::from_le_bytes(*entropy.next().as_bytes());
        let endpoint = EndpointBlob::Tagged {
            backend: NAME.into(),
            version: BLOB_VERSION,
            payload: format!("{instance:032x}@{advertised}").into_bytes(),
        };
        let registry = Arc::new(Registry::default());
        let server = Arc::new(Server::new(config, registry));
        let listener = tokio::spawn(server::accept_loop(server.clone(), listener));
        Ok(TcpBackend {
            capabilities: Capabilities {
                backend: NAME,
                devices: DEVICES.to_vec(),
                // The peer stages its own device memory: the wire carries host bytes.
                remote_devices: vec![DeviceKind::Host, DeviceKind::Cuda],
                passive_observes_start: true,
                passive_observes_peer_loss: true,
                enforces_revocation: true,
                cross_host: true,
                progress_needs_polling: true,
            },
            server,
            peers: Mutex::new(HashMap::new()),
            endpoint,
            local_addr,
            entropy: Mutex::new(entropy),
            registrations: AtomicU64::new(0),
            listener,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that aborts this backend from outside (tests, emergency shutdown).
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            registry: self.server.registry.clone(),
            listener: self.listener.abort_handle(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> TcpStats {
        let c = &self.server.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            connections: get(&c.connections),
            refused_connections: get(&c.refused_connections),
            open_sockets: self.server.registry.len(),
            requests: get(&c.requests),
            denied: get(&c.denied),
            malformed: get(&c.malformed),
            timeouts: get(&c.timeouts),
            notifications: get(&c.notifications),
            unmatched_notifications: self.server.unmatched(),
            discarded_bytes: get(&c.discarded_bytes),
            served_bytes: get(&c.served_bytes),
            landed_bytes: get(&c.landed_bytes),
            live_keys: self.server.keys(),
            live_transfers: self.server.live_transfers.load(Ordering::Relaxed),
        }
    }

    /// A cheap handle on the counters that outlives nothing: for harnesses that hand the
    /// backend itself to a Connector.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            server: self.server.clone(),
        }
    }

    fn peer(&self, payload: &[u8]) -> Result<Arc<RemotePeer>, Error> {
        let invalid = |reason: &str| Error::InvalidMetadata {
            reason: format!("tcp endpoint: {reason}"),
        };
        let text = std::str::from_utf8(payload).map_err(|_| invalid("not UTF-8"))?;
        let (instance, addr) = text
            .split_once('@')
            .ok_or_else(|| invalid("no '@' between identity and address"))?;
        if instance.len() != 32 {
            return Err(invalid("identity is not 32 hex digits"));
        }
        let instance =
            u128::from_str_radix(instance, 16).map_err(|_| invalid("identity is not hex"))?;
        let addr: SocketAddr = addr.parse().map_err(|_| invalid("bad socket address"))?;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(&instance) {
            return Ok(peer.clone());
        }
        if peers.len() >= 4096 {
            // Forget peers nobody uses and that hold no connection (long-gone processes).
            peers.retain(|_, p| Arc::strong_count(p) > 1 || p.idle() > 0);
        }
        let peer = Arc::new(RemotePeer::new(addr, self.server.clone()));
        peers.insert(instance, peer.clone());
        Ok(peer)
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.listener.abort();
        self.server.registry.close_all();
    }
}

/// Counters of a tcp backend, readable after the backend moved into a Connector.
#[derive(Clone)]
pub struct StatsHandle {
    server: Arc<Server>,
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsHandle").finish_non_exhaustive()
    }
}

impl StatsHandle {
    /// Passive keys accepting requests now.
    pub fn live_keys(&self) -> usize {
        self.server.keys()
    }

    /// Transfers alive now.
    pub fn live_transfers(&self) -> usize {
        self.server.live_transfers.load(Ordering::Relaxed)
    }

    /// Requests refused by SPEC §9's check.
    pub fn denied(&self) -> u64 {
        self.server.counters.denied.load(Ordering::Relaxed)
    }

    /// Frames refused as malformed or oversized.
    pub fn malformed(&self) -> u64 {
        self.server.counters.malformed.load(Ordering::Relaxed)
    }

    /// Connections closed for stalling inside a frame or idling.
    pub fn timeouts(&self) -> u64 {
        self.server.counters.timeouts.load(Ordering::Relaxed)
    }

    /// Sockets open now.
    pub fn open_sockets(&self) -> usize {
        self.server.registry.len()
    }
}

impl Backend for TcpBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn new_key(&self) -> NotificationKey {
        self.entropy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next()
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        if !self.capabilities.reaches(region.device) {
            return Err(Error::UnsupportedDevice {
                device: region.device,
                backend: NAME,
            });
        }
        // Host memory needs no pinning to be sent from; the id is for bookkeeping only.
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
        let lens = local.iter().map(|d| d.len() as u64).collect();
        let exposed = self
            .server
            .expose(kind, key, lens, deadline)
            .map(|transfer| Exposed {
                endpoint: self.endpoint.clone(),
                transfer: Box::new(transfer),
            });
        Box::pin(async move { exposed })
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>> {
        let peer = match endpoint {
            EndpointBlob::Tagged {
                backend,
                version,
                payload,
            } if backend == NAME => {
                if *version != BLOB_VERSION {
                    Err(Error::InvalidMetadata {
                        reason: format!("tcp endpoint version {version}, this build reads 1"),
                    })
                } else {
                    self.peer(payload)
                        .map(|p| Arc::new(PeerHandle(p)) as Arc<dyn Peer>)
                }
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
