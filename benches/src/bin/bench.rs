//! `ferry-bench`, run as `ferry bench`: every usable backend, read and write, 4 KiB to 1 GiB,
//! 1 to 4096 descriptors, in one process and across two, beside same-run baselines (memcpy,
//! iperf3, a TCP ping-pong, a raw nixl-sys loop), and a Llama-3-70B KV-cache hand-off; a
//! markdown table, JSON and an SVG plot of throughput against size.
//!
//! ```sh
//! cargo build --release -p ferry -p ferry-benches
//! target/release/ferry bench --quick --out target/bench-smoke   # under a minute
//! target/release/ferry bench --out bench-full                   # a few minutes, ~6 GiB free
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_benches::baseline;
use ferry_benches::cli::{self, command_line, RunArgs};
use ferry_benches::cpu::CpuTime;
use ferry_benches::handoff::{self, Variant};
use ferry_benches::local::{self, LocalBackend, Pair};
use ferry_benches::nixl::raw::Polling;
use ferry_benches::nixl::{self, Path, Sources};
use ferry_benches::peer::Direction;
use ferry_benches::plot::throughput_svg;
use ferry_benches::progress::Progress;
use ferry_benches::report::Machine;
use ferry_benches::stats::{gigabytes, IterationPlan, Summary};
use ferry_benches::suite::{AcrossRow, Suite};
use ferry_benches::tcp;
use ferry_benches::units::{format_size, parse_size};
use ferry_benches::{clock, Result};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench",
    about = "ferry's backends in one process and across two, 4 KiB to 1 GiB and 1 to 4096 \
             descriptors, beside same-run baselines, and a Llama-3-70B KV-cache hand-off"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Write bench.json, bench.md and throughput.svg into this directory (created if absent).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Backends measured in one process, comma-separated (sim, tcp, nixl); one that cannot
    /// run here is left out with its reason.
    #[arg(long, value_delimiter = ',', value_parser = parse_backend, default_value = "sim,tcp,nixl")]
    backends: Vec<LocalBackend>,
    /// Descriptor counts the same bytes are split into, in one process.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,4096")]
    descriptors: Vec<usize>,
    /// Sizes measured at every descriptor count (others at one descriptor)
    /// [default: 1M,16M,256M; --quick 1M].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    split_sizes: Vec<usize>,
    /// Leave out the two-process rows.
    #[arg(long)]
    no_across: bool,
    /// Leave out the KV hand-off.
    #[arg(long)]
    no_kv: bool,
    /// KV blocks per hand-off (5 MiB each) [default: 204, 1020 MiB; --quick 16].
    #[arg(long)]
    kv_blocks: Option<u32>,
    /// Seconds of each iperf3 run; 0 leaves iperf3 out [default: 2, before and after; --quick 1].
    #[arg(long)]
    iperf_seconds: Option<u32>,
    /// Act as a peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
    /// With --peer: serve ferry-bench-nixl's commands, its raw loop polling so.
    #[arg(long, hide = true)]
    raw_polling: Option<String>,
}

/// Parses one `--backends` entry.
fn parse_backend(text: &str) -> Result<LocalBackend, String> {
    LocalBackend::from_name(text).ok_or_else(|| format!("{text:?}: expected sim, tcp or nixl"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.peer {
        let polling = args.raw_polling.as_deref().map(Polling::from_key);
        let served = match polling {
            None => cli::block_on_worker(tcp::run_peer()),
            Some(Some(polling)) => cli::block_on_worker(nixl::run_peer(polling)),
            Some(None) => Err("--raw-polling: expected backoff, yield or spin".into()),
        };
        return exit("ferry-bench --peer", served.map(|()| true));
    }
    let outcome = cli::block_on_worker(run(args)).map(|suite| suite.verified());
    exit("ferry-bench", outcome)
}

/// The exit status of `program` after `outcome` (`Ok(false)`: wrong bytes somewhere).
fn exit(program: &str, outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{program}: some transfers delivered wrong bytes");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the run will measure.
struct Plan {
    sizes: Vec<usize>,
    split_sizes: Vec<usize>,
    descriptors: Vec<usize>,
    backends: Vec<LocalBackend>,
    across_nixl: bool,
    kv_blocks: Option<u32>,
    iterations: IterationPlan,
}

impl Plan {
    /// The (size, descriptors) cells of one backend and direction in one process.
    fn cells(&self) -> Vec<(usize, usize)> {
        let mut cells: Vec<(usize, usize)> = self.sizes.iter().map(|&s| (s, 1)).collect();
        for &size in &self.split_sizes {
            for &n in &self.descriptors {
                if n > 1 && local::piece(size, n).is_some() && !cells.contains(&(size, n)) {
                    cells.push((size, n));
                }
            }
        }
        cells.sort_unstable();
        cells
    }

    fn steps(&self, across: bool) -> usize {
        let local = self.backends.len() * 2 * self.cells().len();
        let across = if across {
            2 * self.sizes.len() * (1 + usize::from(self.across_nixl))
        } else {
            0
        };
        let kv = self.kv_blocks.map_or(0, |_| {
            Variant::ALL.len()
                * self
                    .backends
                    .iter()
                    .filter(|b| **b != LocalBackend::Sim)
                    .count()
        });
        local + across + kv
    }
}

async fn run(args: Args) -> Result<Suite> {
    let started = Instant::now();
    let command = command_line();
    let date = clock::utc_now();
    let quick = args.run.quick;
    let mut skipped = Vec::new();
    // Shorter rows than the per-backend programs: this run covers many more of them.
    let mut run_args = args.run.clone();
    run_args.seconds = Some(args.run.seconds.unwrap_or(if quick { 0.08 } else { 0.5 }));
    let iterations = run_args.plan();

    // One process holds two buffers of a size; the nixl rows across two, five (nixl.rs).
    let (sizes, too_big) = cli::fitting(args.run.sizes(), |size| 5 * size as u64);
    skipped.extend(
        too_big
            .into_iter()
            .map(|(s, why)| format!("{}: {why}", format_size(s))),
    );
    let split_sizes = if !args.split_sizes.is_empty() {
        args.split_sizes.clone()
    } else if quick {
        vec![1 << 20]
    } else {
        vec![1 << 20, 16 << 20, 256 << 20]
    };
    let split_sizes: Vec<usize> = split_sizes
        .into_iter()
        .filter(|s| sizes.contains(s))
        .collect();

    let mut backends = Vec::new();
    for backend in args.backends.iter().copied() {
        if backends.contains(&backend) {
            continue;
        }
        match backend.unusable() {
            Some(why) => skipped.push(format!("{}: {why}", backend.name())),
            None => backends.push(backend),
        }
    }
    skipped.push(
        "ucx: not measured by ferry bench (NIXL and the system UCX cannot share a process); \
         see ferry-bench-ucx"
            .into(),
    );
    let nixl_across = !args.no_across && backends.contains(&LocalBackend::Nixl);
    let kv_blocks = (!args.no_kv).then(|| args.kv_blocks.unwrap_or(if quick { 16 } else { 204 }));
    let kv_blocks = match kv_blocks {
        Some(blocks) => {
            let (fits, why) =
                cli::fitting(vec![blocks as usize], |b| handoff::Memory::held(b as u32));
            if fits.is_empty() {
                skipped.extend(
                    why.into_iter()
                        .map(|(_, why)| format!("KV hand-off: {why}")),
                );
                None
            } else {
                Some(blocks)
            }
        }
        None => None,
    };
    let plan = Plan {
        sizes,
        split_sizes,
        descriptors: args.descriptors.clone(),
        backends,
        across_nixl: nixl_across,
        kv_blocks,
        iterations,
    };
    let mut progress = Progress::new(plan.steps(!args.no_across));

    // Baselines first: memcpy at every size (and the hand-off's), iperf3.
    let kv_bytes = kv_blocks.map(|b| (32usize << 10) * 2 * 80 * b as usize);
    let mut memcpy = Vec::new();
    for size in plan.sizes.iter().copied().chain(kv_bytes) {
        if memcpy.iter().any(|(s, _)| *s == size) {
            continue;
        }
        if let Some(copies) = baseline::memcpy(size, iterations) {
            memcpy.push((size, copies));
        }
    }
    let iperf_seconds = args.iperf_seconds.unwrap_or(if quick { 1 } else { 2 });
    let mut iperf = iperf3(iperf_seconds).await;

    let mut local_rows = Vec::new();
    for &backend in &plan.backends {
        let pair = Pair::open(backend, 0).await?;
        for (size, descriptors) in plan.cells() {
            for direction in [Direction::Read, Direction::Write] {
                progress.step(&format!(
                    "one process: {} {} {} × {descriptors}",
                    backend.name(),
                    direction.name(),
                    format_size(size)
                ));
                let row = local::measure(&pair, direction, size, descriptors, iterations).await?;
                local_rows.push(row);
            }
        }
    }

    let mut across = Vec::new();
    let mut ping_pong = None;
    if !args.no_across {
        ping_pong = across_tcp(&plan, &mut progress, &mut across).await?;
        if plan.across_nixl {
            across_nixl(&plan, quick, &mut progress, &mut across).await?;
        }
    }

    let mut handoff_rows = Vec::new();
    if let Some(blocks) = plan.kv_blocks {
        let mut memory = handoff::Memory::new(blocks)?;
        let kv_plan = IterationPlan {
            target: iterations
                .target
                .max(Duration::from_millis(if quick { 50 } else { 1500 })),
            min: if quick { 2 } else { 3 },
            max: iterations.max.min(50),
        };
        for &backend in &plan.backends {
            if backend == LocalBackend::Sim {
                continue;
            }
            for variant in Variant::ALL {
                progress.step(&format!(
                    "KV hand-off: {} {}",
                    backend.name(),
                    variant.name()
                ));
                let row = handoff::measure(backend, variant, &mut memory, kv_plan).await?;
                handoff_rows.push(row);
            }
        }
        skipped.push(
            "KV hand-off on sim: left out (its figures would be the simulator's copies, not a \
             transport's)"
                .into(),
        );
    }

    if !quick {
        let after = iperf3(iperf_seconds).await;
        if let (Ok(runs), Ok(more)) = (&mut iperf, after) {
            runs.extend(more);
        }
    }
    progress.finish();

    let suite = Suite {
        command,
        date,
        machine: Machine::detect(),
        memcpy,
        iperf,
        ping_pong,
        local: local_rows,
        across,
        handoff: handoff_rows,
        skipped,
        wall: started.elapsed(),
    };
    println!("{}", suite.tables());
    args.run
        .write_outputs(|| suite.json(), || suite.markdown())?;
    if let Some(dir) = &args.out {
        write_out(dir, &suite)?;
    }
    Ok(suite)
}

/// One iperf3 run, or why there is none.
async fn iperf3(seconds: u32) -> std::result::Result<Vec<baseline::Iperf>, String> {
    if seconds == 0 {
        return Err("turned off (--iperf-seconds 0)".into());
    }
    match baseline::iperf3(seconds).await {
        Ok(Some(run)) => {
            eprintln!("iperf3: {:.3} GB/s", gigabytes(run.bytes_per_second()));
            Ok(vec![run])
        }
        Ok(None) => Err("not installed".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// ferry's tcp backend against ferry-bench-tcp's peer process, one descriptor per operation,
/// and the ping-pong between the two processes.
async fn across_tcp(
    plan: &Plan,
    progress: &mut Progress,
    rows: &mut Vec<AcrossRow>,
) -> Result<Option<Summary>> {
    let connector = tcp::connector("ferry-bench").await?;
    let mut peer = tcp::Peer::spawn(&[]).await?;
    let limit = Duration::from_secs(5);
    let samples = baseline::ping_pong(peer.echo_addr(), 200, 2000, limit).await?;
    for &size in &plan.sizes {
        for direction in [Direction::Read, Direction::Write] {
            progress.step(&format!(
                "two processes: tcp {} {}",
                direction.name(),
                format_size(size)
            ));
            let before = CpuTime::now();
            let m =
                tcp::measure(&connector, &mut peer, direction, size, 1, plan.iterations).await?;
            let cpu = CpuTime::now()
                .zip(before)
                .map(|(now, then)| now.since(then));
            rows.push(AcrossRow {
                backend: "tcp",
                path: "ferry",
                direction,
                size,
                cpu_operations: m.summary.iterations + 1,
                transfer: m.summary,
                cpu,
                verified: m.verified,
            });
        }
    }
    peer.exit().await?;
    Ok(Summary::from_samples(samples))
}

/// ferry's nixl backend against ferry-bench-nixl's peer process, beside the raw nixl-sys loop
/// in alternating rounds.
async fn across_nixl(
    plan: &Plan,
    quick: bool,
    progress: &mut Progress,
    rows: &mut Vec<AcrossRow>,
) -> Result<()> {
    let mut bench = nixl::Bench::start(Polling::default()).await?;
    let paths = [Path::Raw, Path::Ferry];
    let rounds = if quick { 1 } else { 2 };
    for &size in &plan.sizes {
        for direction in [Direction::Read, Direction::Write] {
            progress.step(&format!(
                "two processes: nixl {} {} (ferry and raw)",
                direction.name(),
                format_size(size)
            ));
            let before = CpuTime::now();
            let measured = bench
                .measure(
                    size,
                    direction,
                    &paths,
                    Sources::Shared,
                    plan.iterations,
                    rounds,
                )
                .await?;
            let cpu = CpuTime::now()
                .zip(before)
                .map(|(now, then)| now.since(then));
            // The paths alternate in one measurement: its CPU is shared by all their
            // operations, warm-ups included.
            let operations: usize = measured.iter().map(|m| m.both.iterations + 1).sum();
            for m in measured {
                rows.push(AcrossRow {
                    backend: "nixl",
                    path: match m.path {
                        Path::Raw => "raw nixl-sys",
                        Path::Ferry => "ferry",
                        Path::FerryCached => "ferry, cached registrations",
                    },
                    direction,
                    size,
                    transfer: m.both,
                    cpu,
                    cpu_operations: operations,
                    verified: m.verified,
                });
            }
        }
    }
    bench.exit().await
}

/// Writes bench.json, bench.md and throughput.svg into `dir`.
fn write_out(dir: &std::path::Path, suite: &Suite) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(
        "bench.json",
        serde_json::to_string_pretty(&suite.json())? + "\n",
    )?;
    write("bench.md", suite.markdown())?;
    let title = "ferry bench: throughput against size (reads, one descriptor)";
    write("throughput.svg", throughput_svg(title, &suite.series())?)?;
    eprintln!(
        "wrote bench.json, bench.md and throughput.svg in {}",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_split_only_the_split_sizes() {
        let plan = Plan {
            sizes: vec![4096, 1 << 20],
            split_sizes: vec![1 << 20],
            descriptors: vec![1, 16, 4096, 1 << 21],
            backends: vec![LocalBackend::Tcp],
            across_nixl: false,
            kv_blocks: None,
            iterations: IterationPlan {
                target: Duration::ZERO,
                min: 1,
                max: 1,
            },
        };
        assert_eq!(
            plan.cells(),
            vec![(4096, 1), (1 << 20, 1), (1 << 20, 16), (1 << 20, 4096)]
        );
        assert_eq!(plan.steps(true), 2 * 4 + 2 * 2);
    }
}
