//! The Connector: a worker's handle on one backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::state::{Event, Role};
use ferry_core::{
    coalesce, validate_active, validate_passive, Backend, CacheStats, Capabilities, Descriptor,
    Error, Lease, OperationKind, PinTicket, RdmaMetadata, Region, RegistrationCache,
    RegistrationId, RemoteDescriptor,
};

use crate::operation::{OpCore, Operation, Read, Readable, Writable, Write};

/// A worker's handle on one backend. Makes operations. Cheap to clone, `Send + Sync`.
///
/// One backend agent per Connector: remote peers are cached by identity inside the backend and
/// never reloaded per operation.
#[derive(Clone)]
pub struct Connector {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) worker_id: String,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) registrations: Mutex<RegistrationCache<RegistrationId>>,
    pub(crate) counters: Counters,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) started: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) errored: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) registered: AtomicU64,
    pub(crate) deregistered: AtomicU64,
}

/// What a Connector has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectorStats {
    /// Operations created or begun.
    pub operations: u64,
    /// Operations that ended `Complete`.
    pub completed: u64,
    /// Operations that ended `Cancelled`.
    pub cancelled: u64,
    /// Operations that ended `Errored`.
    pub errored: u64,
    /// Bytes of completed operations.
    pub bytes: u64,
    /// Backend registrations made.
    pub registrations: u64,
    /// Backend registrations currently live.
    pub live_registrations: u64,
    /// Registration cache hits, misses and evictions (pinned pools count as hits).
    pub cache: CacheStats,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("worker_id", &self.inner.worker_id)
            .field("backend", &self.inner.backend.capabilities().backend)
            .finish()
    }
}

/// Settings for a [`Connector`].
#[derive(Default)]
pub struct ConnectorBuilder {
    worker_id: Option<String>,
    backend: Option<Arc<dyn Backend>>,
    deadline: Option<Duration>,
    cache_capacity: usize,
}

impl ConnectorBuilder {
    /// The worker's name (Dynamo's `worker_id`); defaults to `ferry-<pid>-<n>`.
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }

    /// The backend this Connector drives.
    pub fn backend(self, backend: impl Backend) -> Self {
        self.backend_arc(Arc::new(backend))
    }

    /// The backend this Connector drives, shared.
    pub fn backend_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// A deadline for every operation of this Connector: an operation still live this long
    /// after it started ends `Errored(DeadlineExceeded)` (and an active one tells its peer).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Keeps up to `capacity` registrations made for operations, so memory reused by later
    /// operations is not registered again (range-aware: a region inside a cached one reuses
    /// it). Off (0) by default, as in Dynamo, because a cached registration outlives the
    /// operation that made it: with nixl and ucx a peer holding old metadata may still reach
    /// that memory.
    pub fn registration_cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The Connector.
    pub async fn build(self) -> Result<Connector, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let backend = match self.backend {
            Some(backend) => backend,
            None => crate::auto::default_backend(self.worker_id.as_deref()).await?,
        };
        let worker_id = self.worker_id.unwrap_or_else(|| {
            format!(
                "ferry-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        });
        Ok(Connector {
            inner: Arc::new(Inner {
                worker_id,
                backend,
                deadline: self.deadline,
                registrations: Mutex::new(RegistrationCache::new(self.cache_capacity)),
                counters: Counters::default(),
            }),
        })
    }
}

impl Connector {
    /// Settings for a new Connector.
    pub fn builder() -> ConnectorBuilder {
        ConnectorBuilder::default()
    }

    /// The worker's name.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.backend.capabilities()
    }

    /// The backend's name (`sim`, `tcp`, `ucx`, `nixl`).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.capabilities().backend
    }

    /// Counters.
    pub fn stats(&self) -> ConnectorStats {
        let c = &self.inner.counters;
        // Deregistrations first: a registration made between the two loads can only make the
        // live count look higher, never negative.
        let deregistered = c.deregistered.load(Ordering::Acquire);
        let registered = c.registered.load(Ordering::Acquire);
        ConnectorStats {
            operations: c.started.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            errored: c.errored.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            registrations: registered,
            live_registrations: registered.saturating_sub(deregistered),
            cache: self.inner.cache().stats(),
        }
    }

    /// Exposes `descriptors` for a peer to read. Hand [`Operation::metadata`] to the peer,
    /// which calls [`Connector::begin_read`].
    pub async fn create_readable<'buf>(
        &self,
        descriptors: impl IntoIterator<Item = Descriptor<'buf>>,
    ) -> Result<Operation<'buf, Readable>, Error> {
        self.create_passive(OperationKind::Read, descriptors.into_iter().collect())
            .await
            .map(Operation::new)
    }

    /// Exposes `descriptors` for a peer to write into. Hand [`Operation::metadata`] to the
    /// peer, which calls [`Connector::begin_write`]. Every descriptor must be writable.
    pub async fn create_writable<'buf>(
        &self,
        descriptors: impl IntoIterator<Item = Descriptor<'buf>>,
    ) -> Result<Operation<'buf, Writable>, Error> {
        self.create_passive(OperationKind::Write, descriptors.into_iter().collect())
            .await
            .map(Operation::new)
    }

    /// Pulls a peer's readable (described by `metadata`) into `descriptors`, which must match
    /// it in count and in size one by one. Posted eagerly: bytes move before this returns or
    /// soon after, whether or not the operation is awaited. Dynamo's argument order.
    pub async fn begin_read<'buf>(
        &self,
        metadata: &RdmaMetadata,
        descriptors: impl IntoIterator<Item = Descriptor<'buf>>,
    ) -> Result<Operation<'buf, Read>, Error> {
        self.begin_active(
            OperationKind::Read,
            metadata,
            descriptors.into_iter().collect(),
        )
        .await
        .map(Operation::new)
    }

    /// Pushes `descriptors` into a peer's writable (described by `metadata`). Posted eagerly.
    /// Dynamo's argument order.
    pub async fn begin_write<'buf>(
        &self,
        descriptors: impl IntoIterator<Item = Descriptor<'buf>>,
        metadata: &RdmaMetadata,
    ) -> Result<Operation<'buf, Write>, Error> {
        self.begin_active(
            OperationKind::Write,
            metadata,
            descriptors.into_iter().collect(),
        )
        .await
        .map(Operation::new)
    }

    /// Registers `descriptors` once, for as long as the returned [`Registration`] lives, so
    /// operations on memory inside them register nothing (the KV-cache pool pattern).
    pub fn register<'buf>(
        &self,
        descriptors: impl IntoIterator<Item = &'buf Descriptor<'buf>>,
    ) -> Result<Registration<'buf>, Error> {
        let regions: Vec<Region> = descriptors.into_iter().map(Descriptor::region).collect();
        self.register_regions(&regions)
    }

    /// Registers `regions` as [`Connector::register`] does, for memory the caller keeps
    /// borrowed for `'buf` itself (a KV pool holds its memory exclusively to receive into it).
    pub(crate) fn register_regions<'buf>(
        &self,
        regions: &[Region],
    ) -> Result<Registration<'buf>, Error> {
        let mut registration = Registration {
            connector: self.inner.clone(),
            pins: Vec::new(),
            memory: std::marker::PhantomData,
        };
        for &region in regions {
            if !self.capabilities().reaches(region.device) {
                return Err(Error::UnsupportedDevice {
                    device: region.device,
                    backend: self.backend_name(),
                });
            }
            let id = self.inner.register(region)?;
            registration.pins.push(self.inner.cache().pin(region, id));
        }
        Ok(registration)
    }

    async fn create_passive<'buf>(
        &self,
        kind: OperationKind,
        descriptors: Vec<Descriptor<'buf>>,
    ) -> Result<OpCore<'buf>, Error> {
        let backend = &self.inner.backend;
        let (regions, writable) = summarise(&descriptors);
        validate_passive(kind, backend.capabilities(), &regions, &writable)?;
        let leases = self.inner.register_for_op(&regions)?;
        let key = backend.new_key();
        let mut core = OpCore::new(self.inner.clone(), Role::Passive, kind, descriptors, leases);
        let exposed = backend
            .expose(kind, key, &core.descriptors, self.inner.deadline)
            .await?;
        core.metadata = Some(RdmaMetadata {
            descriptors: regions.into_iter().map(RemoteDescriptor::from).collect(),
            nixl_metadata: exposed.endpoint.encode(),
            notification_key: key,
            operation_kind: kind,
        });
        core.start(exposed.transfer, Event::Exposed);
        Ok(core)
    }

    async fn begin_active<'buf>(
        &self,
        kind: OperationKind,
        metadata: &RdmaMetadata,
        descriptors: Vec<Descriptor<'buf>>,
    ) -> Result<OpCore<'buf>, Error> {
        let backend = &self.inner.backend;
        let (regions, writable) = summarise(&descriptors);
        let endpoint =
            validate_active(kind, backend.capabilities(), &regions, &writable, metadata)?;
        let peer = backend.connect(&endpoint).await?;
        let leases = self.inner.register_for_op(&regions)?;
        let mut core = OpCore::new(self.inner.clone(), Role::Active, kind, descriptors, leases);
        let transfer = peer
            .post(kind, metadata, &mut core.descriptors, self.inner.deadline)
            .await?;
        core.start(transfer, Event::Posted);
        Ok(core)
    }
}

fn summarise(descriptors: &[Descriptor<'_>]) -> (Vec<Region>, Vec<bool>) {
    descriptors
        .iter()
        .map(|d| (d.region(), d.is_writable()))
        .unzip()
}

impl Inner {
    pub(crate) fn cache(&self) -> MutexGuard<'_, RegistrationCache<RegistrationId>> {
        // The cache is plain bookkeeping; its invariants hold between calls.
        self.registrations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, region: Region) -> Result<RegistrationId, Error> {
        let id = self.backend.register(region)?;
        self.counters.registered.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    pub(crate) fn deregister(&self, id: RegistrationId) {
        self.backend.deregister(id);
        self.counters.deregistered.fetch_add(1, Ordering::Relaxed);
    }

    /// Leases registrations covering every region an operation uses, registering what no
    /// live registration covers, and releases them when the operation ends. Regions that
    /// touch or overlap are registered as one ([`coalesce`]) unless live registrations
    /// already cover each of them (a pool pinned piece by piece).
    fn register_for_op(&self, regions: &[Region]) -> Result<Vec<Lease>, Error> {
        let mut leases = Vec::with_capacity(regions.len());
        for (merged, members) in coalesce(regions) {
            if let Err(e) = self.lease_group(merged, &members, regions, &mut leases) {
                self.release(leases);
                return Err(e);
            }
        }
        Ok(leases)
    }

    /// Leases for one group of touching regions: `merged`'s own registration if one covers
    /// it, else those covering each member if all are live, else a new registration of
    /// `merged`.
    fn lease_group(
        &self,
        merged: Region,
        members: &[usize],
        regions: &[Region],
        leases: &mut Vec<Lease>,
    ) -> Result<(), Error> {
        if let Some(lease) = self.cache().lookup(&merged) {
            leases.push(lease);
            return Ok(());
        }
        if members.len() > 1 {
            let mut cache = self.cache();
            let found: Vec<Lease> = members
                .iter()
                .map_while(|&i| cache.lookup(&regions[i]))
                .collect();
            if found.len() == members.len() {
                leases.extend(found);
                return Ok(());
            }
            let unwanted: Vec<RegistrationId> = found
                .into_iter()
                .flat_map(|lease| cache.release(lease))
                .collect();
            drop(cache);
            unwanted.into_iter().for_each(|id| self.deregister(id));
        }
        let id = self.register(merged)?;
        let (lease, evicted) = self.cache().insert(merged, id);
        evicted.into_iter().for_each(|id| self.deregister(id));
        leases.push(lease);
        Ok(())
    }

    /// Releases an operation's leases, deregistering what no one wants any more.
    pub(crate) fn release(&self, leases: Vec<Lease>) {
        let unwanted: Vec<RegistrationId> = {
            let mut cache = self.cache();
            leases
                .into_iter()
                .flat_map(|lease| cache.release(lease))
                .collect()
        };
        unwanted.into_iter().for_each(|id| self.deregister(id));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let cached = self.cache().drain();
        for id in cached {
            self.deregister(id);
        }
    }
}

/// Memory registered once with a Connector's backend, until this is dropped. It borrows the
/// memory, which therefore outlives the registration.
///
/// Operations on memory inside a registered region register nothing of their own. With the
/// nixl and ucx backends a live registration keeps that memory reachable by a peer holding old
/// metadata; drop it when the pool is retired.
#[must_use = "dropping a Registration unpins the memory at once"]
pub struct Registration<'buf> {
    connector: Arc<Inner>,
    pins: Vec<PinTicket>,
    memory: std::marker::PhantomData<&'buf [u8]>,
}

impl Registration<'_> {
    /// How many regions it holds.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// Whether it holds no region.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

impl std::fmt::Debug for Registration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("regions", &self.pins.len())
            .finish()
    }
}

impl Drop for Registration<'_> {
    /// Unpins every region; each is deregistered now, or when the last operation using it ends.
    fn drop(&mut self) {
        for ticket in self.pins.drain(..) {
            let unwanted = self.connector.cache().unpin(ticket);
            unwanted
                .into_iter()
                .for_each(|id| self.connector.deregister(id));
        }
    }
}
