//! Regression tests for bugs found in review of the simulator and the facade; each names the
//! rule it protects.

mod sim {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use ferry::sim::{LinkConfig, NotificationFault, SimBackend, SimWorld};
    use ferry::{Connector, Descriptor, Error, OperationStatus, RemoteDescriptor};
    use ferry_conformance::rules::{read_pair, write_pair};

    async fn connector(world: &SimWorld, name: &str, cache: usize) -> Connector {
        Connector::builder()
            .worker_id(name)
            .backend(SimBackend::new(world, name).expect("runtime"))
            .registration_cache(cache)
            .build()
            .await
            .expect("builds")
    }

    fn one_ms_links() -> SimWorld {
        SimWorld::builder()
            .link(LinkConfig {
                latency: Duration::from_millis(1),
                jitter: Duration::ZERO,
                bandwidth: 1_000_000_000,
            })
            .build()
    }

    /// SPEC §3 rule 1: a write that reported `Ok` had its bytes thrown away when the writable
    /// was cancelled before the notification arrived.
    #[tokio::test]
    async fn acknowledged_write_lands_even_if_the_writable_is_cancelled() {
        let world = one_ms_links();
        let (a, b) = (
            connector(&world, "a", 0).await,
            connector(&world, "b", 0).await,
        );
        let source = vec![7u8; 4096];
        let mut landing = vec![0u8; 4096];
        {
            let (mut writable, mut write) = write_pair(&b, &a, &source, &mut landing).await;
            write
                .wait_for_completion()
                .await
                .expect("the writer was told its bytes landed");
            writable.cancel();
        }
        assert_eq!(landing, source);
    }

    /// SPEC §9: more than 64 partial writes zeroed bytes nobody wrote.
    #[tokio::test]
    async fn partial_writes_touch_only_what_they_write() {
        let world = SimWorld::new(1);
        let (a, b) = (
            connector(&world, "a", 0).await,
            connector(&world, "b", 0).await,
        );
        let mut landing = vec![0xAAu8; 256];
        let source = [0x55u8; 65];
        {
            let mut writable = a
                .create_writable([Descriptor::from_mut_slice(&mut landing)])
                .await
                .expect("writable");
            let mut scattered = writable.metadata().clone();
            let (device, base) = (
                scattered.descriptors[0].device,
                scattered.descriptors[0].ptr,
            );
            scattered.descriptors = (0..65)
                .map(|i| RemoteDescriptor {
                    device,
                    ptr: base + 2 * i,
                    size: 1,
                })
                .collect();
            let mut write = b
                .begin_write(source.chunks(1).map(Descriptor::from_slice), &scattered)
                .await
                .expect("begin");
            write.wait_for_completion().await.expect("write");
            writable.wait_for_completion().await.expect("writable");
        }
        for (i, byte) in landing.iter().enumerate() {
            let written = i % 2 == 0 && i < 130;
            assert_eq!(*byte, if written { 0x55 } else { 0xAA }, "byte {i}");
        }
    }

    /// SPEC §7: with a registration cache of 1, an operation over two regions had its first
    /// registration evicted (deregistered) while the operation was live.
    #[tokio::test]
    async fn the_cache_never_evicts_a_registration_in_use() {
        let world = SimWorld::new(1);
        let a = connector(&world, "a", 1).await;
        let (x, y) = (vec![1u8; 64], vec![2u8; 64]);
        let readable = a
            .create_readable([Descriptor::from_slice(&x), Descriptor::from_slice(&y)])
            .await
            .expect("readable");
        assert_eq!(
            world.stats().registrations,
            2,
            "a live operation's region was deregistered"
        );
        drop(readable);
        assert_eq!(
            world.stats().registrations,
            1,
            "the cache keeps one, as configured"
        );
        drop(a);
        assert_eq!(world.stats().registrations, 0);
    }

    /// SPEC §7: dropping a pinned Registration while an operation uses the pool deregistered
    /// the memory under it; deregistration now waits for the operation.
    #[tokio::test]
    async fn unpinning_waits_for_operations_in_flight() {
        let world = SimWorld::new(1);
        let a = connector(&world, "a", 0).await;
        let pool = vec![3u8; 4096];
        let pool_descriptor = Descriptor::from_slice(&pool);
        let registration = a.register([&pool_descriptor]).expect("register");
        let readable = a
            .create_readable([Descriptor::from_slice(&pool[..1024])])
            .await
            .expect("readable");
        drop(registration);
        assert_eq!(
            world.stats().registrations,
            1,
            "the pool stays registered while used"
        );
        drop(readable);
        assert_eq!(world.stats().registrations, 0);
    }

    /// `Connector::stats` could underflow when a deregistration landed between its two loads.
    #[test]
    fn stats_never_underflow() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let world = SimWorld::new(1);
        let a = runtime.block_on(connector(&world, "a", 0));
        let observer = a.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_observer = stop.clone();
        let watcher = std::thread::spawn(move || {
            while !stop_observer.load(Ordering::Relaxed) {
                let stats = observer.stats();
                assert!(stats.live_registrations <= stats.registrations, "{stats:?}");
            }
        });
        runtime.block_on(async {
            let x = vec![1u8; 64];
            for _ in 0..20_000 {
                drop(
                    a.create_readable([Descriptor::from_slice(&x)])
                        .await
                        .expect("readable"),
                );
            }
        });
        stop.store(true, Ordering::Relaxed);
        watcher.join().expect("stats never panicked");
    }

    /// Cancelled timers used to advance the virtual clock when their time came.
    #[tokio::test]
    async fn cancelled_timers_do_not_move_the_clock() {
        let world = SimWorld::new(1);
        let (a, b) = (
            connector(&world, "a", 0).await,
            connector(&world, "b", 0).await,
        );
        let (x, mut y) = (vec![1u8; 64], vec![0u8; 64]);
        {
            let (mut readable, mut read) = read_pair(&a, &b, &x, &mut y).await;
            read.wait_for_completion_timeout(Duration::from_secs(3600))
                .await
                .expect("read");
            readable.wait_for_completion().await.expect("readable");
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(world.now() < Duration::from_secs(1), "{:?}", world.now());
    }

    /// SPEC §9: after a readable ended (its peer crashed), a third node could still read it.
    #[tokio::test]
    async fn an_ended_readable_serves_no_one() {
        let world = one_ms_links();
        let a = connector(&world, "a", 0).await;
        let b_backend = SimBackend::new(&world, "b").expect("runtime");
        let b_node = b_backend.node();
        let b = Connector::builder()
            .worker_id("b")
            .backend(b_backend)
            .build()
            .await
            .expect("builds");
        let c = connector(&world, "c", 0).await;
        let x = vec![9u8; 64];
        let (mut y, mut z) = (vec![0u8; 64], vec![0u8; 64]);
        let (mut readable, mut read_b) = read_pair(&a, &b, &x, &mut y).await;
        // Let B's request be served (B becomes the peer), then crash B before the reply lands.
        while world.now() < Duration::from_micros(1500) {
            tokio::task::yield_now().await;
        }
        world.crash(b_node);
        let mut read_c = c
            .begin_read(readable.metadata(), [Descriptor::from_mut_slice(&mut z)])
            .await
            .expect("begin");
        assert_eq!(
            read_c.wait_for_completion().await,
            Err(Error::StaleMetadata)
        );
        // B's own read may have landed before the crash (virtual time jumps to the next event).
        let _ = read_b.wait_for_completion().await;
        assert!(matches!(
            readable.wait_for_completion().await,
            Err(Error::PeerLost { .. })
        ));
        drop(read_c);
        assert_eq!(z, vec![0u8; 64]);
    }

    /// The clock's driver lived on whichever runtime built the first Connector; Connectors on
    /// another runtime hung once that runtime stopped being driven.
    #[test]
    fn a_world_outlives_the_runtime_that_started_its_clock() {
        let world = SimWorld::new(1);
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _early = first.block_on(connector(&world, "early", 0));
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let outcome = second.block_on(async {
            let (a, b) = (
                connector(&world, "a", 0).await,
                connector(&world, "b", 0).await,
            );
            let (x, mut y) = (vec![1u8; 64], vec![0u8; 64]);
            let (mut readable, mut read) = read_pair(&a, &b, &x, &mut y).await;
            let outcome =
                tokio::time::timeout(Duration::from_secs(10), read.wait_for_completion()).await;
            let _ = readable.status();
            outcome
        });
        assert_eq!(outcome.expect("no hang"), Ok(()));
    }

    /// And while the first runtime is still alive but idle, parked waiters are not stranded
    /// when it goes: dropping it wakes them to restart the clock on theirs.
    #[test]
    fn waiters_survive_the_clock_runtime_shutting_down() {
        let world = SimWorld::new(2);
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _early = first.block_on(connector(&world, "early", 0));
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let world2 = world.clone();
        let (parked_tx, parked_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            second.block_on(async {
                let a = connector(&world2, "a", 0).await;
                let x = vec![1u8; 64];
                let mut readable = a
                    .create_readable([Descriptor::from_slice(&x)])
                    .await
                    .expect("readable");
                let mut wait =
                    std::pin::pin!(readable.wait_for_completion_timeout(Duration::from_millis(5)));
                let mut told = false;
                // Tell the main thread once the wait has parked (its waker is with the world).
                let parked = std::future::poll_fn(|cx| {
                    let poll = wait.as_mut().poll(cx);
                    if poll.is_pending() && !told {
                        told = true;
                        let _ = parked_tx.send(());
                    }
                    poll
                });
                tokio::time::timeout(Duration::from_secs(10), parked).await
            })
        });
        parked_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter parked");
        drop(first);
        let outcome = waiter.join().expect("thread");
        assert_eq!(outcome.expect("no hang"), Err(Error::Timeout));
    }

    /// A `Closed` overtook a delayed notification: a write that completed ended `PeerLost` on
    /// the writable's side after the writer exited cleanly.
    #[tokio::test]
    async fn a_clean_exit_does_not_overtake_a_delayed_notification() {
        let world = SimWorld::new(3);
        let a = connector(&world, "a", 0).await;
        let b_backend = SimBackend::new(&world, "b").expect("runtime");
        let b_node = b_backend.node();
        let b = Connector::builder()
            .worker_id("b")
            .backend(b_backend)
            .build()
            .await
            .expect("builds");
        world.fault_notifications(
            b_node,
            ferry::sim::NodeId(0),
            NotificationFault::Delay(Duration::from_millis(5)),
            1,
        );
        let source = vec![7u8; 64];
        let mut landing = vec![0u8; 64];
        let outcome = {
            let (mut writable, mut write) = write_pair(&b, &a, &source, &mut landing).await;
            write.wait_for_completion().await.expect("write");
            drop((write, b));
            writable.wait_for_completion().await
        };
        assert_eq!(outcome, Ok(()));
        assert_eq!(landing, source);
    }

    /// SPEC §9: a passive operation's deadline revoked nothing until its owner polled it.
    #[tokio::test]
    async fn a_deadline_revokes_access_without_the_owner_polling() {
        let world = SimWorld::new(3);
        let a = Connector::builder()
            .worker_id("a")
            .backend(SimBackend::new(&world, "a").expect("runtime"))
            .deadline(Duration::from_millis(1))
            .build()
            .await
            .expect("builds");
        let b = connector(&world, "b", 0).await;
        let x = vec![5u8; 64];
        let mut y = vec![0u8; 64];
        let mut readable = a
            .create_readable([Descriptor::from_slice(&x)])
            .await
            .expect("readable");
        let idle = b
            .create_readable([Descriptor::from_vec(vec![0; 1])])
            .await
            .expect("idle");
        // 50 ms of virtual time pass while nobody polls the readable.
        let mut idle = idle;
        assert_eq!(
            idle.wait_for_completion_timeout(Duration::from_millis(50))
                .await,
            Err(Error::Timeout)
        );
        let mut read = b
            .begin_read(readable.metadata(), [Descriptor::from_mut_slice(&mut y)])
            .await
            .expect("begin");
        assert_eq!(read.wait_for_completion().await, Err(Error::StaleMetadata));
        assert_eq!(readable.status(), OperationStatus::Errored);
        assert_eq!(readable.error(), Some(Error::DeadlineExceeded));
        drop(read);
        assert_eq!(y, vec![0u8; 64]);
    }
}
