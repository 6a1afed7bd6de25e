//! The simulated world: nodes (one per Connector), a virtual clock, an event queue of messages
//! and timers, link models and faults.
//!
//! Everything lives behind one mutex. Messages are delivered in (virtual time, sequence) order;
//! the sequence number breaks ties in posting order, so a run that posts in the same order
//! delivers in the same order and hashes to the same trace.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::state::Event;
use ferry_core::{Error, KeyTable, Notification, NotificationKey, OperationKind, Region, Side};
use tokio::sync::Notify;

use crate::rng::{Fnv, SplitMix64};
use crate::staging::Staged;

/// A Connector's place in a world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// How a link behaves: one-way latency, uniform jitter on top, and bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// One-way latency of every message.
    pub latency: Duration,
    /// Up to this much extra latency, drawn from the world's generator per message (messages
    /// on one link still arrive in order).
    pub jitter: Duration,
    /// Bytes per second; a message occupies its link for `size / bandwidth`.
    pub bandwidth: u64,
}

impl Default for LinkConfig {
    /// 2 µs latency, no jitter, 25 GB/s: an RDMA-class link.
    fn default() -> Self {
        LinkConfig {
            latency: Duration::from_micros(2),
            jitter: Duration::ZERO,
            bandwidth: 25_000_000_000,
        }
    }
}

/// What a notification fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationFault {
    /// The notification is lost.
    Drop,
    /// The notification arrives this much later than it would have.
    Delay(Duration),
}

/// Counters of a world, for tests and for leak checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorldStats {
    /// Operations whose state the world still holds (should fall to 0 when all are dropped).
    pub live_operations: usize,
    /// Passive keys still accepted, over all nodes.
    pub live_keys: usize,
    /// Pending timers.
    pub live_timers: usize,
    /// Messages in flight.
    pub in_flight: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to a crash, a partition or a fault.
    pub dropped: u64,
    /// Requests refused by a passive side (unknown key, wrong kind, out of bounds).
    pub refused: u64,
    /// Notifications that matched no live key.
    pub unmatched_notifications: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Live registrations over all nodes.
    pub registrations: usize,
}

pub(crate) type OpId = u64;

#[derive(Debug)]
pub(crate) enum Payload {
    ReadRequest {
        op: OpId,
        key: NotificationKey,
        ranges: Vec<(u64, u64)>,
    },
    ReadReply {
        op: OpId,
        result: Result<Vec<Bytes>, Error>,
    },
    WriteRequest {
        op: OpId,
        key: NotificationKey,
        pieces: Vec<(u64, Bytes)>,
    },
    WriteReply {
        op: OpId,
        result: Result<(), Error>,
    },
    Notify(Vec<u8>),
    /// The sender has gone away gracefully; sent behind everything it sent before.
    Closed,
}

impl Payload {
    fn tag(&self) -> u8 {
        match self {
            Payload::ReadRequest { .. } => 1,
            Payload::ReadReply { .. } => 2,
            Payload::WriteRequest { .. } => 3,
            Payload::WriteReply { .. } => 4,
            Payload::Notify(_) => 5,
            Payload::Closed => 6,
        }
    }

    fn size(&self) -> u64 {
        let data = match self {
            Payload::ReadReply {
                result: Ok(data), ..
            } => data.iter().map(|b| b.len() as u64).sum(),
            Payload::WriteRequest { pieces, .. } => {
                pieces.iter().map(|(_, b)| b.len() as u64).sum()
            }
            Payload::Notify(m) => m.len() as u64,
            Payload::ReadRequest { ranges, .. } => 16 * ranges.len() as u64,
            _ => 0,
        };
        64 + data
    }
}

#[derive(Debug)]
enum Scheduled {
    Message {
        from: NodeId,
        to: NodeId,
        payload: Payload,
    },
    Timer(u64),
    /// An operation's deadline: the world ends the operation, revoking access, whether or not
    /// its owner is polling.
    Deadline(OpId),
}

/// What the world tells an operation; the operation's transfer turns it into state-machine
/// events, landing bytes on the way.
#[derive(Debug)]
pub(crate) enum SlotEvent {
    Core(Event),
    /// Active read: the peer's bytes, to copy into local memory before completing.
    ReadData(Vec<Bytes>),
}

#[derive(Debug)]
pub(crate) struct OpSlot {
    pub(crate) node: NodeId,
    pub(crate) peer: Option<NodeId>,
    pub(crate) kind: OperationKind,
    pub(crate) passive: bool,
    pub(crate) key: NotificationKey,
    pub(crate) regions: Vec<Region>,
    /// Passive readable: the exposed bytes.
    pub(crate) snapshot: Vec<Bytes>,
    /// Passive writable: what peers wrote, per region.
    pub(crate) staged: Vec<Staged>,
    pub(crate) events: VecDeque<SlotEvent>,
    pub(crate) waker: Option<Waker>,
    /// The world has stopped serving this operation: it ended on this side.
    pub(crate) ended: bool,
    /// The scheduled deadline, to forget when the operation ends first.
    deadline: Option<u64>,
}

impl OpSlot {
    /// A slot for a new operation.
    pub(crate) fn new(
        node: NodeId,
        kind: OperationKind,
        key: NotificationKey,
        regions: Vec<Region>,
    ) -> Self {
        OpSlot {
            node,
            peer: None,
            kind,
            passive: false,
            key,
            regions,
            snapshot: Vec::new(),
            staged: Vec::new(),
            events: VecDeque::new(),
            waker: None,
            ended: false,
            deadline: None,
        }
    }

    fn push(&mut self, event: SlotEvent) {
        self.events.push_back(event);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) crashed: bool,
    /// Its Connector was dropped: it takes no more messages, but what it sent still arrives.
    pub(crate) departed: bool,
    pub(crate) keys: KeyTable<OpId>,
    pub(crate) registrations: BTreeMap<u64, Region>,
}

#[derive(Debug, Default)]
struct TimerSlot {
    fired: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
pub(crate) struct World {
    pub(crate) id: u64,
    rng: SplitMix64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    scheduled: BTreeMap<u64, Scheduled>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) ops: BTreeMap<OpId, OpSlot>,
    next_op: OpId,
    timers: BTreeMap<u64, TimerSlot>,
    next_registration: u64,
    default_link: LinkConfig,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    link_free_at: BTreeMap<(NodeId, NodeId), u64>,
    link_last_delivery: BTreeMap<(NodeId, NodeId), u64>,
    partitions: BTreeSet<(NodeId, NodeId)>,
    notification_faults: Vec<(NodeId, NodeId, NotificationFault, u32)>,
    trace: Fnv,
    trace_events: u64,
    stats: WorldStats,
}

/// The shared part of a world: its state and the driver's doorbell.
#[derive(Debug)]
pub(crate) struct Shared {
    world: Mutex<World>,
    pub(crate) doorbell: Arc<Notify>,
    driver_alive: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the driver see the world is gone and exit.
        self.doorbell.notify_one();
    }
}

/// A simulated world of Connectors: seeded, with virtual time.
///
/// Cheap to clone (a handle). Every Connector built on one world can pair with every other;
/// metadata from another world is refused.
///
/// Determinism: the same seed and the same program give the same trace when the program runs
/// on a current-thread tokio runtime (as `#[tokio::test]` does). On a multi-thread runtime the
/// bytes and outcomes are the same but the interleaving, and so the trace, may differ.
///
/// Virtual time advances only when every runnable task has had its turn: a driver task delivers
/// the earliest pending events, yields, and parks when nothing is pending. Deadlines and
/// [`Backend::sleep`](ferry_core::Backend::sleep) run on this clock, so a test of a ten-second
/// deadline takes microseconds. The driver runs on a runtime that uses the world; if that
/// runtime shuts down, every waiting operation is woken and the next one to look restarts the
/// driver on its own runtime.
#[derive(Debug, Clone)]
pub struct SimWorld {
    pub(crate) shared: Arc<Shared>,
}

/// Settings for a new [`SimWorld`].
#[derive(Debug, Clone)]
pub struct SimWorldBuilder {
    seed: u64,
    link: LinkConfig,
}

static NEXT_WORLD: AtomicU64 = AtomicU64::new(1);

impl SimWorldBuilder {
    /// The seed of the world's generator (keys, jitter).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The link model between every pair of nodes, unless overridden with
    /// [`SimWorld::set_link`].
    pub fn link(mut self, link: LinkConfig) -> Self {
        self.link = link;
        self
    }

    /// The world.
    pub fn build(self) -> SimWorld {
        let world = World {
            id: NEXT_WORLD.fetch_add(1, Ordering::Relaxed),
            rng: SplitMix64::new(self.seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            scheduled: BTreeMap::new(),
            nodes: Vec::new(),
            ops: BTreeMap::new(),
            next_op: 1,
            timers: BTreeMap::new(),
            next_registration: 1,
            default_link: self.link,
            links: BTreeMap::new(),
            link_free_at: BTreeMap::new(),
            link_last_delivery: BTreeMap::new(),
            partitions: BTreeSet::new(),
            notification_faults: Vec::new(),
            trace: Fnv::new(),
            trace_events: 0,
            stats: WorldStats::default(),
        };
        SimWorld {
            shared: Arc::new(Shared {
                world: Mutex::new(world),
                doorbell: Arc::new(Notify::new()),
                driver_alive: Arc::new(AtomicBool::new(false)),
            }),
        }
    }
}

impl Default for SimWorld {
    fn default() -> Self {
        SimWorld::builder().build()
    }
}

impl SimWorld {
    /// A world with this seed and the default link.
    pub fn new(seed: u64) -> Self {
        SimWorld::builder().seed(seed).build()
    }

    /// Settings for a new world.
    pub fn builder() -> SimWorldBuilder {
        SimWorldBuilder {
            seed: 0,
            link: LinkConfig::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        lock(&self.shared)
    }

    /// Rings the driver: something was scheduled.
    pub(crate) fn ring(&self) {
        self.shared.doorbell.notify_one();
    }

    /// Virtual time since the world began.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.lock().now)
    }

    /// A digest of every event delivered so far, and how many there were. Two runs with the
    /// same seed and program have the same digest.
    pub fn trace_digest(&self) -> (u64, u64) {
        let world = self.lock();
        (world.trace.finish(), world.trace_events)
    }

    /// Counters, including what is still live.
    pub fn stats(&self) -> WorldStats {
        let world = self.lock();
        WorldStats {
            live_operations: world.ops.len(),
            live_keys: world.nodes.iter().map(|n| n.keys.len()).sum(),
            live_timers: world.timers.len(),
            in_flight: world
                .scheduled
                .values()
                .filter(|s| matches!(s, Scheduled::Message { .. }))
                .count(),
            unmatched_notifications: world.nodes.iter().map(|n| n.keys.unmatched()).sum(),
            registrations: world.nodes.iter().map(|n| n.registrations.len()).sum(),
            ..world.stats
        }
    }

    /// The name a node was created with.
    pub fn node_name(&self, node: NodeId) -> Option<String> {
        self.lock()
            .nodes
            .get(node.0 as usize)
            .map(|n| n.name.clone())
    }

    /// Crashes a node, as if its process died: messages to and from it are lost, its own
    /// operations end `Errored`, and every operation paired with it ends `Errored(PeerLost)`
    /// (the simulator observes peer loss on both sides, for operations whose peer it has seen).
    pub fn crash(&self, node: NodeId) {
        let mut world = self.lock();
        if node.0 as usize >= world.nodes.len() {
            return;
        }
        world.node_mut(node).crashed = true;
        let affected: Vec<(OpId, Error)> = world
            .ops
            .iter()
            .filter(|(_, slot)| !slot.ended)
            .filter_map(|(&op, slot)| {
                if slot.node == node {
                    Some((op, crashed_error()))
                } else if slot.peer == Some(node) {
                    let reason = format!("sim node {} crashed", node.0);
                    Some((op, Error::PeerLost { reason }))
                } else {
                    None
                }
            })
            .collect();
        for (op, cause) in affected {
            world.end_slot(op, Event::Failed(cause));
        }
        world.record_fault(1, node, node);
    }

    /// Cuts the link between two nodes both ways: messages between them are lost until
    /// [`SimWorld::heal`].
    pub fn partition(&self, a: NodeId, b: NodeId) {
        let mut world = self.lock();
        world.partitions.insert((a, b));
        world.partitions.insert((b, a));
        world.record_fault(2, a, b);
    }

    /// Restores a partitioned link.
    pub fn heal(&self, a: NodeId, b: NodeId) {
        let mut world = self.lock();
        world.partitions.remove(&(a, b));
        world.partitions.remove(&(b, a));
        world.record_fault(3, a, b);
    }

    /// Sets the link model from `from` to `to` (one direction), e.g. to slow one link.
    pub fn set_link(&self, from: NodeId, to: NodeId, link: LinkConfig) {
        self.lock().links.insert((from, to), link);
    }

    /// Applies `fault` to the next `count` notifications sent from `from` to `to`.
    pub fn fault_notifications(
        &self,
        from: NodeId,
        to: NodeId,
        fault: NotificationFault,
        count: u32,
    ) {
        if count > 0 {
            self.lock()
                .notification_faults
                .push((from, to, fault, count));
        }
    }

    /// Makes sure a driver advances this world's clock, starting one on the current tokio
    /// runtime if none is alive. Cheap when one is.
    pub(crate) fn start_driver(&self) -> Result<(), Error> {
        if self.shared.driver_alive.load(Ordering::Acquire) {
            return Ok(());
        }
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| Error::BackendUnavailable {
                backend: "sim",
                reason: "the simulator's clock runs as a tokio task: use it inside a tokio runtime"
                    .into(),
            })?;
        if self.shared.driver_alive.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let guard = DriverGuard(Arc::downgrade(&self.shared));
        handle.spawn(drive(
            Arc::downgrade(&self.shared),
            self.shared.doorbell.clone(),
            guard,
        ));
        Ok(())
    }
}

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, World> {
    // A panic while holding the lock can only come from a bug in this crate; the world's
    // invariants hold between statements, so carrying on is sound.
    shared
        .world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn crashed_error() -> Error {
    Error::Backend {
        backend: "sim",
        side: Side::Local,
        code: CRASHED,
        message: "this sim node crashed".into(),
    }
}

/// The sim's backend code for "this node crashed".
pub const CRASHED: i64 = 1;

/// Marks the driver dead when its task ends or is dropped with its runtime, and wakes every
/// waiting operation and timer so that one of them, polled on a live runtime, restarts it.
struct DriverGuard(Weak<Shared>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        shared.driver_alive.store(false, Ordering::Release);
        let mut guard = lock(&shared);
        let world = &mut *guard;
        let wakers: Vec<Waker> = world
            .ops
            .values_mut()
            .filter_map(|slot| slot.waker.take())
            .chain(
                world
                    .timers
                    .values_mut()
                    .filter_map(|timer| timer.waker.take()),
            )
            .collect();
        drop(guard);
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The clock: deliver the earliest events, let every runnable task go, repeat; park when
/// nothing is pending.
async fn drive(world: Weak<Shared>, doorbell: Arc<Notify>, _guard: DriverGuard) {
    loop {
        tokio::task::yield_now().await;
        let notified = doorbell.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(shared) = world.upgrade() else {
            return;
        };
        let delivered = lock(&shared).step();
        drop(shared);
        if !delivered {
            notified.await;
        }
    }
}

impl World {
    pub(crate) fn add_node(&mut self, name: &str) -> NodeId {
        self.nodes.push(Node {
            name: name.to_owned(),
            ..Node::default()
        });
        NodeId(self.nodes.len() as u32 - 1)
    }

    pub(crate) fn node(&self, node: NodeId) -> &Node {
        &self.nodes[node.0 as usize]
    }

    pub(crate) fn node_mut(&mut self, node: NodeId) -> &mut Node {
        &mut self.nodes[node.0 as usize]
    }

    /// Whether a node can still send and receive.
    pub(crate) fn is_gone(&self, node: NodeId) -> bool {
        let n = self.node(node);
        n.crashed || n.departed
    }

    pub(crate) fn new_key(&mut self) -> NotificationKey {
        NotificationKey::from_random_bytes(self.rng.bytes16())
    }

    pub(crate) fn new_registration(&mut self, node: NodeId, region: Region) -> u64 {
        let id = self.next_registration;
        self.next_registration += 1;
        self.node_mut(node).registrations.insert(id, region);
        id
    }

    /// Adds an operation; with a deadline, the world ends it then.
    pub(crate) fn add_op(&mut self, mut slot: OpSlot, deadline: Option<Duration>) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        if let Some(deadline) = deadline {
            let at = self.now.saturating_add(duration_ns(deadline));
            slot.deadline = Some(self.schedule(at, Scheduled::Deadline(id)));
        }
        self.ops.insert(id, slot);
        id
    }

    /// Ends an operation in the world with a final event: it takes no more requests, its key is
    /// gone, its deadline is forgotten. Nothing happens if it had already ended.
    pub(crate) fn end_slot(&mut self, op: OpId, event: Event) {
        let Some(slot) = self.ops.get_mut(&op).filter(|s| !s.ended) else {
            return;
        };
        slot.ended = true;
        slot.push(SlotEvent::Core(event));
        self.forget(op);
    }

    /// Ends an operation on its own side without an event (cancel, drop).
    pub(crate) fn end_op(&mut self, op: OpId) {
        if let Some(slot) = self.ops.get_mut(&op) {
            slot.ended = true;
            self.forget(op);
        }
    }

    /// Removes an ended operation's key and deadline.
    fn forget(&mut self, op: OpId) {
        let Some(slot) = self.ops.get_mut(&op) else {
            return;
        };
        let (node, key, passive, deadline) =
            (slot.node, slot.key, slot.passive, slot.deadline.take());
        if passive && self.node(node).keys.get(&key) == Some(&op) {
            self.node_mut(node).keys.remove(&key);
        }
        if let Some(seq) = deadline {
            self.unschedule(seq);
        }
    }

    /// Forgets an operation entirely (its handle is gone).
    pub(crate) fn remove_op(&mut self, op: OpId) {
        self.end_op(op);
        self.ops.remove(&op);
    }

    pub(crate) fn add_timer(&mut self, after: Duration) -> u64 {
        let at = self.now.saturating_add(duration_ns(after));
        let id = self.seq;
        self.schedule(at, Scheduled::Timer(id));
        self.timers.insert(id, TimerSlot::default());
        id
    }

    /// Whether a timer fired; registers the waker if not.
    pub(crate) fn poll_timer(&mut self, id: u64, waker: &Waker) -> bool {
        match self.timers.get_mut(&id) {
            Some(slot) if slot.fired => true,
            Some(slot) => {
                slot.waker = Some(waker.clone());
                false
            }
            None => true,
        }
    }

    pub(crate) fn remove_timer(&mut self, id: u64) {
        self.timers.remove(&id);
        self.unschedule(id);
    }

    fn schedule(&mut self, at: u64, what: Scheduled) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.scheduled.insert(seq, what);
        seq
    }

    /// Cancels a scheduled event. Its heap entry stays until reached (and is then skipped
    /// without moving the clock), unless dead entries pile up, when the heap is compacted.
    fn unschedule(&mut self, seq: u64) {
        self.scheduled.remove(&seq);
        if self.queue.len() > 2 * self.scheduled.len() + 64 {
            let scheduled = &self.scheduled;
            self.queue
                .retain(|Reverse((_, seq))| scheduled.contains_key(seq));
        }
    }

    /// Sends a message; it arrives after the link's latency, jitter and transmission time, in
    /// order with everything sent before it on the same link (a delayed notification holds
    /// back what follows it, as on an ordered connection).
    pub(crate) fn send(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        if self.is_cut(from, to) {
            self.stats.dropped += 1;
            return;
        }
        let mut extra = 0u64;
        if let Payload::Notify(_) = payload {
            if let Some(i) = self
                .notification_faults
                .iter()
                .position(|(f, t, _, _)| *f == from && *t == to)
            {
                let fault = self.notification_faults[i].2;
                self.notification_faults[i].3 -= 1;
                if self.notification_faults[i].3 == 0 {
                    self.notification_faults.remove(i);
                }
                match fault {
                    NotificationFault::Drop => {
                        self.stats.dropped += 1;
                        self.record_fault(4, from, to);
                        return;
                    }
                    NotificationFault::Delay(d) => extra = duration_ns(d),
                }
            }
        }
        let link = self
            .links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link);
        let transmit = payload.size().saturating_mul(1_000_000_000) / link.bandwidth.max(1);
        let free_at = self
            .link_free_at
            .get(&(from, to))
            .copied()
            .unwrap_or(0)
            .max(self.now);
        let done = free_at.saturating_add(transmit);
        self.link_free_at.insert((from, to), done);
        let jitter = self.rng.below(duration_ns(link.jitter).saturating_add(1));
        let arrive = done
            .saturating_add(duration_ns(link.latency))
            .saturating_add(jitter)
            .saturating_add(extra);
        let last = self
            .link_last_delivery
            .get(&(from, to))
            .copied()
            .unwrap_or(0);
        let arrive = arrive.max(last);
        self.link_last_delivery.insert((from, to), arrive);
        self.schedule(arrive, Scheduled::Message { from, to, payload });
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.partitions.contains(&(from, to))
            || self.node(from).crashed
            || self.node(to).crashed
            || self.node(to).departed
    }

    /// A node's last handle is gone, as when a process closes its connections and exits: every
    /// other node gets a `Closed` behind whatever this node already sent it, and then fails
    /// whatever is still paired with it.
    pub(crate) fn depart(&mut self, node: NodeId) {
        if self.is_gone(node) {
            return;
        }
        let others: Vec<NodeId> = (0..self.nodes.len() as u32)
            .map(NodeId)
            .filter(|&n| n != node && !self.is_gone(n))
            .collect();
        for other in others {
            self.send(node, other, Payload::Closed);
        }
        self.node_mut(node).departed = true;
    }

    /// Delivers every event due at the earliest pending time; `false` if nothing is pending.
    /// Cancelled events are skipped without moving the clock.
    pub(crate) fn step(&mut self) -> bool {
        while let Some(&Reverse((_, seq))) = self.queue.peek() {
            if self.scheduled.contains_key(&seq) {
                break;
            }
            self.queue.pop();
        }
        let Some(&Reverse((at, _))) = self.queue.peek() else {
            return false;
        };
        self.now = self.now.max(at);
        while let Some(&Reverse((t, seq))) = self.queue.peek() {
            if t > at {
                break;
            }
            self.queue.pop();
            if let Some(what) = self.scheduled.remove(&seq) {
                self.deliver(seq, what);
            }
        }
        true
    }

    fn record(&mut self, tag: u8, from: NodeId, to: NodeId, size: u64) {
        self.trace.write_u64(self.now);
        self.trace.write(&[tag]);
        self.trace
            .write_u64(u64::from(from.0) << 32 | u64::from(to.0));
        self.trace.write_u64(size);
        self.trace_events += 1;
    }

    fn record_fault(&mut self, kind: u8, a: NodeId, b: NodeId) {
        self.record(100 + kind, a, b, 0);
    }

    fn deliver(&mut self, seq: u64, what: Scheduled) {
        match what {
            Scheduled::Timer(id) => {
                self.record(0, NodeId(0), NodeId(0), id);
                if let Some(slot) = self.timers.get_mut(&id) {
                    slot.fired = true;
                    if let Some(waker) = slot.waker.take() {
                        waker.wake();
                    }
                }
            }
            Scheduled::Deadline(op) => {
                let Some(slot) = self.ops.get_mut(&op).filter(|s| !s.ended) else {
                    return;
                };
                let (node, peer, key, passive) = (slot.node, slot.peer, slot.key, slot.passive);
                slot.deadline = None;
                self.record(7, node, node, seq);
                if let (false, Some(peer)) = (passive, peer) {
                    // An active operation that gives up tells its peer, as a cancel would.
                    self.send(node, peer, Payload::Notify(key.cancel_message()));
                }
                self.end_slot(op, Event::DeadlinePassed);
            }
            Scheduled::Message { from, to, payload } => {
                if self.is_cut(from, to) {
                    self.stats.dropped += 1;
                    return;
                }
                let size = payload.size();
                self.record(payload.tag(), from, to, size);
                self.stats.delivered += 1;
                self.stats.bytes += size - 64;
                self.handle(from, to, payload);
            }
        }
    }

    fn handle(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        match payload {
            Payload::ReadRequest { op, key, ranges } => {
                let result =
                    self.serve(to, from, key, OperationKind::Read)
                        .and_then(|slot| {
                            ranges
                                .iter()
                                .map(|&(addr, len)| {
                                    let (i, offset) = locate(&slot.regions, addr, len)?;
                                    Ok(slot.snapshot[i]
                                        .slice(offset as usize..(offset + len) as usize))
                                })
                                .collect::<Result<Vec<_>, _>>()
                        });
                if result.is_err() {
                    self.stats.refused += 1;
                }
                self.send(to, from, Payload::ReadReply { op, result });
            }
            Payload::WriteRequest { op, key, pieces } => {
                let result = self
                    .serve(to, from, key, OperationKind::Write)
                    .and_then(|slot| {
                        let placed = pieces
                            .iter()
                            .map(|(addr, data)| locate(&slot.regions, *addr, data.len() as u64))
                            .collect::<Result<Vec<_>, _>>()?;
                        for ((i, offset), (_, data)) in placed.into_iter().zip(pieces) {
                            slot.staged[i].write(
                                slot.regions[i].len as usize,
                                offset as usize,
                                data,
                            );
                        }
                        Ok(())
                    });
                if result.is_err() {
                    self.stats.refused += 1;
                }
                self.send(to, from, Payload::WriteReply { op, result });
            }
            Payload::ReadReply { op, result } => {
                let Some(slot) = self.ops.get_mut(&op).filter(|s| !s.ended) else {
                    return;
                };
                match result {
                    Ok(data) => {
                        let key = slot.key;
                        slot.ended = true;
                        slot.push(SlotEvent::ReadData(data));
                        self.forget(op);
                        // The bytes have reached the reader, as a one-sided read's would have
                        // without the reader's CPU; the notification follows them. They land
                        // in the reader's memory before its operation reports Complete.
                        self.send(to, from, Payload::Notify(key.completion_message()));
                    }
                    Err(cause) => self.end_slot(op, Event::Failed(cause)),
                }
            }
            Payload::WriteReply { op, result } => {
                let Some(slot) = self.ops.get(&op).filter(|s| !s.ended) else {
                    return;
                };
                let key = slot.key;
                match result {
                    Ok(()) => {
                        self.end_slot(op, Event::Completed);
                        // The bytes have landed; the notification follows them.
                        self.send(to, from, Payload::Notify(key.completion_message()));
                    }
                    Err(cause) => self.end_slot(op, Event::Failed(cause)),
                }
            }
            Payload::Notify(message) => {
                let (key, event) = match Notification::parse(&message) {
                    Some(Notification::Complete(key)) => (key, Event::Completed),
                    Some(Notification::Cancel(key)) => (key, Event::PeerCancelled),
                    None => return,
                };
                // First matching notification wins; the key is consumed on arrival.
                if let Some(op) = self.node_mut(to).keys.take(&key) {
                    self.end_slot(op, event);
                }
            }
            Payload::Closed => {
                let paired: Vec<OpId> = self
                    .ops
                    .iter()
                    .filter(|(_, s)| s.node == to && s.peer == Some(from) && !s.ended)
                    .map(|(&op, _)| op)
                    .collect();
                for op in paired {
                    let reason = format!("sim node {} closed", from.0);
                    self.end_slot(op, Event::Failed(Error::PeerLost { reason }));
                }
            }
        }
    }

    /// The live passive operation `key` names on `node`, if `from` may use it as `kind`.
    fn serve(
        &mut self,
        node: NodeId,
        from: NodeId,
        key: NotificationKey,
        kind: OperationKind,
    ) -> Result<&mut OpSlot, Error> {
        let op = *self.node(node).keys.get(&key).ok_or(Error::StaleMetadata)?;
        let slot = self
            .ops
            .get_mut(&op)
            .filter(|s| !s.ended)
            .ok_or(Error::StaleMetadata)?;
        if slot.kind != kind {
            return Err(Error::AccessDenied {
                side: Side::Remote,
                reason: format!("a {kind} of a {} operation", slot.kind.passive_name()),
            });
        }
        if slot.peer.is_none() {
            slot.peer = Some(from);
            slot.push(SlotEvent::Core(Event::PeerStarted));
        }
        Ok(slot)
    }
}

/// Which region holds `[addr, addr + len)`, and at what offset; SPEC §9's bounds check.
fn locate(regions: &[Region], addr: u64, len: u64) -> Result<(usize, u64), Error> {
    regions
        .iter()
        .position(|r| r.contains(addr, len))
        .map(|i| (i, addr - regions[i].addr))
        .ok_or_else(|| Error::AccessDenied {
            side: Side::Remote,
            reason: format!("{len} bytes at {addr:#x} lie outside the offered regions"),
        })
}

pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
