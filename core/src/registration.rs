//! Registration bookkeeping: pinned regions and a bounded, range-aware cache.

use crate::descriptor::Region;

/// Hit and miss counts of a [`RegistrationCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups served by a live registration (cached or pinned).
    pub hits: u64,
    /// Lookups that needed a new registration.
    pub misses: u64,
    /// Cached registrations evicted to stay within capacity.
    pub evictions: u64,
}

#[derive(Debug)]
struct Entry<H> {
    region: Region,
    handle: Option<H>,
    last_used: u64,
    pin: Option<u64>,
}

/// Which regions are registered, keyed by (address range, device).
///
/// Range-aware: a region inside a registered one reuses it. Two kinds of entry: *pinned*
/// ones, owned by a caller's `Registration` and never evicted, and *cached* ones, owned by the
/// cache, bounded by `capacity` and evicted least recently used first. Eviction hands the
/// backend handle back so the caller can deregister it.
#[derive(Debug)]
pub struct RegistrationCache<H> {
    capacity: usize,
    entries: Vec<Entry<H>>,
    clock: u64,
    next_pin: u64,
    stats: CacheStats,
}

/// A pinned entry's ticket, for [`RegistrationCache::unpin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PinTicket(u64);

impl<H> RegistrationCache<H> {
    /// A cache holding at most `capacity` cached registrations (0 caches nothing; pinned
    /// regions still count as hits).
    pub fn new(capacity: usize) -> Self {
        RegistrationCache {
            capacity,
            entries: Vec::new(),
            clock: 0,
            next_pin: 0,
            stats: CacheStats::default(),
        }
    }

    /// Whether a live registration covers `region`; counts a hit or a miss.
    pub fn lookup(&mut self, region: &Region) -> bool {
        self.clock += 1;
        let now = self.clock;
        let found = self.entries.iter_mut().find(|e| {
            e.region.device == region.device && e.region.contains(region.addr, region.len)
        });
        match found {
            Some(entry) => {
                entry.last_used = now;
                self.stats.hits += 1;
                true
            }
            None => {
                self.stats.misses += 1;
                false
            }
        }
    }

    /// Caches a new registration; returns the handles evicted to make room (deregister them).
    /// With capacity 0 the handle itself comes straight back.
    pub fn insert(&mut self, region: Region, handle: H) -> Vec<H> {
        self.clock += 1;
        self.entries.push(Entry {
            region,
            handle: Some(handle),
            last_used: self.clock,
            pin: None,
        });
        let mut evicted = Vec::new();
        while self.cached() > self.capacity {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.pin.is_none())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            let Some(i) = oldest else { break };
            if let Some(handle) = self.entries.swap_remove(i).handle {
                evicted.push(handle);
            }
            self.stats.evictions += 1;
        }
        evicted
    }

    /// Records a region pinned by a caller's registration.
    pub fn pin(&mut self, region: Region) -> PinTicket {
        self.next_pin += 1;
        self.entries.push(Entry {
            region,
            handle: None,
            last_used: self.clock,
            pin: Some(self.next_pin),
        });
        PinTicket(self.next_pin)
    }

    /// Forgets a pinned region.
    pub fn unpin(&mut self, ticket: PinTicket) {
        self.entries.retain(|e| e.pin != Some(ticket.0));
    }

    /// Takes every cached handle out (to deregister them all, at shutdown).
    pub fn drain(&mut self) -> Vec<H> {
        let (cached, pinned): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.pin.is_none());
        self.entries = pinned;
        cached.into_iter().filter_map(|e| e.handle).collect()
    }

    /// Cached (not pinned) registrations held.
    pub fn cached(&self) -> usize {
        self.entries.iter().filter(|e| e.pin.is_none()).count()
    }

    /// Hits, misses and evictions so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
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
        assert!(!cache.lookup(&region(1000, 100)));
        assert!(cache.insert(region(1000, 100), 'a').is_empty());
        assert!(cache.lookup(&region(1010, 10)));
        assert!(!cache.lookup(&region(1090, 20)));
        assert!(cache.insert(region(2000, 100), 'b').is_empty());
        assert!(cache.lookup(&region(1000, 1)));
        assert_eq!(cache.insert(region(3000, 100), 'c'), vec!['b']);
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
    fn pinned_regions_hit_and_are_never_evicted() {
        let mut cache = RegistrationCache::new(0);
        let ticket = cache.pin(region(0x10_000, 1 << 20));
        assert!(cache.lookup(&region(0x10_100, 4096)));
        assert_eq!(cache.insert(region(1, 1), 7), vec![7]);
        assert!(cache.lookup(&region(0x10_000, 1 << 20)));
        cache.unpin(ticket);
        assert!(!cache.lookup(&region(0x10_100, 4096)));
        let other_device = Region {
            device: Device::Cuda(0),
            ..region(0x10_100, 1)
        };
        assert!(!cache.lookup(&other_device));
    }

    proptest! {
        /// Model test: the cache agrees with a plain list on every lookup, and never holds more
        /// than its capacity.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((0u64..64, 1u64..16, any::<bool>()), 1..200), cap in 0usize..6) {
            let mut cache = RegistrationCache::new(cap);
            let mut model: Vec<(Region, u64)> = Vec::new();
            let mut clock = 0u64;
            for (addr, len, insert) in ops {
                let r = region(addr, len);
                clock += 1;
                let hit = model.iter().any(|(m, _)| m.contains(r.addr, r.len));
                prop_assert_eq!(cache.lookup(&r), hit);
                if let Some(entry) = model.iter_mut().find(|(m, _)| m.contains(r.addr, r.len)) {
                    entry.1 = clock;
                } else if insert {
                    clock += 1;
                    model.push((r, clock));
                    let evicted = cache.insert(r, ());
                    while model.len() > cap {
                        let i = model.iter().enumerate().min_by_key(|(_, (_, t))| *t).map(|(i, _)| i).unwrap();
                        model.swap_remove(i);
                    }
                    prop_assert!(evicted.len() <= 1 + cap);
                }
                prop_assert!(cache.cached() <= cap);
                prop_assert_eq!(cache.cached(), model.len());
            }
        }
    }
}
