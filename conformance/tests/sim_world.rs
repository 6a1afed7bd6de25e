//! The simulator's own promises: same seed, same trace; virtual time follows the link model;
//! faults do what they say.

mod sim {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use ferry::sim::{LinkConfig, SimWorld};
    use ferry::{Descriptor, Error, OperationStatus};
    use ferry_conformance::rules::{pattern, read_cycle, read_pair, write_cycle};
    use ferry_conformance::sim::SimHarness;
    use ferry_conformance::{Harness, NotifyFault, Options};

    /// Any of the four operations, so one batch can mix them.
    trait Op {
        fn wait(&mut self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + '_>>;
        fn state(&mut self) -> OperationStatus;
    }

    impl<K> Op for ferry::Operation<'_, K> {
        fn wait(&mut self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + '_>> {
            Box::pin(self.wait_for_completion())
        }

        fn state(&mut self) -> OperationStatus {
            self.status()
        }
    }

    /// A small xorshift for the schedule, independent of the world's generator.
    struct Schedule(u64);

    impl Schedule {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// 1 000 operations (reads and writes, 1 to 4 descriptors, batches in flight at once, a
    /// jittery link, some dropped and delayed notifications under a deadline) on a fresh
    /// current-thread runtime; returns the world's trace digest and the outcomes.
    fn thousand_operation_run(seed: u64) -> ((u64, u64), Vec<OperationStatus>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let world = SimWorld::builder()
                .seed(seed)
                .link(LinkConfig {
                    latency: Duration::from_micros(5),
                    jitter: Duration::from_micros(20),
                    bandwidth: 5_000_000_000,
                })
                .build();
            let h = SimHarness::with_world(world.clone());
            let deadline = Some(Duration::from_millis(50));
            let a = h
                .connector(Options {
                    deadline,
                    ..Options::named("a")
                })
                .await;
            let b = h
                .connector(Options {
                    deadline,
                    ..Options::named("b")
                })
                .await;
            let mut schedule = Schedule(seed | 1);
            let mut outcomes = Vec::new();
            let mut done = 0u64;
            while done < 1000 {
                let batch = 1 + schedule.next(8);
                if schedule.next(10) == 0 {
                    let fault = if schedule.next(2) == 0 {
                        NotifyFault::Drop
                    } else {
                        NotifyFault::Delay(Duration::from_millis(1))
                    };
                    h.fault_notifications(&b, &a, fault, 1).expect("sim faults");
                }
                let sources: Vec<Vec<u8>> = (0..batch)
                    .map(|i| pattern(1 + schedule.next(20_000) as usize, done + i))
                    .collect();
                let mut landings: Vec<Vec<u8>> =
                    sources.iter().map(|s| vec![0u8; s.len()]).collect();
                let mut passives = Vec::new();
                let mut actives = Vec::new();
                for (source, landing) in sources.iter().zip(landings.iter_mut()) {
                    let parts = 1 + schedule.next(4) as usize;
                    let chunk = source.len().div_ceil(parts);
                    if schedule.next(2) == 0 {
                        let readable = a
                            .create_readable(source.chunks(chunk).map(Descriptor::from_slice))
                            .await
                            .expect("readable");
                        let read = b
                            .begin_read(
                                readable.metadata(),
                                landing.chunks_mut(chunk).map(Descriptor::from_mut_slice),
                            )
                            .await
                            .expect("read");
                        passives.push(Box::new(readable) as Box<dyn Op>);
                        actives.push(Box::new(read) as Box<dyn Op>);
                    } else {
                        let writable = a
                            .create_writable(
                                landing.chunks_mut(chunk).map(Descriptor::from_mut_slice),
                            )
                            .await
                            .expect("writable");
                        let write = b
                            .begin_write(
                                source.chunks(chunk).map(Descriptor::from_slice),
                                writable.metadata(),
                            )
                            .await
                            .expect("write");
                        passives.push(Box::new(writable) as Box<dyn Op>);
                        actives.push(Box::new(write) as Box<dyn Op>);
                    }
                }
                for op in actives.iter_mut().chain(passives.iter_mut()) {
                    let _ = op.wait().await;
                    outcomes.push(op.state());
                }
                let all_complete = passives
                    .iter_mut()
                    .all(|p| p.state() == OperationStatus::Complete);
                drop((passives, actives));
                if all_complete {
                    assert!(
                        landings == sources,
                        "a complete batch landed the wrong bytes"
                    );
                }
                done += batch;
            }
            let stats = world.stats();
            assert_eq!(
                (stats.live_operations, stats.live_keys, stats.live_timers),
                (0, 0, 0),
                "{stats:?}"
            );
            (world.trace_digest(), outcomes)
        })
    }

    #[test]
    fn same_seed_same_trace() {
        let first = thousand_operation_run(7);
        let second = thousand_operation_run(7);
        // Three messages per operation (request, reply or data, notification), plus faults.
        assert!(
            first.0 .1 >= 2900,
            "the run delivered {} events",
            first.0 .1
        );
        assert!(
            first.1.contains(&OperationStatus::Errored),
            "faults were injected"
        );
        assert!(
            first
                .1
                .iter()
                .filter(|s| **s == OperationStatus::Complete)
                .count()
                > 1500
        );
        assert_eq!(first, second, "same seed, different trace");
        let other = thousand_operation_run(8);
        assert_ne!(first.0, other.0, "the digest ignores the seed");
    }

    #[tokio::test]
    async fn virtual_time_follows_latency_and_bandwidth() {
        let world = SimWorld::builder()
            .link(LinkConfig {
                latency: Duration::from_millis(1),
                jitter: Duration::ZERO,
                bandwidth: 1_000_000_000,
            })
            .build();
        let h = SimHarness::with_world(world.clone());
        let a = h.connector(Options::named("a")).await;
        let b = h.connector(Options::named("b")).await;
        let start = world.now();
        read_cycle(&a, &b, &[10_000_000], 1).await.expect("read");
        let elapsed = world.now() - start;
        // Request (1 ms) + 10 MB at 1 GB/s (10 ms) + reply latency (1 ms), then the
        // notification (1 ms): the passive side completes at 13 ms of virtual time.
        assert!(elapsed >= Duration::from_millis(13), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(14), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_slow_link_slows_only_that_link() {
        let world = SimWorld::new(1);
        let h = SimHarness::with_world(world.clone());
        let a = h.connector(Options::named("a")).await;
        let b = h.connector(Options::named("b")).await;
        let c = h.connector(Options::named("c")).await;
        let (na, nb) = (node_of(&world, "a#0"), node_of(&world, "b#1"));
        world.set_link(
            na,
            nb,
            LinkConfig {
                latency: Duration::from_millis(100),
                ..LinkConfig::default()
            },
        );
        let t0 = world.now();
        write_cycle(&a, &c, &[1000], 2)
            .await
            .expect("a and c: a normal link");
        let fast = world.now() - t0;
        let t1 = world.now();
        write_cycle(&a, &b, &[1000], 3)
            .await
            .expect("a and b: the slowed link");
        let slow = world.now() - t1;
        assert!(fast < Duration::from_millis(1), "{fast:?}");
        assert!(slow >= Duration::from_millis(100), "{slow:?}");
    }

    #[tokio::test]
    async fn a_partition_holds_until_healed() {
        let world = SimWorld::new(2);
        let h = SimHarness::with_world(world.clone());
        let a = h.connector(Options::named("a")).await;
        let b = h.connector(Options::named("b")).await;
        let (na, nb) = (node_of(&world, "a#0"), node_of(&world, "b#1"));
        world.partition(na, nb);
        let source = pattern(64, 4);
        let mut landing = vec![0u8; 64];
        {
            let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
            assert_eq!(
                read.wait_for_completion_timeout(Duration::from_secs(1))
                    .await,
                Err(Error::Timeout)
            );
            assert_eq!(
                readable.status(),
                OperationStatus::Initialized,
                "nothing crossed"
            );
        }
        assert!(world.stats().dropped > 0);
        world.heal(na, nb);
        read_cycle(&a, &b, &[64], 5).await.expect("healed");
    }

    #[tokio::test]
    async fn a_ten_second_deadline_passes_in_virtual_time() {
        let world = SimWorld::new(3);
        let h = SimHarness::with_world(world.clone());
        let a = h
            .connector(Options {
                deadline: Some(Duration::from_secs(10)),
                ..Options::named("a")
            })
            .await;
        let source = pattern(64, 6);
        let mut readable = a
            .create_readable([Descriptor::from_slice(&source)])
            .await
            .expect("readable");
        assert_eq!(
            readable.wait_for_completion().await,
            Err(Error::DeadlineExceeded)
        );
        assert!(world.now() >= Duration::from_secs(10));
    }

    #[tokio::test]
    async fn hostile_requests_are_refused_and_counted() {
        let world = SimWorld::new(4);
        let h = SimHarness::with_world(world.clone());
        let a = h.connector(Options::named("a")).await;
        let b = h.connector(Options::named("b")).await;
        let source = pattern(4096, 7);
        let readable = a
            .create_readable([Descriptor::from_slice(&source[..2048])])
            .await
            .expect("readable");
        // A peer that edits the metadata to reach past the offered region, or elsewhere, gets
        // an error and not a byte.
        for (shift, size) in [(0u64, 2049u64), (1, 2048), (u64::MAX / 2, 2048), (2048, 1)] {
            let mut forged = readable.metadata().clone();
            forged.descriptors[0].ptr = forged.descriptors[0].ptr.wrapping_add(shift);
            forged.descriptors[0].size = size;
            let mut landing = vec![0u8; size as usize];
            let mut read = b
                .begin_read(&forged, [Descriptor::from_mut_slice(&mut landing)])
                .await
                .expect("begin");
            let outcome = read.wait_for_completion().await;
            assert!(
                matches!(outcome, Err(Error::AccessDenied { .. })),
                "{shift} {size}: {outcome:?}"
            );
            drop(read);
            assert!(landing.iter().all(|&b| b == 0));
        }
        assert_eq!(world.stats().refused, 4);
    }

    /// Regression: dropping a Connector right after its read completed lost the notification
    /// already on its way, and the readable ended `PeerLost` instead of `Complete`.
    #[tokio::test]
    async fn a_clean_exit_delivers_what_was_sent() {
        let world = SimWorld::builder()
            .link(LinkConfig {
                latency: Duration::from_millis(5),
                ..LinkConfig::default()
            })
            .build();
        let h = SimHarness::with_world(world.clone());
        let a = h.connector(Options::named("a")).await;
        let b = h.connector(Options::named("b")).await;
        let source = pattern(4096, 9);
        let mut landing = vec![0u8; 4096];
        let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
        read.wait_for_completion().await.expect("read");
        drop((read, b));
        readable
            .wait_for_completion()
            .await
            .expect("the notification sent before the exit arrives");
        assert_eq!(landing, source);
    }

    fn node_of(world: &SimWorld, name: &str) -> ferry::sim::NodeId {
        (0..16)
            .map(ferry::sim::NodeId)
            .find(|n| world.node_name(*n).as_deref() == Some(name))
            .expect("node exists")
    }
}
