//! `ferry-bench-kv`: the KV-cache scenario. A prefill process holds a Llama-3-70B-shaped BF16
//! KV pool (80 layers, 8 KV heads of 128, 16-token blocks, K and V apart, one allocation per
//! layer); this process, the decode worker, pulls a set of blocks (about 1 GiB by default)
//! into its own pool with one `ferry::kv` read over tcp, for contiguous, partly adjacent and
//! scattered block sets, beside iperf3 runs just before and after each set.
//!
//! ```sh
//! cargo build --release -p ferry-benches
//! target/release/ferry-bench-kv                 # 204 blocks (1020 MiB) per read
//! target/release/ferry-bench-kv --quick         # 16 blocks, a few reads
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ferry_benches::baseline;
use ferry_benches::cli::{block_on_worker, command_line};
use ferry_benches::kv::{self, BlockSet, KvRow};
use ferry_benches::report::Machine;
use ferry_benches::stats::{gigabytes, micros, IterationPlan};
use ferry_benches::{clock, Result};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench-kv",
    about = "A Llama-3-70B KV cache pulled by block id over ferry's tcp backend, between two \
             processes, for contiguous, partly adjacent and scattered block sets"
)]
struct Args {
    /// Blocks per read (5 MiB each) [default: 204, about 1 GiB; --quick 16].
    #[arg(long)]
    blocks: Option<u32>,
    /// A short run: 16 blocks, few reads, no iperf3.
    #[arg(long)]
    quick: bool,
    /// Read time to spend per block set, in seconds [default: 3; --quick 0.2].
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds of each iperf3 run around a block set; 0 turns iperf3 off [default: 1; --quick 0].
    #[arg(long)]
    iperf_seconds: Option<u32>,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
    /// Act as the prefill peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
    /// The prefill peer's pool size, in blocks (used with --peer).
    #[arg(long, hide = true, default_value_t = 16)]
    pool_blocks: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.peer {
        return match block_on_worker(kv::run_peer(args.pool_blocks)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-bench-kv --peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match block_on_worker(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ferry-bench-kv: some reads delivered wrong bytes");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferry-bench-kv: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A row and the iperf3 rates around it.
struct Measured {
    row: KvRow,
    around: Vec<f64>,
}

async fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    let command = command_line();
    let date = clock::utc_now();
    let blocks = args
        .blocks
        .unwrap_or(if args.quick { 16 } else { 204 })
        .max(1);
    // Scattered sets use every other block, runs every other run of 8.
    let decode_pool = 2 * blocks + 16;
    let plan = IterationPlan {
        target: std::time::Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick {
            0.2
        } else {
            3.0
        })),
        min: if args.quick { 2 } else { 3 },
        max: 200,
    };
    let iperf_seconds = args.iperf_seconds.unwrap_or(if args.quick { 0 } else { 1 });
    let mut decode = kv::Decode::start(blocks).await?;

    let iperf = |seconds: u32| async move {
        if seconds == 0 {
            return Ok::<_, ferry_benches::BoxError>(None);
        }
        let rate = baseline::iperf3(seconds)
            .await?
            .map(|r| r.bytes_per_second());
        if rate.is_none() {
            eprintln!("iperf3: skipped: not installed");
        }
        Ok(rate)
    };
    let mut before = iperf(iperf_seconds).await?;
    let mut rows = Vec::new();
    for set in BlockSet::ALL {
        let row = decode.measure(set, blocks, decode_pool, plan).await?;
        let after = iperf(iperf_seconds).await?;
        eprintln!(
            "{}: {} descriptors, {:.3} GB/s{}",
            set.name(),
            row.descriptors,
            gigabytes(row.throughput()),
            if row.verified { "" } else { ", WRONG BYTES" }
        );
        let around = before.into_iter().chain(after).collect();
        before = after;
        rows.push(Measured { row, around });
    }
    decode.exit().await?;

    let table = table(&rows);
    println!(
        "# ferry-bench-kv\n\n- command: `{command}`\n- date: {date}\n- machine: {}\n\n{table}\nWall \
         time of the run: {:.1} s.",
        Machine::detect().describe(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        let figures = json!({
            "bench": "ferry-bench-kv",
            "command": command,
            "date": date,
            "rows": rows.iter().map(|m| json!({
                "set": m.row.set.name(),
                "blocks": m.row.blocks,
                "bytes": m.row.bytes,
                "descriptors": m.row.descriptors,
                "chunks": m.row.chunks,
                "iterations": m.row.summary.iterations,
                "p50_us": micros(m.row.summary.p50),
                "p99_us": micros(m.row.summary.p99),
                "begin_p50_us": micros(m.row.begin.p50),
                "bytes_per_second": m.row.throughput(),
                "iperf3_around_bytes_per_second": m.around,
                "verified": m.row.verified,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)? + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(rows.iter().all(|m| m.row.verified))
}

fn table(rows: &[Measured]) -> String {
    let mut out = String::from(
        "| block set | blocks | MiB | descriptors | chunks | reads | begin p50 µs | p50 ms | p99 ms \
         | GB/s | iperf3 around GB/s | GB/s ÷ iperf3 | bytes |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|\n",
    );
    for Measured { row, around } in rows {
        let baseline =
            (!around.is_empty()).then(|| around.iter().sum::<f64>() / around.len() as f64);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.3} | {} | {} | {} |\n",
            row.set.name(),
            row.blocks,
            row.bytes >> 20,
            row.descriptors,
            row.chunks,
            row.summary.iterations,
            micros(row.begin.p50),
            micros(row.summary.p50) / 1e3,
            micros(row.summary.p99) / 1e3,
            gigabytes(row.throughput()),
            around
                .iter()
                .map(|r| format!("{:.3}", gigabytes(*r)))
                .collect::<Vec<_>>()
                .join(" / "),
            baseline.map_or(String::new(), |b| format!("{:.2}", row.throughput() / b)),
            if row.verified {
                "verified"
            } else {
                "**WRONG**"
            },
        ));
    }
    out
}
