//! Sim fault campaign (issue 7): seeded schedules of random operations under random faults,
//! every operation checked against an oracle.
//!
//! Each schedule is one seed: a fresh world of three workers with random links and a
//! per-Connector deadline, then batches of read and write pairs (1 to 4 descriptors, up to
//! 20 000 bytes) while faults strike: a worker crashing mid-transfer, a partition, a slowed
//! link, dropped and delayed notifications, and owners that cancel or drop their operations
//! early. The oracle, for every operation:
//!
//! - it ends (a terminal status) no later than its deadline on the world's clock: nothing
//!   hangs, and a wait bounded by the deadline never answers `Timeout`;
//! - exactly one terminal state: a later `cancel()` or `status()` reports the same one, and
//!   each Connector's outcome counters add up to the operations it made;
//! - `Complete` only with correct bytes (a read's landing, a writable's memory, an acknowledged
//!   write's destination while its worker is alive), and a readable's or a write's source is
//!   never written;
//! - nothing touches memory after its operation ended: landings are overwritten with a
//!   sentinel once their batch ends and checked untouched at the end of the schedule, by
//!   which time the world must hold no operation, key or timer.
//!
//! A failing schedule prints its seed and the command that replays it alone; a same-seed run
//! replays exactly (every 100th seed is run twice and must give the same trace and outcomes).
//!
//! `FERRY_CAMPAIGN_SCHEDULES` (default 2 000) and `FERRY_CAMPAIGN_FIRST_SEED` (default 1) choose
//! the seeds; `FERRY_CAMPAIGN_SEED=n` runs schedule `n` alone.

mod sim {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use ferry::sim::{LinkConfig, NodeId, NotificationFault, SimBackend, SimWorld};
    use ferry::{Connector, Descriptor, Error, OperationStatus};
    use ferry_conformance::rules::pattern;

    const DEADLINE: Duration = Duration::from_millis(20);
    const SENTINEL: u8 = 0xa5;

    /// A small xorshift for the schedule, independent of the world's generator.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Counts over a campaign.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Figures {
        schedules: u64,
        operations: u64,
        refused_at_begin: u64,
        complete: u64,
        cancelled: u64,
        errored: u64,
        crashes: u64,
        partitions: u64,
        slow_links: u64,
        dropped_notifications: u64,
        delayed_notifications: u64,
        early_cancels: u64,
        early_drops: u64,
        bytes_checked: u64,
    }

    impl Figures {
        fn add(&mut self, other: &Figures) {
            let pairs = [
                (&mut self.schedules, other.schedules),
                (&mut self.operations, other.operations),
                (&mut self.refused_at_begin, other.refused_at_begin),
                (&mut self.complete, other.complete),
                (&mut self.cancelled, other.cancelled),
                (&mut self.errored, other.errored),
                (&mut self.crashes, other.crashes),
                (&mut self.partitions, other.partitions),
                (&mut self.slow_links, other.slow_links),
                (&mut self.dropped_notifications, other.dropped_notifications),
                (&mut self.delayed_notifications, other.delayed_notifications),
                (&mut self.early_cancels, other.early_cancels),
                (&mut self.early_drops, other.early_drops),
                (&mut self.bytes_checked, other.bytes_checked),
            ];
            for (mine, theirs) in pairs {
                *mine += theirs;
            }
        }

        fn faults(&self) -> u64 {
            self.crashes
                + self.partitions
                + self.slow_links
                + self.dropped_notifications
                + self.delayed_notifications
        }
    }

    /// Any of the four operations.
    trait Op {
        fn wait_for(
            &mut self,
            timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + '_>>;
        fn state(&mut self) -> OperationStatus;
        fn stop(&mut self) -> OperationStatus;
    }

    impl<K> Op for ferry::Operation<'_, K> {
        fn wait_for(
            &mut self,
            timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + '_>> {
            Box::pin(self.wait_for_completion_timeout(timeout))
        }

        fn state(&mut self) -> OperationStatus {
            self.status()
        }

        fn stop(&mut self) -> OperationStatus {
            self.cancel()
        }
    }

    /// One operation of a batch and what the oracle needs about it.
    struct Tracked<'buf> {
        op: Option<Box<dyn Op + 'buf>>,
        /// World time by which it must have ended.
        due: Duration,
        /// Its final status.
        end: Option<OperationStatus>,
    }

    /// A pair's passive and active operations.
    type Pair<'buf> = (Box<dyn Op + 'buf>, Box<dyn Op + 'buf>);

    struct Worker {
        connector: Connector,
        node: NodeId,
        crashed: bool,
    }

    /// What a schedule produced: the world's trace, every final status in order, and counts.
    type Run = ((u64, u64), Vec<OperationStatus>, Figures);

    fn schedule(seed: u64) -> Run {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(run_schedule(seed))
    }

    async fn run_schedule(seed: u64) -> Run {
        let mut dice = Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut figures = Figures {
            schedules: 1,
            ..Figures::default()
        };
        let world = SimWorld::builder()
            .seed(seed)
            .link(LinkConfig {
                latency: Duration::from_micros(1 + dice.below(50)),
                jitter: Duration::from_micros(dice.below(20)),
                bandwidth: 1_000_000_000 + dice.below(24) * 1_000_000_000,
            })
            .build();
        let mut workers = Vec::new();
        for name in ["a", "b", "c"] {
            let backend = SimBackend::new(&world, name).expect("runtime");
            let node = backend.node();
            let connector = Connector::builder()
                .worker_id(name)
                .backend(backend)
                .deadline(DEADLINE)
                .registration_cache(dice.below(4) as usize)
                .build()
                .await
                .expect("connector");
            workers.push(Worker {
                connector,
                node,
                crashed: false,
            });
        }
        let mut outcomes = Vec::new();
        // Landings of ended batches, overwritten with the sentinel: nothing may touch them.
        let mut retired: Vec<Vec<u8>> = Vec::new();
        let batches = 2 + dice.below(6);
        for batch in 0..batches {
            let live: Vec<usize> = (0..workers.len())
                .filter(|&w| !workers[w].crashed)
                .collect();
            if live.len() < 2 {
                break;
            }
            // Faults before the batch.
            let mut partitioned = None;
            let pick = |dice: &mut Dice| {
                let p = live[dice.below(live.len() as u64) as usize];
                let mut q = live[dice.below(live.len() as u64) as usize];
                if q == p {
                    q = live[(live.iter().position(|&x| x == p).expect("live") + 1) % live.len()];
                }
                (p, q)
            };
            if dice.chance(10) {
                let (p, q) = pick(&mut dice);
                world.set_link(
                    workers[p].node,
                    workers[q].node,
                    LinkConfig {
                        latency: Duration::from_micros(500 + dice.below(5_000)),
                        jitter: Duration::ZERO,
                        bandwidth: 100_000_000,
                    },
                );
                figures.slow_links += 1;
            }
            if dice.chance(5) {
                let (p, q) = pick(&mut dice);
                world.partition(workers[p].node, workers[q].node);
                partitioned = Some((p, q));
                figures.partitions += 1;
            }
            if dice.chance(10) {
                let (p, q) = pick(&mut dice);
                let fault = if dice.chance(50) {
                    figures.dropped_notifications += 1;
                    NotificationFault::Drop
                } else {
                    figures.delayed_notifications += 1;
                    NotificationFault::Delay(Duration::from_micros(100 + dice.below(40_000)))
                };
                world.fault_notifications(workers[p].node, workers[q].node, fault, 1);
            }
            // The batch's buffers.
            let pairs = 1 + dice.below(4) as usize;
            let mut sources = Vec::new();
            let mut landings = Vec::new();
            let mut plan = Vec::new();
            for i in 0..pairs {
                let (p, q) = pick(&mut dice);
                let len = 1 + dice.below(20_000) as usize;
                sources.push(pattern(len, seed ^ (batch << 8) ^ i as u64));
                landings.push(vec![0u8; len]);
                let parts = 1 + dice.below(4) as usize;
                plan.push((p, q, dice.chance(50), len.div_ceil(parts)));
            }
            let pristine = sources.clone();
            let mut tracked: Vec<Tracked<'_>> = Vec::new();
            // (passive index, active index, read?, passive worker, active worker, pair index)
            let mut pairs_made = Vec::new();
            for (i, ((source, landing), &(p, q, read, chunk))) in sources
                .iter()
                .zip(landings.iter_mut())
                .zip(plan.iter())
                .enumerate()
            {
                let (passive, active) = (&workers[p].connector, &workers[q].connector);
                let made: Result<Pair<'_>, Error> = if read {
                    match passive
                        .create_readable(source.chunks(chunk).map(Descriptor::from_slice))
                        .await
                    {
                        Ok(readable) => active
                            .begin_read(
                                readable.metadata(),
                                landing.chunks_mut(chunk).map(Descriptor::from_mut_slice),
                            )
                            .await
                            .map(|r| {
                                (
                                    Box::new(readable) as Box<dyn Op>,
                                    Box::new(r) as Box<dyn Op>,
                                )
                            }),
                        Err(e) => Err(e),
                    }
                } else {
                    match passive
                        .create_writable(landing.chunks_mut(chunk).map(Descriptor::from_mut_slice))
                        .await
                    {
                        Ok(writable) => active
                            .begin_write(
                                source.chunks(chunk).map(Descriptor::from_slice),
                                writable.metadata(),
                            )
                            .await
                            .map(|w| {
                                (
                                    Box::new(writable) as Box<dyn Op>,
                                    Box::new(w) as Box<dyn Op>,
                                )
                            }),
                        Err(e) => Err(e),
                    }
                };
                match made {
                    Ok((passive_op, active_op)) => {
                        let due = world.now() + DEADLINE;
                        pairs_made.push((tracked.len(), tracked.len() + 1, read, p, q, i));
                        for op in [passive_op, active_op] {
                            tracked.push(Tracked {
                                op: Some(op),
                                due,
                                end: None,
                            });
                        }
                    }
                    Err(error) => {
                        assert!(!matches!(error, Error::Timeout), "a begin answered Timeout");
                        figures.refused_at_begin += 1;
                    }
                }
            }
            figures.operations += tracked.len() as u64;
            // Owners that give up early.
            for t in tracked.iter_mut() {
                if dice.chance(6) {
                    let status = t.op.as_mut().expect("live").stop();
                    assert!(status.is_terminal(), "cancel left {status:?}");
                    figures.early_cancels += 1;
                } else if dice.chance(3) {
                    t.op = None;
                    figures.early_drops += 1;
                }
            }
            // A worker crashing mid-transfer.
            if dice.chance(4) {
                let (p, _) = pick(&mut dice);
                world.crash(workers[p].node);
                workers[p].crashed = true;
                figures.crashes += 1;
            }
            // Every operation ends by its deadline, once, and stays ended.
            for t in tracked.iter_mut() {
                let Some(op) = t.op.as_mut() else { continue };
                let left = t.due.saturating_sub(world.now());
                let waited = op.wait_for(left).await;
                assert_ne!(
                    waited,
                    Err(Error::Timeout),
                    "an operation had not ended at its deadline ({:?} on the world's clock)",
                    t.due
                );
                let end = op.state();
                assert!(end.is_terminal(), "ended in {end:?}");
                assert_eq!(waited.is_ok(), end == OperationStatus::Complete);
                assert_eq!(op.stop(), end, "cancel after the end changed it");
                assert_eq!(op.state(), end, "the terminal state moved");
                t.end = Some(end);
            }
            if let Some((p, q)) = partitioned {
                world.heal(workers[p].node, workers[q].node);
            }
            let ends: Vec<Option<OperationStatus>> = tracked.iter().map(|t| t.end).collect();
            drop(tracked);
            for end in ends.iter().flatten() {
                outcomes.push(*end);
                match end {
                    OperationStatus::Complete => figures.complete += 1,
                    OperationStatus::Cancelled => figures.cancelled += 1,
                    _ => figures.errored += 1,
                }
            }
            // Complete only with the right bytes; sources never written.
            assert!(sources == pristine, "a source was written");
            for &(passive, active, read, p, _q, i) in &pairs_made {
                let (landing, source) = (&landings[i], &sources[i]);
                let complete = |k: usize| ends[k] == Some(OperationStatus::Complete);
                let lands = if read {
                    complete(active)
                } else {
                    complete(passive) || (complete(active) && !workers[p].crashed)
                };
                if lands {
                    assert!(
                        landing == source,
                        "complete, but the bytes are wrong (pair {i})"
                    );
                    figures.bytes_checked += source.len() as u64;
                }
            }
            for mut landing in landings {
                landing.fill(SENTINEL);
                retired.push(landing);
            }
        }
        // Let late messages (delayed notifications, slow links) arrive, then check that nothing
        // touched ended operations' memory and that the world holds nothing.
        // (A readable nobody reads ends at its deadline, DEADLINE later on the world's clock.)
        if let Some(w) = workers.iter().find(|w| !w.crashed) {
            let source = [0u8; 1];
            let idle = w
                .connector
                .create_readable([Descriptor::from_slice(&source)])
                .await;
            if let Ok(mut readable) = idle {
                assert_eq!(
                    readable.wait_for_completion().await,
                    Err(Error::DeadlineExceeded)
                );
            }
        }
        for landing in &retired {
            assert!(
                landing.iter().all(|&b| b == SENTINEL),
                "memory of an ended operation was written"
            );
        }
        for w in &workers {
            let s = w.connector.stats();
            assert_eq!(
                s.operations,
                s.completed + s.cancelled + s.errored,
                "{}: an operation ended in no terminal state, or in two: {s:?}",
                w.connector.worker_id()
            );
        }
        let stats = world.stats();
        assert_eq!(
            (stats.live_operations, stats.live_keys, stats.live_timers),
            (0, 0, 0),
            "the world holds state of ended operations: {stats:?}"
        );
        (world.trace_digest(), outcomes, figures)
    }

    fn env(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    /// Runs one schedule; on failure prints the seed and how to replay it, then fails.
    fn checked(seed: u64) -> Run {
        match std::panic::catch_unwind(|| schedule(seed)) {
            Ok(run) => run,
            Err(panic) => {
                eprintln!(
                    "sim campaign: schedule {seed} FAILED; replay it alone with\n  \
                     FERRY_CAMPAIGN_SEED={seed} cargo test -p ferry-conformance --test sim_campaign -- --nocapture"
                );
                std::panic::resume_unwind(panic)
            }
        }
    }

    #[test]
    fn fault_campaign() {
        let (first, count) = match env("FERRY_CAMPAIGN_SEED") {
            Some(seed) => (seed, 1),
            None => (
                env("FERRY_CAMPAIGN_FIRST_SEED").unwrap_or(1),
                env("FERRY_CAMPAIGN_SCHEDULES").unwrap_or(2000),
            ),
        };
        let started = std::time::Instant::now();
        let mut total = Figures::default();
        let mut replays = 0;
        for seed in first..first + count {
            let run = checked(seed);
            if seed % 100 == 0 {
                assert_eq!(checked(seed), run, "schedule {seed} did not replay exactly");
                replays += 1;
            }
            total.add(&run.2);
        }
        println!(
            "sim campaign: seeds {first}..{}: {} schedules, {} operations checked ({} complete, \
             {} cancelled, {} errored, {} refused at begin), {} faults injected ({} crashes, {} \
             partitions, {} slow links, {} dropped and {} delayed notifications), {} early \
             cancels, {} early drops, {} bytes verified, {replays} schedules replayed exactly, \
             {:.1} s",
            first + count,
            total.schedules,
            total.operations,
            total.complete,
            total.cancelled,
            total.errored,
            total.refused_at_begin,
            total.faults(),
            total.crashes,
            total.partitions,
            total.slow_links,
            total.dropped_notifications,
            total.delayed_notifications,
            total.early_cancels,
            total.early_drops,
            total.bytes_checked,
            started.elapsed().as_secs_f64(),
        );
        assert_eq!(total.schedules, count);
        if count >= 100 {
            // The campaign must exercise what it claims to.
            assert!(total.crashes > 0 && total.partitions > 0 && total.slow_links > 0);
            assert!(total.dropped_notifications > 0 && total.delayed_notifications > 0);
            assert!(total.complete > 0 && total.cancelled > 0 && total.errored > 0);
        }
    }
}
