//! Soak (issue 7): 100 000 sequential and 10 000 concurrent operations on sim and on tcp, with
//! the process's resident memory and open file descriptors measured before, during and after,
//! and required to stay flat; each backend must end holding no operation and no key.
//!
//! An operation here is one read or write *pair* (a passive and an active operation, bytes
//! verified), so the sequential phase makes 200 000 operations and each of the two concurrent
//! rounds keeps 20 000 in flight (the first sets memory's high-water mark, the second must not
//! raise it). They take seconds to minutes and time the machine, so they are ignored by
//! default; run them alone, in release, holding the bench lock:
//!
//! `flock /tmp/ferry-bench.lock cargo test --release -p ferry-conformance --test soak -- --ignored --nocapture --test-threads 1`

use std::time::Instant;

use ferry::Connector;
use ferry_conformance::rules::{read_cycle, write_cycle};
use ferry_conformance::{Harness, Options};

const SEQUENTIAL: u64 = 100_000;
const CONCURRENT: u64 = 10_000;
/// Resident memory may grow this much over the whole soak (allocator arenas, tokio's worker
/// caches) and still count as flat; a leak of even 100 bytes per operation exceeds it.
const RSS_SLACK_KIB: u64 = 16 << 10;

/// Resident set size of this process, in KiB (Linux: /proc/self/statm).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident field");
    pages * 4
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

async fn cycle(a: &Connector, b: &Connector, i: u64) {
    let size = [1 + (i as usize * 7919) % 4096];
    let done = if i % 2 == 0 {
        read_cycle(a, b, &size, i).await
    } else {
        write_cycle(a, b, &size, i).await
    };
    done.unwrap_or_else(|e| panic!("operation pair {i} failed: {e}"));
}

/// `pool_fds`: descriptors the backend may keep open between operations by design (tcp's idle
/// connections); fds must come back to within it of the start, and be the same after every
/// concurrent round.
async fn soak<H: Harness>(h: H, backend: &str, pool_fds: usize) {
    let a = h.connector(Options::named("a")).await;
    let b = h.connector(Options::named("b")).await;
    // Warm up allocator and connection caches before the baseline.
    for i in 0..1_000 {
        cycle(&a, &b, i).await;
    }
    let (rss0, fds0) = (rss_kib(), open_fds());
    let mut samples = vec![(0u64, rss0, fds0)];
    let started = Instant::now();
    for i in 0..SEQUENTIAL {
        cycle(&a, &b, i).await;
        if (i + 1) % 25_000 == 0 {
            samples.push((i + 1, rss_kib(), open_fds()));
        }
    }
    let sequential = started.elapsed();
    // Two rounds of CONCURRENT pairs in flight at once. The first sets the high-water mark
    // (the allocator keeps what 20 000 live operations needed); the second must not add to it.
    let mut rounds = Vec::new();
    let round_count = std::env::var("FERRY_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2u64)
        .max(2);
    for round in 0..round_count {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CONCURRENT {
            let (a, b) = (a.clone(), b.clone());
            let n = SEQUENTIAL + round * CONCURRENT + i;
            tasks.spawn(async move { cycle(&a, &b, n).await });
        }
        let peak_fds = open_fds();
        while let Some(done) = tasks.join_next().await {
            done.expect("a concurrent pair panicked");
        }
        rounds.push((started.elapsed(), rss_kib(), open_fds(), peak_fds));
    }
    let (seq_rss, seq_fds) = (
        samples.last().expect("sampled").1,
        samples.last().expect("sampled").2,
    );
    let (concurrent, rss_high, _, peak_fds) = rounds[0];
    let (concurrent2, rss1, fds1, _) = *rounds.last().expect("two rounds");
    let all_rounds: Vec<(u64, usize)> = rounds.iter().map(|r| (r.1, r.2)).collect();
    samples.push((SEQUENTIAL + CONCURRENT, rss_high, rounds[0].2));
    samples.push((SEQUENTIAL + round_count * CONCURRENT, rss1, fds1));
    let live = h.live_state().ok();
    println!(
        "soak {backend}: {SEQUENTIAL} sequential pairs in {:.2} s ({:.1} µs/pair): rss {rss0} -> \
         {seq_rss} KiB, fds {fds0} -> {seq_fds}; {round_count} rounds of {CONCURRENT} concurrent \
         pairs (first {:.2} s, last {:.2} s): rss {rss_high} KiB after the first (high-water), \
         {rss1} KiB after the last ({:+} KiB), fds {fds1} (peak in flight {peak_fds}); per round \
         (rss KiB, fds): {all_rounds:?}; samples (pairs, rss KiB, fds): {samples:?}; backend \
         holds afterwards: {live:?}",
        sequential.as_secs_f64(),
        sequential.as_secs_f64() * 1e6 / SEQUENTIAL as f64,
        concurrent.as_secs_f64(),
        concurrent2.as_secs_f64(),
        rss1 as i64 - rss_high as i64,
    );
    assert!(
        seq_rss <= rss0 + RSS_SLACK_KIB,
        "{backend}: resident memory grew from {rss0} to {seq_rss} KiB over the sequential phase"
    );
    assert!(
        rss1 <= rss_high + RSS_SLACK_KIB,
        "{backend}: a second concurrent round grew resident memory from {rss_high} to {rss1} KiB"
    );
    assert_eq!(
        seq_fds, fds0,
        "{backend}: file descriptors leaked (sequential)"
    );
    assert!(
        rounds.iter().all(|r| r.2 == rounds[0].2),
        "{backend}: file descriptors grew from round to round: {all_rounds:?}"
    );
    assert!(
        fds1 <= fds0 + pool_fds,
        "{backend}: {fds1} descriptors open after the concurrent rounds, {fds0} before, more \
         than the {pool_fds} idle connections may hold"
    );
    if let Some(live) = live {
        assert_eq!((live.operations, live.keys), (0, 0), "{backend}: {live:?}");
    }
    let (sa, sb) = (a.stats(), b.stats());
    let made = 2 * (1_000 + SEQUENTIAL + round_count * CONCURRENT);
    assert_eq!(sa.operations + sb.operations, made);
    assert_eq!(
        sa.completed + sb.completed,
        made,
        "every operation completed"
    );
}

#[cfg(feature = "sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes of machine time; run it alone (see the file's docs)"]
async fn sim_soak() {
    soak(ferry_conformance::sim::SimHarness::new(), "sim", 0).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes of machine time; run it alone (see the file's docs)"]
async fn tcp_soak() {
    // Idle connections kept per peer, each direction, each with its two ends in this process,
    // each end a socket and the registry's duplicate of it.
    let pool_fds = 2 * 2 * 2 * ferry::tcp::TcpConfig::default().max_idle_per_peer;
    soak(ferry_conformance::tcp::TcpHarness::new(), "tcp", pool_fds).await;
}
