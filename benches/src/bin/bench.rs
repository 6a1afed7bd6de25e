//! `ferry-bench`, run as `ferry bench`: every usable backend, read and write, 4 KiB to 1 GiB,
//! 1 to 4096 descriptors, in one process and across two, beside same-run baselines (memcpy,
//! iperf3, a TCP ping-pong, a raw nixl-sys loop, ucx_perftest), and a Llama-3-70B KV-cache
//! hand-off in one process and from a prefill process to a decode process; a markdown table,
//! JSON and an SVG plot of throughput against size.
//!
//! The ucx rows come from the sibling program ferry-bench-ucx (feature `ucx`), run with
//! `--suite-part` ([`ferry_benches::part`]): NIXL refuses to start in a process that links the
//! system UCX, so this program never does. Without ferry-bench-ucx beside it, ucx is left out
//! with that reason.
//!
//! ```sh
//! cargo build --release -p ferry -p ferry-benches
//! cargo build --release -p ferry-benches --features ucx --bin ferry-bench-ucx   # for ucx rows
//! target/release/ferry bench --quick --out target/bench-smoke   # under a minute
//! target/release/ferry bench --out bench-full                   # a few minutes, ~6 GiB free
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry::Connector;
use ferry_benches::baseline;
use ferry_benches::cli::{self, command_line, RunArgs};
use ferry_benches::cpu::CpuTime;
use ferry_benches::handoff::{self, Variant};
use ferry_benches::kv::{self, BlockSet};
use ferry_benches::local::{self, LocalBackend, Pair};
use ferry_benches::nixl::raw::Polling;
use ferry_benches::nixl::{self, Path, Sources};
use ferry_benches::part::{self, PartRequest};
use ferry_benches::peer::Direction;
use ferry_benches::plot::throughput_svg;
use ferry_benches::progress::Progress;
use ferry_benches::report::Machine;
use ferry_benches::split::{self, RowsOf, Until};
use ferry_benches::stats::{gigabytes, IterationPlan, Summary};
use ferry_benches::suite::{AcrossRow, KvAcrossRow, Suite};
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
    /// Backends, comma-separated (sim, tcp, nixl, ucx); one that cannot run here is left out
    /// with its reason. ucx is measured by ferry-bench-ucx (feature ucx) beside this program.
    #[arg(long, value_delimiter = ',', value_parser = parse_backend, default_value = "sim,tcp,nixl,ucx")]
    backends: Vec<LocalBackend>,
    /// Descriptor counts the same bytes are split into, in one process and across two.
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
    /// How the ucx rows' endpoints treat a lost peer (ferry-bench-ucx's --error-handling):
    /// peer (ferry's default; under UCX's defaults it connects over tcp, not shared memory),
    /// peer-if-supported, or none (every transport, as ucx_perftest uses).
    #[arg(long, default_value = "peer", value_parser = ["peer", "peer-if-supported", "none"])]
    ucx_error_handling: String,
    /// Act as a peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
    /// With --peer: serve ferry-bench-nixl's commands, its raw loop polling so.
    #[arg(long, hide = true)]
    raw_polling: Option<String>,
    /// With --peer: be the KV hand-off's prefill process, with a pool of this many blocks.
    #[arg(long, hide = true)]
    kv_prefill_blocks: Option<u32>,
    /// With --kv-prefill-blocks: its backend (tcp or nixl).
    #[arg(long, hide = true, value_parser = parse_backend, default_value = "tcp")]
    kv_backend: LocalBackend,
}

/// Parses one `--backends` entry.
fn parse_backend(text: &str) -> Result<LocalBackend, String> {
    LocalBackend::from_name(text).ok_or_else(|| format!("{text:?}: expected sim, tcp, nixl or ucx"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.peer {
        let polling = args.raw_polling.as_deref().map(Polling::from_key);
        let served = match (args.kv_prefill_blocks, polling) {
            (Some(blocks), _) => {
                let backend = args.kv_backend;
                cli::block_on_worker(async move {
                    let connector = kv_connector(backend, "prefill").await?;
                    kv::run_peer_on(connector, blocks).await
                })
            }
            (None, None) => cli::block_on_worker(tcp::run_peer()),
            (None, Some(Some(polling))) => cli::block_on_worker(nixl::run_peer(polling)),
            (None, Some(None)) => Err("--raw-polling: expected backoff, yield or spin".into()),
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
    /// Backends measured in this process (ucx is not: see `ucx`).
    backends: Vec<LocalBackend>,
    across: bool,
    across_nixl: bool,
    /// Whether ferry-bench-ucx is asked for the ucx rows.
    ucx: bool,
    kv_blocks: Option<u32>,
    iterations: IterationPlan,
}

impl Plan {
    /// The (size, descriptors) cells of one backend and direction.
    fn cells(&self) -> Vec<(usize, usize)> {
        local::cells(&self.sizes, &self.split_sizes, &self.descriptors)
    }

    /// Backends of the KV hand-off: those of this process but sim.
    fn kv_backends(&self) -> Vec<LocalBackend> {
        let kv = self.backends.iter().copied();
        kv.filter(|b| *b != LocalBackend::Sim).collect()
    }

    /// Backends measured across two processes: tcp always, nixl where usable.
    fn across_backends(&self) -> usize {
        if self.across {
            1 + usize::from(self.across_nixl)
        } else {
            0
        }
    }

    fn steps(&self) -> usize {
        let local = self.backends.len() * 2 * self.cells().len();
        let across = self.across_backends() * 2 * self.cells().len();
        let kv = self.kv_blocks.map_or(0, |_| {
            let across = self.across_backends().min(self.kv_backends().len());
            self.kv_backends().len() * Variant::ALL.len() + across * BlockSet::ALL.len()
        });
        local + across + kv + usize::from(self.ucx)
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
    let mut ucx = false;
    for backend in args.backends.iter().copied() {
        if backends.contains(&backend) {
            continue;
        }
        if backend == LocalBackend::Ucx {
            ucx = true;
            continue;
        }
        match backend.unusable() {
            Some(why) => skipped.push(format!("{}: {why}", backend.name())),
            None => backends.push(backend),
        }
    }
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
        across: !args.no_across,
        across_nixl: nixl_across,
        ucx,
        kv_blocks,
        iterations,
    };
    let mut progress = Progress::new(plan.steps());

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
    if plan.across {
        ping_pong = across_tcp(&plan, &mut progress, &mut across).await?;
        if plan.across_nixl {
            across_nixl(&plan, quick, &mut progress, &mut across).await?;
        }
    }

    let mut handoff_rows = Vec::new();
    let mut kv_across = Vec::new();
    if let Some(blocks) = plan.kv_blocks {
        let kv_plan = handoff::plan(iterations, quick);
        let mut memory = handoff::Memory::new(blocks)?;
        for backend in plan.kv_backends() {
            for variant in Variant::ALL {
                progress.step(&format!(
                    "KV hand-off, one process: {} {}",
                    backend.name(),
                    variant.name()
                ));
                let row = handoff::measure(backend, variant, &mut memory, kv_plan).await?;
                handoff_rows.push(row);
            }
        }
        drop(memory);
        skipped.push(
            "KV hand-off on sim: left out (its figures would be the simulator's copies, not a \
             transport's)"
                .into(),
        );
        let mut across_kv: Vec<LocalBackend> = Vec::new();
        if plan.across {
            across_kv.push(LocalBackend::Tcp);
        }
        if plan.across_nixl {
            across_kv.push(LocalBackend::Nixl);
        }
        for backend in across_kv.into_iter().filter(|b| plan.backends.contains(b)) {
            kv_handoff_across(backend, blocks, kv_plan, &mut progress, &mut kv_across).await?;
        }
    }

    let mut ucx_part = None;
    if plan.ucx {
        progress.step("ucx (ferry-bench-ucx --suite-part)");
        match ucx_rows(&plan, &args, quick).await {
            Ok(answer) => ucx_part = Some(answer),
            Err(why) => skipped.push(format!("ucx: {why}")),
        }
    }

    if !quick {
        let after = iperf3(iperf_seconds).await;
        if let (Ok(runs), Ok(more)) = (&mut iperf, after) {
            runs.extend(more);
        }
    }
    progress.finish();

    let mut suite = Suite {
        command,
        date,
        machine: Machine::detect(),
        memcpy,
        iperf,
        ping_pong,
        local: local_rows,
        across,
        handoff: handoff_rows,
        kv_across,
        floors: Vec::new(),
        skipped,
        wall: Duration::ZERO,
    };
    if let Some(answer) = &ucx_part {
        if let Err(why) = suite.absorb(answer) {
            suite.skipped.push(format!("ucx: its answer: {why}"));
        }
    }
    suite.wall = started.elapsed();
    println!("{}", suite.tables());
    args.run
        .write_outputs(|| suite.json(), || suite.markdown())?;
    if let Some(dir) = &args.out {
        write_out(dir, &suite)?;
    }
    Ok(suite)
}

/// The ucx rows: ferry-bench-ucx, beside this program, run with `--suite-part` for the same
/// sizes, descriptor counts and plan; its answer, or why there is none.
async fn ucx_rows(plan: &Plan, args: &Args, quick: bool) -> Result<serde_json::Value, String> {
    let program = part::sibling("ferry-bench-ucx").ok_or(
        "ferry-bench-ucx is not beside ferry-bench (it needs the ucx feature: cargo build \
         --release -p ferry-benches --features ucx --bin ferry-bench-ucx)",
    )?;
    let out =
        std::env::temp_dir().join(format!("ferry-bench-ucx-part-{}.json", std::process::id()));
    let request = PartRequest {
        sizes: plan.sizes.clone(),
        split_sizes: plan.split_sizes.clone(),
        descriptors: plan.descriptors.clone(),
        plan: plan.iterations,
        kv_blocks: plan.kv_blocks,
        across: !args.no_across,
        quick,
        out,
    };
    let limit = Duration::from_secs(if quick { 120 } else { 1800 });
    let handling = ["--error-handling", args.ucx_error_handling.as_str()];
    part::run(&program, &handling, &request, limit)
        .await
        .map_err(|e| e.to_string())
}

/// A Connector on `backend` (tcp or nixl) for one side of the two-process KV hand-off.
async fn kv_connector(backend: LocalBackend, side: &str) -> Result<Connector> {
    let name = format!("ferry-bench-kv-{side}-{}", std::process::id());
    match backend {
        LocalBackend::Tcp => tcp::connector(&name).await,
        LocalBackend::Nixl => nixl::connector(&name, 0).await,
        other => Err(format!("no two-process KV hand-off on {}", other.name()).into()),
    }
}

/// The KV hand-off from a prefill process (this program with `--peer --kv-prefill-blocks`) to
/// this one, the decode worker, on `backend`: each block set of `blocks` blocks pulled with one
/// `ferry::kv` read ([`kv::Decode`]), both pools registered once.
async fn kv_handoff_across(
    backend: LocalBackend,
    blocks: u32,
    plan: IterationPlan,
    progress: &mut Progress,
    rows: &mut Vec<KvAcrossRow>,
) -> Result<()> {
    let connector = kv_connector(backend, "decode").await?;
    let blocks_text = blocks.to_string();
    let peer_args = [
        "--kv-prefill-blocks",
        blocks_text.as_str(),
        "--kv-backend",
        backend.name(),
    ];
    let mut decode = kv::Decode::start_on(connector, &peer_args).await?;
    // Scattered sets use every other block of the decode pool.
    let pool = 2 * blocks + 16;
    for set in BlockSet::ALL {
        progress.step(&format!(
            "KV hand-off, two processes: {} {}",
            backend.name(),
            set.name()
        ));
        let before = CpuTime::now();
        let row = decode.measure(set, blocks, pool, plan).await?;
        rows.push(KvAcrossRow {
            backend: backend.name(),
            row,
            cpu: CpuTime::used_since(before),
        });
    }
    decode.exit().await
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
                descriptors: 1,
                cpu_operations: m.summary.iterations + 1,
                transfer: m.summary,
                post: None,
                cpu,
                verified: m.verified,
            });
        }
    }
    // The split cells, timed as the rows above: until this side's wait returned.
    let of = RowsOf {
        backend: "tcp",
        read_seed: tcp::READ_SEED,
        until: Until::Active,
    };
    let (io, cells) = (&mut peer.process().io, plan.cells());
    rows.extend(split::rows(&connector, io, of, &cells, plan.iterations, progress).await?);
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
                    path: m.path.describe(),
                    direction,
                    size,
                    descriptors: 1,
                    transfer: m.both,
                    post: None,
                    cpu,
                    cpu_operations: operations,
                    verified: m.verified,
                });
            }
        }
    }
    // The split cells, ferry only (the raw loop moves one descriptor), until both sides knew.
    let of = RowsOf {
        backend: "nixl",
        read_seed: nixl::READ_SEED,
        until: Until::BothSides,
    };
    let ((connector, peer), cells) = (bench.ferry_and_peer(), plan.cells());
    let io = &mut peer.io;
    rows.extend(split::rows(connector, io, of, &cells, plan.iterations, progress).await?);
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
    let title = "ferry bench: throughput against size, one descriptor per operation";
    let panels = [
        ("reads", suite.series(Direction::Read)),
        ("writes", suite.series(Direction::Write)),
    ];
    write("throughput.svg", throughput_svg(title, &panels)?)?;
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
    fn steps_count_every_row() {
        let plan = Plan {
            sizes: vec![4096, 1 << 20],
            split_sizes: vec![1 << 20],
            descriptors: vec![1, 16, 4096, 1 << 21],
            backends: vec![LocalBackend::Tcp],
            across: true,
            across_nixl: false,
            ucx: true,
            kv_blocks: Some(2),
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
        // One process and across two: 4 cells × 2 directions each; KV: 5 variants in one
        // process, 3 block sets across two; ucx: one step.
        assert_eq!(plan.steps(), 8 + 8 + 5 + 3 + 1);
    }
}
