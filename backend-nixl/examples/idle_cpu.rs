//! Measures the CPU the backend's progress thread uses while nothing moves: with no operation,
//! and with one passive operation waiting for a peer that never comes.
//!
//! ```text
//! cargo run --release -p ferry-backend-nixl --example idle_cpu [MAX_POLL_INTERVAL_US]
//! ```

use std::time::{Duration, Instant};

use ferry_backend_nixl::{NixlBackend, NixlConfig};
use ferry_core::{Backend, Descriptor, OperationKind};

/// This process's user + system CPU time, from /proc/self/stat (clock ticks of 10 ms).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn share(spent: Duration, over: Duration) -> f64 {
    100.0 * spent.as_secs_f64() / over.as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = NixlConfig::named(format!("idle-{}", std::process::id()));
    if let Some(us) = std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        config.max_poll_interval = Duration::from_micros(us);
    }
    let backend = NixlBackend::new(config)?;
    let window = Duration::from_secs(5);

    let (start, t0) = (cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let idle = share(cpu() - start, t0.elapsed());

    let buffer = vec![0u8; 4096];
    let local = [Descriptor::from_slice(&buffer)];
    let registration = backend.register(local[0].region())?;
    let exposed = backend
        .expose(OperationKind::Read, backend.new_key(), &local, None)
        .await?;
    let (start, t0) = (cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let waiting = share(cpu() - start, t0.elapsed());
    drop(exposed);
    backend.deregister(registration);

    println!("progress thread CPU over {window:?}: idle {idle:.1} % of a core; one passive operation waiting {waiting:.1} % of a core");
    Ok(())
}
