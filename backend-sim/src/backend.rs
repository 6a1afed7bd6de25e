//! The sim's implementation of ferry-core's Backend, Peer and Transfer.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::state::Event;
use ferry_core::{
    Backend, BoxFuture, Capabilities, Descriptor, DeviceKind, EndpointBlob, Error, Exposed,
    NotificationKey, OperationKind, Peer, RdmaMetadata, Region, RegistrationId, Side, Transfer,
};

use crate::staging::Staged;
use crate::world::{crashed_error, NodeId, OpId, OpSlot, Payload, SimWorld, SlotEvent};

const BLOB_VERSION: u32 = 1;

/// One Connector's place in a [`SimWorld`].
#[derive(Debug)]
pub struct SimBackend {
    world: SimWorld,
    node: NodeId,
    capabilities: Capabilities,
    peers: Mutex<BTreeMap<NodeId, Arc<SimPeer>>>,
}

impl SimBackend {
    /// Adds a node named `name` to `world`. Must be called inside a tokio runtime: the world's
    /// clock runs as a task on it.
    pub fn new(world: &SimWorld, name: &str) -> Result<Self, Error> {
        world.start_driver()?;
        let node = world.lock().add_node(name);
        Ok(SimBackend {
            world: world.clone(),
            node,
            capabilities: Capabilities {
                backend: "sim",
                devices: vec![DeviceKind::Host],
                remote_devices: vec![DeviceKind::Host],
                passive_observes_start: true,
                passive_observes_peer_loss: true,
                enforces_revocation: true,
                cross_host: false,
                progress_needs_polling: false,
            },
            peers: Mutex::new(BTreeMap::new()),
        })
    }

    /// This node's id, for fault injection.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The world this node lives in.
    pub fn world(&self) -> &SimWorld {
        &self.world
    }

    fn endpoint(&self, world_id: u64) -> EndpointBlob {
        let mut payload = world_id.to_le_bytes().to_vec();
        payload.extend_from_slice(&self.node.0.to_le_bytes());
        EndpointBlob::Tagged {
            backend: "sim".into(),
            version: BLOB_VERSION,
            payload,
        }
    }
}

impl Backend for SimBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn new_key(&self) -> NotificationKey {
        self.world.lock().new_key()
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        let mut world = self.world.lock();
        if world.is_gone(self.node) {
            return Err(crashed_error());
        }
        Ok(RegistrationId(world.new_registration(self.node, region)))
    }

    fn deregister(&self, id: RegistrationId) {
        self.world
            .lock()
            .node_mut(self.node)
            .registrations
            .remove(&id.0);
    }

    fn expose<'a>(
        &'a self,
        kind: OperationKind,
        key: NotificationKey,
        local: &'a [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Exposed, Error>> {
        Box::pin(std::future::ready(
            self.expose_now(kind, key, local, deadline),
        ))
    }

    fn connect<'a>(
        &'a self,
        endpoint: &'a EndpointBlob,
    ) -> BoxFuture<'a, Result<Arc<dyn Peer>, Error>> {
        Box::pin(std::future::ready(self.connect_now(endpoint)))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Without a runtime the timer cannot fire; the caller is then not in one either and
        // cannot await this, so there is nothing better to do than create it.
        let _ = self.world.start_driver();
        let id = self.world.lock().add_timer(duration);
        self.world.ring();
        Box::pin(SimSleep {
            world: self.world.clone(),
            id,
        })
    }
}

impl Drop for SimBackend {
    /// The last handle on this node is gone, as when a process exits cleanly: what it sent
    /// still arrives, then every operation still paired with it ends `PeerLost`.
    fn drop(&mut self) {
        self.world.lock().depart(self.node);
        self.world.ring();
    }
}

/// The sim's code for a key that is already live (two operations drew the same key).
pub const DUPLICATE_KEY: i64 = 2;

impl SimBackend {
    fn expose_now(
        &self,
        kind: OperationKind,
        key: NotificationKey,
        local: &[Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> Result<Exposed, Error> {
        self.world.start_driver()?;
        let mut slot = OpSlot::new(
            self.node,
            kind,
            key,
            local.iter().map(Descriptor::region).collect(),
        );
        slot.passive = true;
        match kind {
            // A readable's bytes are copied out now, while the operation lends them: the world
            // must serve reads without the operation being polled, as one-sided RDMA would.
            // The borrow keeps them immutable until the operation ends, so the copy is exact.
            OperationKind::Read => {
                slot.snapshot = local
                    .iter()
                    .map(|d| host_bytes(d).map(Bytes::copy_from_slice))
                    .collect::<Result<_, _>>()?;
            }
            OperationKind::Write => slot.staged = local.iter().map(|_| Staged::default()).collect(),
        }
        let mut world = self.world.lock();
        if world.is_gone(self.node) {
            return Err(crashed_error());
        }
        let op = world.add_op(slot, deadline);
        if !world.node_mut(self.node).keys.insert(key, op) {
            // The key belongs to another live operation: forget this one without touching it.
            world.ops.remove(&op);
            return Err(Error::Backend {
                backend: "sim",
                side: Side::Local,
                code: DUPLICATE_KEY,
                message: format!("key {key} is already live on this node"),
            });
        }
        let endpoint = self.endpoint(world.id);
        drop(world);
        self.world.ring();
        Ok(Exposed {
            endpoint,
            transfer: Box::new(SimTransfer {
                world: self.world.clone(),
                op,
                node: self.node,
                peer: None,
                passive: true,
                kind,
                key,
            }),
        })
    }

    fn connect_now(&self, endpoint: &EndpointBlob) -> Result<Arc<dyn Peer>, Error> {
        let EndpointBlob::Tagged {
            backend,
            version,
            payload,
        } = endpoint
        else {
            return Err(Error::BackendMismatch {
                expected: "sim".into(),
                found: endpoint.backend().into(),
            });
        };
        if backend != "sim" {
            return Err(Error::BackendMismatch {
                expected: "sim".into(),
                found: backend.clone(),
            });
        }
        let (Ok(world_id), Ok(node), BLOB_VERSION) = (
            payload
                .get(..8)
                .unwrap_or_default()
                .try_into()
                .map(u64::from_le_bytes),
            payload
                .get(8..12)
                .unwrap_or_default()
                .try_into()
                .map(u32::from_le_bytes),
            *version,
        ) else {
            return Err(Error::InvalidMetadata {
                reason: format!(
                    "sim blob version {version} with {} payload bytes",
                    payload.len()
                ),
            });
        };
        let node = NodeId(node);
        {
            let world = self.world.lock();
            if world.id != world_id || node.0 as usize >= world.nodes.len() {
                return Err(Error::PeerLost {
                    reason: format!(
                        "sim node {} of world {world_id} is not in this world",
                        node.0
                    ),
                });
            }
            if world.is_gone(node) {
                return Err(Error::PeerLost {
                    reason: format!("sim node {} is gone", node.0),
                });
            }
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.entry(node).or_insert_with(|| {
            Arc::new(SimPeer {
                world: self.world.clone(),
                node: self.node,
                peer: node,
            })
        });
        Ok(peer.clone())
    }
}

/// A connected sim node.
#[derive(Debug)]
struct SimPeer {
    world: SimWorld,
    node: NodeId,
    peer: NodeId,
}

impl Peer for SimPeer {
    fn post<'a>(
        &'a self,
        kind: OperationKind,
        remote: &'a RdmaMetadata,
        local: &'a mut [Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> BoxFuture<'a, Result<Box<dyn Transfer>, Error>> {
        Box::pin(std::future::ready(
            self.post_now(kind, remote, local, deadline),
        ))
    }
}

impl SimPeer {
    fn post_now(
        &self,
        kind: OperationKind,
        remote: &RdmaMetadata,
        local: &[Descriptor<'_>],
        deadline: Option<Duration>,
    ) -> Result<Box<dyn Transfer>, Error> {
        self.world.start_driver()?;
        let key = remote.notification_key;
        let payload = match kind {
            OperationKind::Read => Payload::ReadRequest {
                op: 0,
                key,
                ranges: remote.descriptors.iter().map(|d| (d.ptr, d.size)).collect(),
            },
            // A write's bytes leave now (posted eagerly), while the operation lends them.
            OperationKind::Write => Payload::WriteRequest {
                op: 0,
                key,
                pieces: remote
                    .descriptors
                    .iter()
                    .zip(local.iter())
                    .map(|(r, l)| host_bytes(l).map(|b| (r.ptr, Bytes::copy_from_slice(b))))
                    .collect::<Result<_, _>>()?,
            },
        };
        let mut slot = OpSlot::new(
            self.node,
            kind,
            key,
            local.iter().map(Descriptor::region).collect(),
        );
        slot.peer = Some(self.peer);
        let mut world = self.world.lock();
        if world.is_gone(self.node) {
            return Err(crashed_error());
        }
        if world.is_gone(self.peer) {
            return Err(Error::PeerLost {
                reason: format!("sim node {} is gone", self.peer.0),
            });
        }
        let op = world.add_op(slot, deadline);
        let payload = match payload {
            Payload::ReadRequest { key, ranges, .. } => Payload::ReadRequest { op, key, ranges },
            Payload::WriteRequest { key, pieces, .. } => Payload::WriteRequest { op, key, pieces },
            other => other,
        };
        world.send(self.node, self.peer, payload);
        drop(world);
        self.world.ring();
        Ok(Box::new(SimTransfer {
            world: self.world.clone(),
            op,
            node: self.node,
            peer: Some(self.peer),
            passive: false,
            kind,
            key,
        }))
    }
}

/// One operation's handle on the world.
#[derive(Debug)]
struct SimTransfer {
    world: SimWorld,
    op: OpId,
    node: NodeId,
    peer: Option<NodeId>,
    passive: bool,
    kind: OperationKind,
    key: NotificationKey,
}

impl SimTransfer {
    /// A writable lands what peers wrote whenever it ends, however it ends: bytes a writer was
    /// told had landed are in memory, as RDMA would have put them there.
    fn lands_staged(&self) -> bool {
        self.passive && self.kind == OperationKind::Write
    }
}

/// Lands a writable's staged bytes in local memory.
fn land_staged(slot: &OpSlot, local: &mut [Descriptor<'_>]) {
    for (staged, descriptor) in slot.staged.iter().zip(local.iter_mut()) {
        if let Some(target) = descriptor.as_mut_slice() {
            staged.land(target);
        }
    }
}

/// Lands a read's bytes in local memory; `Completed` if they fit exactly.
fn land_read(data: &[Bytes], local: &mut [Descriptor<'_>]) -> Event {
    let sizes_match = data.len() == local.len()
        && data
            .iter()
            .zip(local.iter())
            .all(|(d, l)| d.len() == l.len());
    if !sizes_match {
        return Event::Failed(Error::AccessDenied {
            side: Side::Remote,
            reason: "the peer answered with regions of other sizes".into(),
        });
    }
    for (bytes, descriptor) in data.iter().zip(local.iter_mut()) {
        if let Some(target) = descriptor.as_mut_slice() {
            target.copy_from_slice(bytes);
        }
    }
    Event::Completed
}

impl Transfer for SimTransfer {
    fn poll_event(&mut self, cx: &mut Context<'_>, local: &mut [Descriptor<'_>]) -> Poll<Event> {
        if let Err(e) = self.world.start_driver() {
            return Poll::Ready(Event::Failed(e));
        }
        let mut world = self.world.lock();
        let Some(slot) = world.ops.get_mut(&self.op) else {
            return Poll::Ready(Event::Failed(crashed_error()));
        };
        match slot.events.pop_front() {
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(SlotEvent::Core(Event::PeerStarted)) => Poll::Ready(Event::PeerStarted),
            Some(SlotEvent::Core(event)) => {
                if self.lands_staged() {
                    land_staged(slot, local);
                }
                Poll::Ready(event)
            }
            Some(SlotEvent::ReadData(data)) => Poll::Ready(land_read(&data, local)),
        }
    }

    fn cancel(&mut self, local: &mut [Descriptor<'_>]) -> Option<Event> {
        let mut world = self.world.lock();
        let slot = world.ops.get_mut(&self.op)?;
        // Cancel lost the race if the world already decided the outcome: the bytes of a read
        // have arrived (they land now, before the memory is given back), a writable's
        // notification came, or the transfer failed or was cancelled by the peer.
        let decided = slot.events.drain(..).find_map(|event| match event {
            SlotEvent::ReadData(data) => Some(land_read(&data, local)),
            SlotEvent::Core(Event::PeerStarted) => None,
            SlotEvent::Core(event) => Some(event),
        });
        if self.lands_staged() {
            land_staged(slot, local);
        }
        if decided.is_some() {
            return decided;
        }
        let tell_peer = !self.passive && !slot.ended;
        world.end_op(self.op);
        if let (true, Some(peer)) = (tell_peer, self.peer) {
            world.send(self.node, peer, Payload::Notify(self.key.cancel_message()));
            drop(world);
            self.world.ring();
        }
        None
    }
}

impl Drop for SimTransfer {
    fn drop(&mut self) {
        self.world.lock().remove_op(self.op);
    }
}

/// A sleep on the world's virtual clock.
struct SimSleep {
    world: SimWorld,
    id: u64,
}

impl Future for SimSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let _ = self.world.start_driver();
        if self.world.lock().poll_timer(self.id, cx.waker()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for SimSleep {
    fn drop(&mut self) {
        self.world.lock().remove_timer(self.id);
    }
}

/// A descriptor's host bytes. The simulator moves host memory only: validation refuses device
/// memory before an operation exists, and this refuses it again rather than trust that.
fn host_bytes<'d>(descriptor: &'d Descriptor<'_>) -> Result<&'d [u8], Error> {
    descriptor.as_slice().ok_or(Error::UnsupportedDevice {
        device: descriptor.device(),
        backend: "sim",
    })
}
