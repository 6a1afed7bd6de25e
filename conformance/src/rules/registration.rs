//! SPEC §7: pinned pools, the registration cache, and registrations released with their
//! operations.

use ferry::Descriptor;

use super::*;

/// Without a cache, an operation's registrations end with it.
pub async fn registration_released_with_operations<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    for i in 0..20 {
        read_cycle(&a, &b, &[4096, 100], 600 + i)
            .await
            .expect("read");
    }
    for c in [&a, &b] {
        let stats = c.stats();
        assert_eq!(stats.live_registrations, 0, "{stats:?}");
        assert_eq!(stats.registrations, 40, "{stats:?}");
    }
    Ok(())
}

/// A pool registered once serves every operation inside it: cache hits, no new registration.
pub async fn registration_pinned_pool_is_reused<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let pool = pattern(1 << 20, 610);
    let pool_descriptor = Descriptor::from_slice(&pool);
    let registration = a.register([&pool_descriptor]).expect("register");
    assert_eq!(registration.len(), 1);
    let before = a.stats();
    for block in 0..16 {
        let chunk = &pool[block * 4096..(block + 1) * 4096];
        let mut readable = a
            .create_readable([Descriptor::from_slice(chunk)])
            .await
            .expect("readable");
        let mut landing = vec![0u8; 4096];
        let mut read = b
            .begin_read(
                readable.metadata(),
                [Descriptor::from_mut_slice(&mut landing)],
            )
            .await
            .expect("begin");
        let (done_read, done_readable) = both(&mut read, &mut readable).await;
        done_read.expect("read");
        done_readable.expect("readable");
        drop(read);
        assert_eq!(landing, chunk);
    }
    let after = a.stats();
    assert_eq!(
        after.registrations, before.registrations,
        "no per-operation registration"
    );
    assert_eq!(after.cache.hits - before.cache.hits, 16);
    drop(registration);
    assert_eq!(a.stats().live_registrations, 0);
    Ok(())
}

/// The registration cache reuses registrations across operations, range-aware and bounded.
pub async fn registration_cache_hits_and_bounds<H: Harness>(h: H) -> Outcome {
    let a = h
        .connector(Options {
            registration_cache: 4,
            ..Options::named("a")
        })
        .await;
    let b = h.connector(Options::named("b")).await;
    let buffer = pattern(64 << 10, 620);
    for round in 0..10 {
        let whole = round % 2 == 0;
        let slice = if whole {
            &buffer[..]
        } else {
            &buffer[4096..8192]
        };
        let mut readable = a
            .create_readable([Descriptor::from_slice(slice)])
            .await
            .expect("readable");
        let mut landing = vec![0u8; slice.len()];
        let mut read = b
            .begin_read(
                readable.metadata(),
                [Descriptor::from_mut_slice(&mut landing)],
            )
            .await
            .expect("begin");
        let (done_read, done_readable) = both(&mut read, &mut readable).await;
        done_read.expect("read");
        done_readable.expect("readable");
    }
    let stats = a.stats();
    assert_eq!(stats.cache.misses, 1, "{stats:?}");
    assert_eq!(stats.cache.hits, 9, "{stats:?}");
    assert_eq!(stats.registrations, 1);
    assert_eq!(stats.live_registrations, 1, "the cache keeps it");
    let distinct: Vec<Vec<u8>> = (0..8).map(|i| pattern(100, 630 + i)).collect();
    for d in &distinct {
        let readable = a
            .create_readable([Descriptor::from_slice(d)])
            .await
            .expect("readable");
        drop(readable);
    }
    assert!(a.stats().live_registrations <= 4, "{:?}", a.stats());
    assert!(a.stats().cache.evictions >= 5, "{:?}", a.stats());
    Ok(())
}
