//! Model test of [`RegistrationCache`] with leases held across operations, pins, unpins and two
//! devices, against a plain oracle: a list of registrations with their lease counts.
//!
//! What the oracle says, and the cache must do:
//! - a lookup hits exactly when a live (not retired) registration on the same device covers
//!   the region, and the oldest such one serves it;
//! - a handle comes back for deregistration exactly once, and never while leased or pinned;
//! - idle cached registrations are evicted least recently used first, down to the capacity;
//! - at shutdown every handle ever registered has come back exactly once;
//! - the hit, miss and eviction counters count what happened.

use std::collections::BTreeMap;

use ferry_core::{CacheStats, Device, Lease, PinTicket, Region, RegistrationCache};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// An operation needs this region: look it up, register it on a miss, hold the lease.
    Acquire { addr: u64, len: u64, gpu: bool },
    /// An operation ends: release one held lease (index modulo the number held).
    Release(usize),
    /// A caller pins a pool.
    Pin { addr: u64, len: u64, gpu: bool },
    /// A caller drops a pin (index modulo the number held).
    Unpin(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let region = (0u64..96, 1u64..24, proptest::bool::weighted(0.2));
    prop_oneof![
        4 => region.clone().prop_map(|(addr, len, gpu)| Op::Acquire { addr, len, gpu }),
        4 => any::<usize>().prop_map(Op::Release),
        1 => region.prop_map(|(addr, len, gpu)| Op::Pin { addr, len: len * 4, gpu }),
        1 => any::<usize>().prop_map(Op::Unpin),
    ]
}

fn region(addr: u64, len: u64, gpu: bool) -> Region {
    Region {
        addr,
        len,
        device: if gpu { Device::Cuda(0) } else { Device::Cpu },
    }
}

/// One registration as the oracle sees it.
#[derive(Debug)]
struct Entry {
    region: Region,
    pinned: bool,
    retired: bool,
    leases: u32,
    last_used: u64,
}

impl Entry {
    fn cached(&self) -> bool {
        !self.pinned && !self.retired
    }
}

#[derive(Debug, Default)]
struct Oracle {
    /// By handle; handles are handed out in registration order, so the smallest is the oldest.
    entries: BTreeMap<u64, Entry>,
    clock: u64,
    stats: CacheStats,
}

impl Oracle {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn lookup(&mut self, r: &Region) -> Option<u64> {
        let now = self.tick();
        let found = self.entries.iter_mut().find(|(_, e)| {
            !e.retired && e.region.device == r.device && e.region.contains(r.addr, r.len)
        });
        match found {
            Some((&handle, entry)) => {
                entry.leases += 1;
                entry.last_used = now;
                self.stats.hits += 1;
                Some(handle)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    fn add(&mut self, handle: u64, region: Region, pinned: bool, leases: u32) {
        let last_used = self.tick();
        self.entries.insert(
            handle,
            Entry {
                region,
                pinned,
                retired: false,
                leases,
                last_used,
            },
        );
    }

    fn evict(&mut self, capacity: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while self.entries.values().filter(|e| e.cached()).count() > capacity {
            let idle = self
                .entries
                .iter()
                .filter(|(_, e)| e.cached() && e.leases == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(&h, _)| h);
            let Some(handle) = idle else { break };
            self.entries.remove(&handle);
            self.stats.evictions += 1;
            out.push(handle);
        }
        out
    }

    fn release(&mut self, handle: u64, capacity: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(entry) = self.entries.get_mut(&handle) {
            entry.leases -= 1;
            if entry.retired && entry.leases == 0 {
                self.entries.remove(&handle);
                out.push(handle);
            }
        }
        out.extend(self.evict(capacity));
        out
    }

    fn unpin(&mut self, handle: u64) -> Vec<u64> {
        match self.entries.get_mut(&handle) {
            Some(entry) if entry.leases > 0 => {
                entry.pinned = false;
                entry.retired = true;
                Vec::new()
            }
            Some(_) => {
                self.entries.remove(&handle);
                vec![handle]
            }
            None => Vec::new(),
        }
    }

    fn cached(&self) -> usize {
        self.entries.values().filter(|e| e.cached()).count()
    }
}

/// Handles the cache gave back, checked against the oracle's and against the ledger of handles
/// still registered.
fn settle(
    got: Vec<u64>,
    want: Vec<u64>,
    registered: &mut BTreeMap<u64, ()>,
) -> Result<(), TestCaseError> {
    let (mut got, mut want) = (got, want);
    got.sort_unstable();
    want.sort_unstable();
    prop_assert_eq!(&got, &want, "handles given back");
    for handle in got {
        prop_assert!(
            registered.remove(&handle).is_some(),
            "handle {} given back twice",
            handle
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn leases_pins_and_eviction_agree_with_the_oracle(
        capacity in 0usize..5,
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        let mut cache = RegistrationCache::new(capacity);
        let mut oracle = Oracle::default();
        let mut registered = BTreeMap::new();
        let mut next_handle = 0u64;
        let mut leases: Vec<(Lease, u64)> = Vec::new();
        let mut pins: Vec<(PinTicket, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire { addr, len, gpu } => {
                    let r = region(addr, len, gpu);
                    let want = oracle.lookup(&r);
                    match (cache.lookup(&r), want) {
                        (Some(lease), Some(handle)) => leases.push((lease, handle)),
                        (None, None) => {
                            next_handle += 1;
                            registered.insert(next_handle, ());
                            let (lease, evicted) = cache.insert(r, next_handle);
                            oracle.add(next_handle, r, false, 1);
                            let want = oracle.evict(capacity);
                            settle(evicted, want, &mut registered)?;
                            leases.push((lease, next_handle));
                        }
                        (got, want) => prop_assert!(false, "lookup {:?}: cache {:?}, oracle {:?}", r, got, want),
                    }
                }
                Op::Release(i) if !leases.is_empty() => {
                    let (lease, handle) = leases.swap_remove(i % leases.len());
                    let want = oracle.release(handle, capacity);
                    settle(cache.release(lease), want, &mut registered)?;
                }
                Op::Pin { addr, len, gpu } => {
                    next_handle += 1;
                    registered.insert(next_handle, ());
                    let r = region(addr, len, gpu);
                    pins.push((cache.pin(r, next_handle), next_handle));
                    oracle.add(next_handle, r, true, 0);
                }
                Op::Unpin(i) if !pins.is_empty() => {
                    let (ticket, handle) = pins.swap_remove(i % pins.len());
                    let want = oracle.unpin(handle);
                    settle(cache.unpin(ticket), want, &mut registered)?;
                }
                Op::Release(_) | Op::Unpin(_) => {}
            }
            prop_assert_eq!(cache.cached(), oracle.cached());
            prop_assert_eq!(cache.stats(), oracle.stats);
            let idle_cached = oracle.entries.values().filter(|e| e.cached() && e.leases == 0).count();
            prop_assert!(idle_cached == 0 || oracle.cached() <= capacity, "idle entries kept over capacity");
        }
        // Shutdown: every operation ends, every pin goes, the owner drains the rest.
        for (lease, handle) in leases {
            let want = oracle.release(handle, capacity);
            settle(cache.release(lease), want, &mut registered)?;
        }
        for (ticket, handle) in pins {
            let want = oracle.unpin(handle);
            settle(cache.unpin(ticket), want, &mut registered)?;
        }
        prop_assert!(cache.cached() <= capacity);
        let want: Vec<u64> = oracle.entries.keys().copied().collect();
        settle(cache.drain(), want, &mut registered)?;
        prop_assert!(registered.is_empty(), "never given back: {:?}", registered);
    }
}
