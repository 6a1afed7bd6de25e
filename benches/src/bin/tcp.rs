//! `ferry-bench-tcp`: ferry's tcp backend between two processes on 127.0.0.1, beside an
//! iperf3 single stream and a bare tokio TCP ping-pong measured in the same run.
//!
//! ```sh
//! cargo build --release -p ferry-benches
//! target/release/ferry-bench-tcp --markdown tcp.md --json tcp.json
//! target/release/ferry-bench-tcp --quick
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ferry_benches::baseline::{self, Iperf};
use ferry_benches::report::{meminfo, Machine, Report, Row};
use ferry_benches::stats::{micros, IterationPlan, Summary};
use ferry_benches::tcp::{self, Direction};
use ferry_benches::units::{format_size, parse_size};
use ferry_benches::{clock, Result};

/// The sizes of a full run.
const FULL_SIZES: [usize; 6] = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30];

/// The sizes of a `--quick` run.
const QUICK_SIZES: [usize; 3] = [4 << 10, 1 << 20, 16 << 20];

/// Untimed ping-pong round trips before the timed ones.
const PING_PONG_WARMUP: usize = 200;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench-tcp",
    about = "ferry's tcp backend between two processes on 127.0.0.1, beside iperf3 and a tokio \
             ping-pong measured in the same run"
)]
struct Args {
    /// Sizes to measure, comma-separated (4K, 64K, 1M, 16M, 256M, 1G or bytes)
    /// [default: 4K,64K,1M,16M,256M,1G; with --quick 4K,1M,16M].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Vec<usize>,
    /// A short run (under 30 s): 4K, 1M, 16M, few iterations, one 1-second iperf3.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the table, with the command line and the date, as markdown to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
    /// Operation time to spend per size and direction, in seconds [default: 2; --quick 0.25].
    #[arg(long)]
    seconds: Option<f64>,
    /// Fewest timed operations per size and direction.
    #[arg(long, default_value_t = 3)]
    min_iterations: usize,
    /// Most timed operations per size and direction [default: 2000; --quick 200].
    #[arg(long)]
    max_iterations: Option<usize>,
    /// Timed ping-pong round trips.
    #[arg(long, default_value_t = 10_000)]
    round_trips: usize,
    /// Seconds per iperf3 run [default: 3, run before and after; --quick 1, run once].
    #[arg(long)]
    iperf_seconds: Option<u32>,
    /// The tokio runtime of both processes.
    #[arg(long, value_enum, default_value_t = Runtime::MultiThread)]
    runtime: Runtime,
    /// Act as the passive peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
}

/// Which tokio runtime both processes run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    /// One worker thread per CPU (tokio's default for `#[tokio::main]`).
    MultiThread,
    /// Everything on the main thread: no cross-thread wake-ups inside a process.
    CurrentThread,
}

impl Runtime {
    fn flag(self) -> &'static str {
        match self {
            Runtime::MultiThread => "multi-thread",
            Runtime::CurrentThread => "current-thread",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = match args.runtime {
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry-bench-tcp: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.peer {
        return match runtime.block_on(on_worker(tcp::run_peer())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-bench-tcp --peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(on_worker(run(args))) {
        Ok(report) if report.verified() => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("ferry-bench-tcp: some transfers delivered wrong bytes");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferry-bench-tcp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` as a spawned task rather than on the thread that calls `block_on`, so that on
/// the multi-thread runtime it runs on a worker, where tasks woken by the I/O driver or by
/// each other run without a hop between threads, as a server's tasks do.
async fn on_worker<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| format!("the benchmark task panicked or was cancelled: {e}"))?
}

/// The command line as typed, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(args: Args) -> Result<Report> {
    let started = Instant::now();
    let command = command_line();
    let date = clock::utc_now();
    let sizes: Vec<usize> = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if args.quick {
        QUICK_SIZES.to_vec()
    } else {
        FULL_SIZES.to_vec()
    };
    let plan = IterationPlan {
        target: Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick {
            0.25
        } else {
            2.0
        })),
        min: args.min_iterations.max(1),
        max: args
            .max_iterations
            .unwrap_or(if args.quick { 200 } else { 2000 }),
    };
    let iperf_seconds = args.iperf_seconds.unwrap_or(if args.quick { 1 } else { 3 });

    // The active side holds a landing buffer and, while verifying, the expected bytes; the
    // peer holds one buffer: three times the size, plus room for everything else.
    let available = meminfo("MemAvailable:");
    let mut skipped = Vec::new();
    let sizes: Vec<usize> = sizes
        .into_iter()
        .filter(|&size| {
            let need = 3 * size as u64 + (1 << 30);
            match available {
                Some(have) if have < need => {
                    skipped.push((
                        size,
                        format!(
                            "needs about {} MiB free, {} MiB available",
                            need >> 20,
                            have >> 20
                        ),
                    ));
                    false
                }
                _ => true,
            }
        })
        .collect();

    let connector = tcp::connector("ferry-bench").await?;
    let mut peer = tcp::Peer::spawn(&["--runtime", args.runtime.flag()]).await?;
    eprintln!(
        "peer process {} ready; ping-pong server on {}",
        peer.pid().unwrap_or(0),
        peer.echo_addr()
    );

    let mut iperf_runs: Vec<Iperf> = Vec::new();
    let mut iperf_skipped = None;
    match baseline::iperf3(iperf_seconds).await? {
        Some(run) => {
            eprintln!("iperf3 (before): {:.3} GB/s", run.bytes_per_second() / 1e9);
            iperf_runs.push(run);
        }
        None => {
            println!("iperf3: skipped: not installed");
            iperf_skipped = Some("not installed".to_owned());
        }
    }

    let limit = Duration::from_secs(5);
    let samples =
        baseline::ping_pong(peer.echo_addr(), PING_PONG_WARMUP, args.round_trips, limit).await?;
    let ping_pong = Summary::from_samples(samples).ok_or("--round-trips must be at least 1")?;
    eprintln!(
        "ping-pong: p50 {:.1} µs, p99 {:.1} µs",
        micros(ping_pong.p50),
        micros(ping_pong.p99)
    );

    let mut rows = Vec::new();
    for &size in &sizes {
        for direction in [Direction::Read, Direction::Write] {
            let measured = tcp::measure(&connector, &mut peer, direction, size, plan).await?;
            eprintln!(
                "{} {}: {} ops, p50 {:.1} µs, p99 {:.1} µs, {:.3} GB/s{}",
                direction.name(),
                format_size(size),
                measured.summary.iterations,
                micros(measured.summary.p50),
                micros(measured.summary.p99),
                measured.summary.throughput(size) / 1e9,
                if measured.verified {
                    ""
                } else {
                    ", WRONG BYTES"
                }
            );
            rows.push(Row {
                size,
                direction: direction.name(),
                summary: measured.summary,
                verified: measured.verified,
            });
        }
    }

    if !args.quick && iperf_skipped.is_none() {
        if let Some(run) = baseline::iperf3(iperf_seconds).await? {
            eprintln!("iperf3 (after): {:.3} GB/s", run.bytes_per_second() / 1e9);
            iperf_runs.push(run);
        }
    }
    peer.exit().await?;

    let report = Report {
        command,
        date,
        machine: Machine::detect(),
        backend: "tcp",
        rows,
        skipped,
        iperf: match iperf_skipped {
            Some(why) => Err(why),
            None => Ok(iperf_runs),
        },
        ping_pong,
        wall: started.elapsed(),
    };
    println!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report)
}
