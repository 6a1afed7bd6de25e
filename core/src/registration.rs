//! Registration bookkeeping: pinned regions and a bounded, range-aware cache, with leases so
//! nothing in use is ever deregistered.

use std::collections::{BTreeMap, BTreeSet};

use crate::descriptor::Region;
use crate::device::Device;

/// Hit and miss counts of a [`RegistrationCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups served by a live registration (cached, pinned, or in use by another operation).
    pub hits: u64,
    /// Lookups that needed a new registration.
    pub misses: u64,
    /// Cached registrations evicted to stay within capacity.
    pub evictions: u64,
}

#[derive(Debug)]
struct Entry<H> {
    region: Region,
    handle: H,
    last_used: u64,
    leases: u32,
    pinned: bool,
    /// Unpinned while leased: it serves no new lookup and goes when its last lease does.
    retired: bool,
}

impl<H> Entry<H> {
    fn cached(&self) -> bool {
        !self.pinned && !self.retired
    }
}

/// A claim on a registration by one operation: the registration is neither evicted nor
/// deregistered until the claim is released with [`RegistrationCache::release`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a lease must be released, or its registration is never deregistered"]
pub struct Lease(u64);

/// A pinned region's ticket, for [`RegistrationCache::unpin`].
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a pin must be unpinned, or its registration is never deregistered"]
pub struct PinTicket(u64);

/// Which regions are registered, keyed by (address range, device), and who uses them.
///
/// Range-aware: a region inside a registered one reuses it. *Pinned* entries belong to a
/// caller's `Registration` and are never evicted. *Cached* entries belong to the cache: at most
/// `capacity` are kept once no operation uses them, least recently used evicted first. Every
/// operation holds a [`Lease`] on each entry it uses, and an entry is handed back for
/// deregistration only when it is both unwanted (evicted or unpinned) and unleased, so memory
/// in flight is never deregistered.
#[derive(Debug)]
pub struct RegistrationCache<H> {
    capacity: usize,
    entries: BTreeMap<u64, Entry<H>>,
    next_id: u64,
    clock: u64,
    stats: CacheStats,
    /// Entries that serve lookups (all but retired ones), by device and start address.
    starts: BTreeMap<(Device, u64), BTreeSet<u64>>,
    /// The lengths of those entries, counted: the longest bounds how far before a region a
    /// covering entry can start.
    lens: BTreeMap<u64, usize>,
    /// Cached entries no operation holds, by (last use, id): eviction order.
    idle: BTreeSet<(u64, u64)>,
    /// Cached entries, idle or in use.
    cached: usize,
}

impl<H> RegistrationCache<H> {
    /// A cache keeping at most `capacity` idle registrations (0 keeps none: each goes when its
    /// last operation ends; pinned and in-use registrations still serve lookups).
    pub fn new(capacity: usize) -> Self {
        RegistrationCache {
            capacity,
            entries: BTreeMap::new(),
            next_id: 1,
            clock: 0,
            stats: CacheStats::default(),
            starts: BTreeMap::new(),
            lens: BTreeMap::new(),
            idle: BTreeSet::new(),
            cached: 0,
        }
    }

    /// A lease on a live registration covering `region` (a hit; the oldest such registration
    /// serves it), or `None` (a miss). Looks only at registrations that start close enough
    /// before `region` to cover it, so a cache of thousands of small registrations costs a
    /// few comparisons per lookup.
    pub fn lookup(&mut self, region: &Region) -> Option<Lease> {
        self.clock += 1;
        let now = self.clock;
        let longest = self.lens.last_key_value().map_or(0, |(&len, _)| len);
        let end = region.addr.saturating_add(region.len);
        let earliest = end.saturating_sub(longest);
        let found = if region.len > longest || earliest > region.addr {
            None
        } else {
            self.starts
                .range((region.device, earliest)..=(region.device, region.addr))
                .flat_map(|(_, ids)| ids.iter().copied())
                .filter(|id| {
                    self.entries
                        .get(id)
                        .is_some_and(|e| e.region.contains(region.addr, region.len))
                })
                .min()
        };
        match found {
            Some(id) => {
                if let Some(entry) = self.entries.get_mut(&id) {
                    if entry.cached() && entry.leases == 0 {
                        self.idle.remove(&(entry.last_used, id));
                    }
                    entry.last_used = now;
                    entry.leases += 1;
                }
                self.stats.hits += 1;
                Some(Lease(id))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Records a registration just made for `region` and leases it. Returns the lease and the
    /// handles evicted to make room (deregister them).
    pub fn insert(&mut self, region: Region, handle: H) -> (Lease, Vec<H>) {
        let id = self.add(region, handle, false, 1);
        (Lease(id), self.evict())
    }

    /// Ends a lease. Returns the handles that are now unwanted and unused (deregister them).
    pub fn release(&mut self, lease: Lease) -> Vec<H> {
        let mut freed = Vec::new();
        if let Some(entry) = self.entries.get_mut(&lease.0) {
            entry.leases = entry.leases.saturating_sub(1);
            if entry.leases == 0 {
                if entry.retired {
                    freed.extend(self.remove(lease.0));
                } else if entry.cached() {
                    self.idle.insert((entry.last_used, lease.0));
                }
            }
        }
        freed.extend(self.evict());
        freed
    }

    /// Records a registration pinned by a caller.
    pub fn pin(&mut self, region: Region, handle: H) -> PinTicket {
        PinTicket(self.add(region, handle, true, 0))
    }

    /// Ends a pin. Returns its handle if no operation uses it; otherwise it goes with the last
    /// lease.
    pub fn unpin(&mut self, ticket: PinTicket) -> Vec<H> {
        match self.entries.get(&ticket.0) {
            Some(entry) if entry.leases > 0 => {
                let region = entry.region;
                self.unindex(ticket.0, region);
                if let Some(entry) = self.entries.get_mut(&ticket.0) {
                    entry.pinned = false;
                    entry.retired = true;
                }
                Vec::new()
            }
            Some(_) => self.remove(ticket.0).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Takes every handle out (to deregister them all when the owner shuts down).
    pub fn drain(&mut self) -> Vec<H> {
        self.starts.clear();
        self.lens.clear();
        self.idle.clear();
        self.cached = 0;
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| e.handle)
            .collect()
    }

    /// Cached (not pinned) registrations held, in use or idle.
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// Hits, misses and evictions so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn add(&mut self, region: Region, handle: H, pinned: bool, leases: u32) -> u64 {
        self.clock += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                region,
                handle,
                last_used: self.clock,
                leases,
                pinned,
                retired: false,
            },
        );
        self.starts
            .entry((region.device, region.addr))
            .or_default()
            .insert(id);
        *self.lens.entry(region.len).or_default() += 1;
        if !pinned {
            self.cached += 1;
            if leases == 0 {
                self.idle.insert((self.clock, id));
            }
        }
        id
    }

    /// Takes `id` out of the lookup index (it serves no lookup any more).
    fn unindex(&mut self, id: u64, region: Region) {
        let key = (region.device, region.addr);
        if let Some(ids) = self.starts.get_mut(&key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.starts.remove(&key);
            }
        }
        if let Some(count) = self.lens.get_mut(&region.len) {
            *count -= 1;
            if *count == 0 {
                self.lens.remove(&region.len);
            }
        }
    }

    /// Forgets entry `id` and everything that indexes it; its handle.
    fn remove(&mut self, id: u64) -> Option<H> {
        let entry = self.entries.remove(&id)?;
        if !entry.retired {
            self.unindex(id, entry.region);
        }
        if entry.cached() {
            self.cached -= 1;
            self.idle.remove(&(entry.last_used, id));
        }
        Some(entry.handle)
    }

    /// Evicts idle cached entries, least recently used first, while over capacity.
    fn evict(&mut self) -> Vec<H> {
        let mut evicted = Vec::new();
        while self.cached > self.capacity {
            let Some((_, id)) = self.idle.pop_first() else {
                break;
            };
            evicted.extend(self.remove(id));
            self.stats.evictions += 1;
        }
        evicted
    }
}

/// The regions an operation registers for `regions`: those that overlap or touch on the same
/// device merged into one, each with the indices of the regions it covers. Merging only
/// adjacent or overlapping memory covers exactly the bytes offered, never a gap between them,
/// while one registration serves a buffer split into many descriptors (a tensor cut into
/// 4096 pieces registers once, and a peer's metadata names one region, not 4096).
///
/// ```
/// use ferry_core::{coalesce, Device, Region};
/// let r = |addr, len| Region { addr, len, device: Device::Cpu };
/// let merged = coalesce(&[r(200, 50), r(100, 100), r(400, 8)]);
/// assert_eq!(merged, vec![(r(100, 150), vec![1, 0]), (r(400, 8), vec![2])]);
/// ```
pub fn coalesce(regions: &[Region]) -> Vec<(Region, Vec<usize>)> {
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by_key(|&i| (regions[i].device, regions[i].addr));
    let mut merged: Vec<(Region, Vec<usize>)> = Vec::new();
    for i in order {
        let next = regions[i];
        let next_end = next.addr.saturating_add(next.len);
        match merged.last_mut() {
            Some((current, members))
                if current.device == next.device
                    && next.addr <= current.addr.saturating_add(current.len) =>
            {
                let end = current.addr.saturating_add(current.len).max(next_end);
                current.len = end - current.addr;
                members.push(i);
            }
            _ => merged.push((next, vec![i])),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    fn host(addr: u64, len: u64) -> Region {
        Region {
            addr,
            len,
            device: Device::Cpu,
        }
    }

    #[test]
    fn coalescing_merges_touching_and_overlapping_memory_only() {
        // Adjacent pieces of one buffer, in any order: one region.
        let pieces: Vec<Region> = (0..8).rev().map(|i| host(1000 + 64 * i, 64)).collect();
        assert_eq!(
            coalesce(&pieces),
            vec![(host(1000, 512), (0..8).rev().collect())]
        );
        // A gap stays a gap; overlaps and containment merge; devices never merge.
        let cuda = Region {
            addr: 100,
            len: 10,
            device: Device::Cuda(0),
        };
        let merged = coalesce(&[host(100, 10), host(111, 5), host(105, 2), cuda, host(0, 0)]);
        assert_eq!(
            merged,
            vec![
                (host(0, 0), vec![4]),
                (host(100, 10), vec![0, 2]),
                (host(111, 5), vec![1]),
                (cuda, vec![3]),
            ]
        );
        assert!(coalesce(&[]).is_empty());
    }

    use super::*;
    use crate::device::Device;
    use proptest::prelude::*;

    fn region(addr: u64, len: u64) -> Region {
        Region {
            addr,
            len,
            device: Device::Cpu,
        }
    }

    #[test]
    fn inner_regions_hit_and_capacity_evicts_lru() {
        let mut cache = RegistrationCache::new(2);
        assert!(cache.lookup(&region(1000, 100)).is_none());
        let (a, evicted) = cache.insert(region(1000, 100), 'a');
        assert!(evicted.is_empty());
        assert!(cache.release(a).is_empty());
        let hit = cache.lookup(&region(1010, 10)).expect("inside");
        assert!(cache.release(hit).is_empty());
        assert!(cache.lookup(&region(1090, 20)).is_none());
        let (b, _) = cache.insert(region(2000, 100), 'b');
        assert!(cache.release(b).is_empty());
        let hit = cache.lookup(&region(1000, 1)).expect("a again");
        assert!(cache.release(hit).is_empty());
        let (c, evicted) = cache.insert(region(3000, 100), 'c');
        assert_eq!(evicted, vec!['b']);
        assert!(cache.release(c).is_empty());
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 2,
                misses: 2,
                evictions: 1
            }
        );
    }

    #[test]
    fn leased_entries_are_never_evicted() {
        let mut cache = RegistrationCache::new(0);
        let (first, evicted) = cache.insert(region(0, 10), 1);
        assert!(evicted.is_empty(), "in use");
        let (second, evicted) = cache.insert(region(100, 10), 2);
        assert!(
            evicted.is_empty(),
            "both in use, over capacity until released"
        );
        let shared = cache
            .lookup(&region(2, 2))
            .expect("a live registration serves others");
        assert!(
            cache.release(first).is_empty(),
            "still leased by the second operation"
        );
        assert_eq!(cache.release(shared), vec![1]);
        assert_eq!(cache.release(second), vec![2]);
        assert_eq!(cache.cached(), 0);
    }

    #[test]
    fn unpinning_waits_for_the_last_lease() {
        let mut cache = RegistrationCache::new(0);
        let ticket = cache.pin(region(0x10_000, 1 << 20), 'p');
        let lease = cache
            .lookup(&region(0x10_100, 4096))
            .expect("pinned pools hit");
        assert!(cache.unpin(ticket).is_empty(), "in use");
        assert!(
            cache.lookup(&region(0x10_100, 4096)).is_none(),
            "retired: no new users"
        );
        assert_eq!(cache.release(lease), vec!['p']);
        let other_device = Region {
            device: Device::Cuda(0),
            ..region(0x10_100, 1)
        };
        let ticket = cache.pin(region(0x10_000, 1 << 20), 'q');
        assert!(cache.lookup(&other_device).is_none());
        assert_eq!(cache.unpin(ticket), vec!['q']);
    }

    proptest! {
        /// Model test: with each lease released at once, the cache agrees with a plain
        /// most-recently-used list on every lookup, holds at most `cap` registrations, and
        /// hands back exactly the handles it stops holding.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((0u64..64, 1u64..16, any::<bool>()), 1..200), cap in 0usize..6) {
            let mut cache = RegistrationCache::new(cap);
            // (region, last used, handle): the oldest covering registration serves a lookup.
            let mut model: Vec<(Region, u64, u64)> = Vec::new();
            let mut clock = 0u64;
            let mut live = std::collections::BTreeSet::new();
            let mut next = 0u64;
            for (addr, len, insert) in ops {
                let r = region(addr, len);
                clock += 1;
                let covering = model.iter_mut().filter(|(m, _, _)| m.contains(r.addr, r.len)).min_by_key(|(_, _, h)| *h);
                let hit = covering.is_some();
                if let Some(entry) = covering {
                    entry.1 = clock;
                }
                let lease = cache.lookup(&r);
                prop_assert_eq!(lease.is_some(), hit);
                if let Some(lease) = lease {
                    prop_assert!(cache.release(lease).is_empty());
                } else if insert {
                    clock += 1;
                    next += 1;
                    model.push((r, clock, next));
                    live.insert(next);
                    let (lease, mut freed) = cache.insert(r, next);
                    freed.extend(cache.release(lease));
                    while model.len() > cap {
                        let i = model.iter().enumerate().min_by_key(|(_, (_, t, _))| *t).map(|(i, _)| i).unwrap();
                        model.swap_remove(i);
                    }
                    for handle in freed {
                        prop_assert!(live.remove(&handle), "handed back twice or never held");
                    }
                }
                prop_assert!(cache.cached() <= cap);
                prop_assert_eq!(cache.cached(), model.len());
                prop_assert_eq!(live.len(), model.len());
            }
        }
    }
}
