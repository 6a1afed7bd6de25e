//! `ferry-bench-ucx --suite-part`: the ucx part of `ferry bench` answers with rows that
//! ferry-bench reads back ([`Suite::absorb`]), in one process and across two, at one descriptor
//! and split. Needs the `ucx` feature (the program exists only with it); skipped where UCX
//! cannot be used.
#![cfg(feature = "ucx")]

use std::path::Path;
use std::time::Duration;

use ferry_benches::part::{self, PartRequest};
use ferry_benches::stats::IterationPlan;
use ferry_benches::suite::Suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ucx_part_answers_with_rows_ferry_bench_reads_back() {
    if let Err(why) = ferry::ucx::available() {
        println!("skipped: {why}");
        return;
    }
    let out = std::env::temp_dir().join(format!("ucx-part-test-{}.json", std::process::id()));
    let request = PartRequest {
        sizes: vec![4096, 64 << 10],
        split_sizes: vec![64 << 10],
        descriptors: vec![1, 16],
        plan: IterationPlan {
            target: Duration::from_millis(1),
            min: 2,
            max: 2,
        },
        kv_blocks: None,
        across: true,
        quick: true,
        out,
    };
    let program = Path::new(env!("CARGO_BIN_EXE_ferry-bench-ucx"));
    let args = ["--error-handling", "none"];
    let answer = part::run(program, &args, &request, Duration::from_secs(180))
        .await
        .unwrap();
    let mut suite = Suite::empty("test".into(), "now".into());
    suite.absorb(&answer).unwrap();
    // Three cells (4 KiB, 64 KiB, 64 KiB × 16), read and write, in each mode.
    assert_eq!(suite.local.len(), 6, "{:?}", suite.skipped);
    assert_eq!(suite.across.len(), 6, "{:?}", suite.skipped);
    assert!(suite.verified());
    assert!(suite.across.iter().all(|r| r.backend == "ucx"));
    let split = suite.across.iter().filter(|r| r.descriptors == 16);
    assert!(split.clone().count() == 2 && split.clone().all(|r| r.post.is_some()));
    assert!(suite
        .tables()
        .contains("| ucx | ferry | write | 4 KiB | 16 | 64 KiB |"));
}
