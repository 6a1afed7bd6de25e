//! `ferry-bench-ucx`: ferry's ucx backend between two processes, beside `ucx_perftest`
//! (`ucp_put_bw`, `ucp_put_lat`, `ucp_am_lat`) in the same run, under the same `UCX_*`
//! environment. Needs the `ucx` feature of ferry-benches.
//!
//! ```sh
//! cargo build --release -p ferry-benches --features ucx --bin ferry-bench-ucx
//! UCX_TLS=posix,cma,self target/release/ferry-bench-ucx --error-handling peer-if-supported
//! UCX_TLS=tcp target/release/ferry-bench-ucx --sizes 4K,64K,1M,16M
//! target/release/ferry-bench-ucx --quick
//! target/release/ferry-bench-ucx --in-flight 1    # one operation at a time only
//! ```
//!
//! Where UCX cannot be used it prints `skipped: <reason>` and exits 0
//! (scripts/install-ucx.sh installs it).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry::ucx::ErrorHandling;
use ferry_benches::cli::{self, block_on_worker, command_line, RunArgs};
use ferry_benches::peer::{in_flight_widths, parse_in_flight, Direction};
use ferry_benches::report::Machine;
use ferry_benches::stats::{gigabytes, micros, IterationPlan};
use ferry_benches::ucx::perftest::{self, PerfRun};
use ferry_benches::ucx::report::{UcxReport, LATENCY_SIZE};
use ferry_benches::ucx::{self, Bench};
use ferry_benches::units::format_size;
use ferry_benches::{clock, Result};

/// The size of ferry's completion notification: a notification key's text (a UUID).
const NOTIFICATION_BYTES: usize = 36;

/// The most bytes a batch of operations in flight may move (per process, its buffers are held
/// at once).
const IN_FLIGHT_BYTES: usize = 128 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench-ucx",
    about = "ferry's ucx backend between two processes, beside ucx_perftest in the same run \
             under the same UCX_* environment"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Directions to measure with ferry, comma-separated: write (puts, compared with
    /// ucp_put_bw and the latency bound) and read (gets, no target).
    #[arg(long, value_delimiter = ',', value_parser = parse_direction, default_value = "write")]
    directions: Vec<Direction>,
    /// Operations in flight: for every size whose batch of N moves at most 128 MiB, batches
    /// of N writes (each on its own buffer, begun together, awaited together) are timed
    /// besides one write at a time, as ucp_put_bw keeps puts in flight. 1: one at a time only.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = parse_in_flight)]
    in_flight: usize,
    /// Bytes each ucp_put_bw run moves, about (8 to 20 000 iterations) [default: 2 GiB;
    /// --quick 256 MiB].
    #[arg(long, value_parser = ferry_benches::units::parse_size)]
    perftest_bytes: Option<usize>,
    /// Longest one ucx_perftest run may take, in seconds.
    #[arg(long, default_value_t = 120)]
    perftest_limit: u64,
    /// How ferry's endpoints (both processes') treat a lost peer: peer (UCX's peer error mode,
    /// ferry's default; it cannot connect under UCX_TLS=posix,cma,self), peer-if-supported
    /// (peer error mode where a transport supports it, none where none does), or none (every
    /// transport, shared memory under UCX's defaults too, as ucx_perftest uses).
    #[arg(long, default_value = "peer", value_parser = ucx::parse_error_handling)]
    error_handling: ErrorHandling,
    /// How long a task awaiting an operation polls the worker itself, in microseconds, on both
    /// sides (UcxConfig::owner_spin); 0 leaves everything to the progress threads.
    #[arg(long, default_value_t = 1000)]
    owner_spin_us: u64,
    /// Act as the passive peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
    /// Measure ferry bench's ucx part as this JSON request says (used by ferry-bench).
    #[arg(long, hide = true, value_name = "REQUEST")]
    suite_part: Option<String>,
}

/// Parses one `--directions` entry.
fn parse_direction(text: &str) -> Result<Direction, String> {
    match text.trim() {
        "read" => Ok(Direction::Read),
        "write" => Ok(Direction::Write),
        other => Err(format!("{other:?}: expected read or write")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = ferry::ucx::UcxConfig {
        error_handling: args.error_handling,
        owner_spin: Duration::from_micros(args.owner_spin_us),
    };
    if args.peer {
        if let Err(e) = block_on_worker(ucx::run_peer(config)) {
            eprintln!("ferry-bench-ucx --peer: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    if let Some(request) = &args.suite_part {
        if let Err(e) = ferry_benches::part::serve_ucx(request, args.error_handling) {
            eprintln!("ferry-bench-ucx --suite-part: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    if let Err(why) = ferry::ucx::available_with(&config) {
        println!("skipped: {why}");
        return ExitCode::SUCCESS;
    }
    if perftest::program().is_none() {
        println!("skipped: ucx_perftest is not installed (apt-get install ucx-utils)");
        return ExitCode::SUCCESS;
    }
    let report = match block_on_worker(run(args, config)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ferry-bench-ucx: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failure = match (&report.ferry_error, report.verified()) {
        (Some(why), _) => format!("ferry failed: {why}"),
        (None, false) => "some transfers delivered wrong bytes".into(),
        (None, true) => return ExitCode::SUCCESS,
    };
    eprintln!("ferry-bench-ucx: {failure}");
    ExitCode::FAILURE
}

/// Runs one ucx_perftest test and prints what it found.
async fn perf(
    test: &str,
    size: usize,
    iterations: (u64, u64),
    limit: Duration,
) -> Result<PerfRun, String> {
    let run = perftest::run(test, size, iterations.0, iterations.1, &[], limit)
        .await
        .map_err(|e| e.to_string());
    match &run {
        Ok(r) => eprintln!(
            "{test} {}: p50 {:.3} µs, {:.3} GB/s",
            format_size(size),
            r.p50_us,
            gigabytes(r.bytes_per_second)
        ),
        Err(why) => eprintln!("{test} {}: {why}", format_size(size)),
    }
    run
}

async fn run(args: Args, config: ferry::ucx::UcxConfig) -> Result<UcxReport> {
    let started = Instant::now();
    let command = command_line();
    let date = clock::utc_now();
    let plan = args.run.plan();
    let limit = Duration::from_secs(args.perftest_limit.max(1));
    let perftest_bytes =
        args.perftest_bytes
            .unwrap_or(if args.run.quick { 256 << 20 } else { 2 << 30 }) as u64;
    // Per process at most the buffers of a size's widest batch and, while verifying a read,
    // its expected bytes; ucx_perftest holds two more of its own.
    let widths = |size: usize| in_flight_widths(size, args.in_flight, IN_FLIGHT_BYTES);
    let (sizes, skipped) = cli::fitting(args.run.sizes(), |size| {
        let held = widths(size).into_iter().max().unwrap_or(1);
        4 * size.saturating_mul(held) as u64
    });

    let latency_runs = if args.run.quick { 2_000 } else { 20_000 };
    let latency = (latency_runs, latency_runs / 10);
    let put_lat = perf("ucp_put_lat", LATENCY_SIZE, latency, limit).await;
    let am_lat = perf("ucp_am_lat", NOTIFICATION_BYTES, latency, limit).await;

    let (mut bench, mut ferry_error) = match Bench::start(config).await {
        Ok(bench) => {
            eprintln!("peer process {} ready", bench.peer_pid().unwrap_or(0));
            (Some(bench), None)
        }
        Err(e) => (None, Some(format!("could not start: {e}"))),
    };
    let mut rows = Vec::new();
    let mut put_bw = Vec::new();
    for &size in &sizes {
        // The baseline first, then ferry, size by size, so a slow spell hits both alike.
        let iterations = perftest::bandwidth_iterations(size, perftest_bytes);
        put_bw.push((size, perf("ucp_put_bw", size, iterations, limit).await));
        let Some(b) = bench.as_mut() else { continue };
        for (direction, in_flight) in args
            .directions
            .iter()
            .flat_map(|&d| widths(size).into_iter().map(move |n| (d, n)))
        {
            // The judged latency row runs as many writes as ucp_put_lat, after a tenth as many
            // untimed ones as ucp_put_lat does, so both are measured warm (the first thousands
            // of operations on this VM are slower than the rest).
            let latency_row = size == LATENCY_SIZE && in_flight == 1;
            let (row_plan, warm_up) = match (latency_row, args.run.max_iterations) {
                (true, None) => (
                    IterationPlan {
                        max: plan.max.max(latency.0 as usize),
                        ..plan
                    },
                    latency.1 as usize,
                ),
                _ => (plan, 0),
            };
            match b
                .measure(size, direction, in_flight, row_plan, warm_up)
                .await
            {
                Ok(m) => {
                    eprintln!(
                        "ferry {} {} ×{in_flight}: {} ops, p50 {:.1} µs (active {:.1}), p99 {:.1} µs, {:.3} GB/s{}",
                        direction.name(),
                        format_size(size),
                        m.row.summary.iterations,
                        micros(m.row.summary.p50),
                        micros(m.active.p50),
                        micros(m.row.summary.p99),
                        gigabytes(m.row.throughput()),
                        if m.row.verified { "" } else { ", WRONG BYTES" }
                    );
                    rows.push(m);
                }
                Err(e) => {
                    let why = format!(
                        "{} {} ×{in_flight}: {e}",
                        direction.name(),
                        format_size(size)
                    );
                    eprintln!("ferry {why}");
                    ferry_error = Some(why);
                    break;
                }
            }
        }
        if ferry_error.is_some() {
            // The peer may be stuck in the failed operation: stop using it.
            bench = None;
        }
    }
    if let Some(b) = bench {
        if let Err(e) = b.exit().await {
            eprintln!("the peer after the run (figures complete): {e}");
        }
    }

    let report = UcxReport {
        command,
        date,
        machine: Machine::detect(),
        environment: std::env::vars()
            .filter(|(name, _)| name.starts_with("UCX_"))
            .collect(),
        rows,
        ferry_error,
        put_bw,
        put_lat,
        am_lat,
        skipped,
        wall: started.elapsed(),
    };
    println!("{}", report.table());
    args.run
        .write_outputs(|| report.json(), || report.markdown())?;
    Ok(report)
}
