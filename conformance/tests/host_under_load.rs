//! A backend host under load (see `ferry_conformance::remote`). Its own test binary: the
//! threads it spins on every CPU must not run beside the suite's rules, some of which wait
//! against deadlines.

use ferry_conformance::remote::{Placement, ProcessHarness};

const HOST: &str = env!("CARGO_BIN_EXE_ferry-backend-host");

/// A backend host drops a transfer before it reports the transfer's end, so a count taken once
/// both sides are seen complete finds nothing live (CI once counted the last operation of
/// `completion_no_accumulation` still alive: the host reported the end, then dropped).
/// Threads spinning on every CPU meanwhile widen the window between the two, as a loaded CI
/// machine did: without them, 2 000 operations here did not show it.
#[tokio::test(flavor = "current_thread")]
async fn a_host_counts_an_ended_transfer_gone() {
    use ferry_conformance::{rules, Harness, LiveState};

    let _load = Load::on_every_cpu();
    let h = ProcessHarness::new(HOST, Placement::FirstRemote);
    let (a, b) = rules::pair(&h).await;
    for i in 0..2_000 {
        rules::read_cycle(&a, &b, &[64], i).await.expect("read");
        let live = h.live_state().expect("the tcp host counts");
        let nothing = LiveState {
            operations: 0,
            keys: 0,
        };
        assert_eq!(live, nothing, "after operation {i}");
    }
}

/// Threads that keep every CPU busy until dropped.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn on_every_cpu() -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.drain(..).for_each(|t| {
            let _ = t.join();
        });
    }
}
