//! `ferry-bench-tcp`: ferry's tcp backend between two processes on 127.0.0.1, beside an
//! iperf3 single stream and a bare tokio TCP ping-pong measured in the same run.
//!
//! ```sh
//! cargo build --release -p ferry-benches
//! target/release/ferry-bench-tcp --markdown tcp.md --json tcp.json
//! target/release/ferry-bench-tcp --quick
//! target/release/ferry-bench-tcp --in-flight 1    # one operation at a time only
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ferry_benches::baseline::PONG_BYTES;
use ferry_benches::baseline::{self, Iperf};
use ferry_benches::cli::{self, command_line, on_worker, RunArgs};
use ferry_benches::peer::{in_flight_widths, parse_in_flight};
use ferry_benches::report::{Machine, Report, Row, THROUGHPUT_FROM};
use ferry_benches::stats::{micros, Summary};
use ferry_benches::tcp::{self, Direction};
use ferry_benches::units::format_size;
use ferry_benches::{clock, Result};

/// The most bytes a batch of operations in flight may move (size × in flight): sizes above
/// it are measured one operation at a time only.
const IN_FLIGHT_BYTES: usize = 128 << 20;

/// Untimed ping-pong round trips before the timed ones.
const PING_PONG_WARMUP: usize = 200;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench-tcp",
    about = "ferry's tcp backend between two processes on 127.0.0.1, beside iperf3 and a tokio \
             ping-pong measured in the same run"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Timed ping-pong round trips.
    #[arg(long, default_value_t = 10_000)]
    round_trips: usize,
    /// Seconds per iperf3 run [default: 3, run before and after; --quick 1, run once].
    #[arg(long)]
    iperf_seconds: Option<u32>,
    /// Seconds of an iperf3 run between consecutive throughput rows (sizes from 1 MiB), so
    /// each such row is judged against the runs just before and just after it rather than
    /// the whole run's; 0 turns it off [default: 1; --quick 0].
    #[arg(long)]
    bracket_seconds: Option<u32>,
    /// Operations in flight at once for the extra batch rows: for every size where size × N
    /// ≤ 128 MiB, batches of N operations (each on its own buffer, begun together, awaited
    /// together) are timed besides one operation at a time. 1 measures one at a time only.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = parse_in_flight)]
    in_flight: usize,
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

/// The numbers in flight to measure `size` at: 1, and `in_flight` when it is above 1 and a
/// batch moves at most [`IN_FLIGHT_BYTES`].
fn widths(size: usize, in_flight: usize) -> Vec<usize> {
    in_flight_widths(size, in_flight, IN_FLIGHT_BYTES)
}

async fn run(args: Args) -> Result<Report> {
    let started = Instant::now();
    let command = command_line();
    let date = clock::utc_now();
    let sizes = args.run.sizes();
    let plan = args.run.plan();
    let iperf_seconds = args
        .iperf_seconds
        .unwrap_or(if args.run.quick { 1 } else { 3 });

    // The active side holds a landing buffer (N with N in flight) and, while verifying, the
    // expected bytes of one; the peer holds one buffer (or N): at most three times the
    // largest of size and batch, plus room for everything else.
    let (sizes, skipped) = cli::fitting(sizes, |size| {
        let held = widths(size, args.in_flight)
            .into_iter()
            .map(|n| size.saturating_mul(n))
            .max()
            .unwrap_or(size);
        3 * held as u64
    });

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

    let bracket_seconds = match iperf_skipped {
        Some(_) => 0,
        None => args
            .bracket_seconds
            .unwrap_or(if args.run.quick { 0 } else { 1 }),
    };
    let mut ping_pong_around = Vec::new();
    // The iperf3 run that ended just before the next row, if that row is bracketed.
    let mut last_bracket: Option<f64> = None;
    let mut rows = Vec::new();
    for &size in &sizes {
        for in_flight in widths(size, args.in_flight) {
            for direction in [Direction::Read, Direction::Write] {
                let bracketed = bracket_seconds > 0 && size >= THROUGHPUT_FROM;
                if bracketed && last_bracket.is_none() {
                    last_bracket = bracket(bracket_seconds).await?;
                }
                let measured =
                    tcp::measure(&connector, &mut peer, direction, size, in_flight, plan).await?;
                eprintln!(
                    "{} {} × {in_flight} in flight: {} {}, p50 {:.1} µs, p99 {:.1} µs, \
                     {:.3} GB/s{}",
                    direction.name(),
                    format_size(size),
                    measured.summary.iterations,
                    if in_flight == 1 { "ops" } else { "batches" },
                    micros(measured.summary.p50),
                    micros(measured.summary.p99),
                    measured.throughput() / 1e9,
                    if measured.verified {
                        ""
                    } else {
                        ", WRONG BYTES"
                    }
                );
                let mut iperf_around = Vec::new();
                if bracketed {
                    let after = bracket(bracket_seconds).await?;
                    iperf_around.extend(last_bracket.into_iter().chain(after));
                    last_bracket = after;
                } else {
                    last_bracket = None;
                }
                rows.push(Row {
                    size,
                    in_flight,
                    direction: direction.name(),
                    summary: measured.summary,
                    verified: measured.verified,
                    iperf_around,
                });
                if size == PONG_BYTES && in_flight == 1 && direction == Direction::Write {
                    // The latency rows are done: a ping-pong after them, to pair with the one
                    // before.
                    let samples = baseline::ping_pong(
                        peer.echo_addr(),
                        PING_PONG_WARMUP,
                        args.round_trips,
                        limit,
                    )
                    .await?;
                    let after =
                        Summary::from_samples(samples).ok_or("--round-trips must be at least 1")?;
                    eprintln!(
                        "ping-pong after the latency rows: p50 {:.1} µs",
                        micros(after.p50)
                    );
                    ping_pong_around = vec![ping_pong.clone(), after];
                }
            }
        }
    }

    if !args.run.quick && iperf_skipped.is_none() {
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
        ping_pong_around,
        wall: started.elapsed(),
    };
    println!("{}", report.table());
    args.run
        .write_outputs(|| report.json(), || report.markdown())?;
    Ok(report)
}

/// One iperf3 run of `seconds` between two rows: its rate in bytes per second.
async fn bracket(seconds: u32) -> Result<Option<f64>> {
    let rate = baseline::iperf3(seconds)
        .await?
        .map(|run| run.bytes_per_second());
    if let Some(rate) = rate {
        eprintln!("iperf3 (between rows): {:.3} GB/s", rate / 1e9);
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_up_to_128_mib() {
        assert_eq!(widths(4 << 10, 8), vec![1, 8]);
        assert_eq!(widths(16 << 20, 8), vec![1, 8]);
        assert_eq!(widths(256 << 20, 8), vec![1]);
        assert_eq!(widths(64 << 20, 4), vec![1]);
        assert_eq!(widths(1 << 20, 1), vec![1]);
        assert_eq!(widths(usize::MAX, 8), vec![1]);
    }

    #[test]
    fn in_flight_is_at_least_one() {
        assert_eq!(parse_in_flight("8"), Ok(8));
        assert_eq!(parse_in_flight("1"), Ok(1));
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_in_flight(bad).is_err(), "{bad}");
        }
    }
}
