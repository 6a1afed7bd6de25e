//! `ferry-bench-nixl`: ferry's nixl backend between two processes, beside a raw nixl-sys loop
//! doing the same transfers between the same two processes, in the same run.
//!
//! ```sh
//! cargo build --release -p ferry-benches
//! target/release/ferry-bench-nixl --markdown nixl.md --json nixl.json
//! target/release/ferry-bench-nixl --quick
//! target/release/ferry-bench-nixl --sizes 4K --paths raw,ferry
//! ```
//!
//! Where `libnixl_capi.so` cannot be loaded it prints `skipped: <reason>` and exits 0
//! (scripts/install-nixl.sh installs NIXL).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ferry_benches::cli::{self, command_line, on_worker, RunArgs};
use ferry_benches::nixl::raw::Polling;
use ferry_benches::nixl::report::{environment, NixlReport};
use ferry_benches::nixl::{self, Bench, Measured, Path, Sources};
use ferry_benches::peer::Direction;
use ferry_benches::report::Machine;
use ferry_benches::stats::{gigabytes, micros};
use ferry_benches::units::{format_size, parse_size};
use ferry_benches::{clock, Result};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench-nixl",
    about = "ferry's nixl backend between two processes, beside a raw nixl-sys loop doing the \
             same transfers between the same two processes, in the same run"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// The paths to measure, comma-separated: raw (nixl-sys by hand, memory registered once),
    /// raw-per-op (the same, both sides registering their memory per operation; not judged),
    /// ferry (memory registered per operation, ferry's and Dynamo's default), ferry-cached (a
    /// registration cache on both sides). Both ferry paths are judged against raw.
    #[arg(long, value_delimiter = ',', value_parser = parse_path, default_value = "raw,raw-per-op,ferry,ferry-cached")]
    paths: Vec<Path>,
    /// Rounds the paths alternate in, each running its share of the operations
    /// [default: 4; --quick 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// The size of the cycle row (create_readable on the peer + begin_read + both complete).
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    cycle_size: usize,
    /// Leave out the cycle row.
    #[arg(long)]
    no_cycle: bool,
    /// Leave out the same cycle between two Dynamo Python workers (measured when the venv of
    /// scripts/install-dynamo-venv.sh is there).
    #[arg(long)]
    no_dynamo: bool,
    /// How the raw loop polls NIXL: backoff (the target polls back to back for 1 ms, then
    /// every 100 µs, as a ferry owner's window and then its progress thread do by default; the
    /// initiator polls back to back, yielding the CPU), yield (both sides poll back to back,
    /// yielding), or spin.
    #[arg(long, value_parser = parse_polling, default_value = "backoff")]
    raw_polling: Polling,
    /// Which memory ferry's timed operations send from: shared (the raw loop's registered
    /// buffers, so both paths move the same source bytes) or own (ferry's pattern buffers).
    /// Warm-ups always use ferry's own, whose bytes are checked against their pattern.
    #[arg(long, value_parser = parse_sources, default_value = "shared")]
    ferry_sources: Sources,
    /// Act as the passive peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
}

/// Parses `--raw-polling`.
fn parse_polling(text: &str) -> Result<Polling, String> {
    Polling::from_key(text).ok_or_else(|| format!("{text:?}: expected backoff, yield or spin"))
}

/// Parses `--ferry-sources`.
fn parse_sources(text: &str) -> Result<Sources, String> {
    Sources::from_key(text).ok_or_else(|| format!("{text:?}: expected shared or own"))
}

/// Parses one `--paths` entry.
fn parse_path(text: &str) -> Result<Path, String> {
    Path::from_key(text)
        .ok_or_else(|| format!("{text:?}: expected raw, raw-per-op, ferry or ferry-cached"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry-bench-nixl: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.peer {
        return match runtime.block_on(on_worker(nixl::run_peer(args.raw_polling))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-bench-nixl --peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(why) = ferry::nixl::available(None) {
        println!("skipped: {why}");
        return ExitCode::SUCCESS;
    }
    match runtime.block_on(on_worker(run(args))) {
        Ok(report) if report.verified() => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("ferry-bench-nixl: some transfers delivered wrong bytes");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferry-bench-nixl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one measured row as it comes.
fn progress(label: &str, m: &Measured) {
    eprintln!(
        "{label} {} {} {}: {} ops, p50 {:.1} µs (active {:.1}), p99 {:.1} µs, {:.3} GB/s{}",
        m.path.key(),
        m.direction.name(),
        format_size(m.size),
        m.both.iterations,
        micros(m.both.p50),
        micros(m.active.p50),
        micros(m.both.p99),
        gigabytes(m.throughput()),
        if m.verified { "" } else { ", WRONG BYTES" }
    );
}

/// The most timed operations per row of a full run, when `--max-iterations` is not given: the
/// rows up to 1 MiB then run for their whole time (about 2 s per path) rather than stopping at
/// the shared default of 2000 operations. At 1 MiB 2000 operations take about 0.2 s, and one
/// stall of a few milliseconds moved a path's mean by several percent, which is the size of
/// the throughput target's margin.
const FULL_RUN_MOST: usize = 20_000;

async fn run(args: Args) -> Result<NixlReport> {
    let started = Instant::now();
    let command = command_line();
    let date = clock::utc_now();
    let sizes = args.run.sizes();
    let mut plan = args.run.plan();
    if args.run.max_iterations.is_none() && !args.run.quick {
        plan.max = FULL_RUN_MOST;
    }
    let rounds = args
        .rounds
        .unwrap_or(if args.run.quick { 2 } else { 4 })
        .max(1);
    let mut paths: Vec<Path> = Vec::new();
    for path in &args.paths {
        if !paths.contains(path) {
            paths.push(*path);
        }
    }

    // Per process at most three buffers of a size (ferry's, the raw one and the one the raw
    // loop registers per operation) and, on the active side while verifying a read, the
    // expected bytes of one: seven in all, plus room.
    let (sizes, skipped) = cli::fitting(sizes, |size| 7 * size as u64);

    let mut bench = Bench::start(args.raw_polling).await?;
    eprintln!("peer process {} ready", bench.peer_pid().unwrap_or(0));

    let mut rows = Vec::new();
    for &size in &sizes {
        for direction in [Direction::Read, Direction::Write] {
            let measured = bench
                .measure(size, direction, &paths, args.ferry_sources, plan, rounds)
                .await?;
            for m in &measured {
                progress("", m);
            }
            rows.extend(measured);
        }
    }
    let cycle = if args.no_cycle {
        None
    } else {
        let cycle = bench.measure_cycle(args.cycle_size, plan).await?;
        progress("cycle", &cycle);
        Some(cycle)
    };
    // The peer leaves after the figures are in: a failure there is reported after the
    // report is printed and written, not instead of it.
    let exited = bench.exit().await;
    let dynamo_cycle = match (&cycle, args.no_dynamo) {
        (Some(_), false) => {
            let iterations = if args.run.quick { 10 } else { 50 };
            match nixl::dynamo::measure(args.cycle_size, iterations).await {
                Ok(baseline) => {
                    let s = &baseline.summary;
                    eprintln!(
                        "cycle dynamo {}: {} cycles, p50 {:.1} µs",
                        format_size(baseline.size),
                        s.iterations,
                        micros(s.p50)
                    );
                    Some(baseline)
                }
                Err(reason) => {
                    eprintln!("dynamo cycle: skipped: {reason}");
                    None
                }
            }
        }
        _ => None,
    };

    let report = NixlReport {
        command,
        date,
        machine: Machine::detect(),
        rows,
        cycle,
        dynamo_cycle,
        skipped,
        environment: environment(),
        sources: args.ferry_sources,
        raw_polling: args.raw_polling,
        rounds,
        wall: started.elapsed(),
    };
    println!("{}", report.table());
    args.run
        .write_outputs(|| report.json(), || report.markdown())?;
    exited.map_err(|e| format!("after the run (its figures are complete): {e}"))?;
    Ok(report)
}
