//! `ferry-bench-cuda`: CUDA device memory over ferry's tcp backend (staged through host
//! buffers), device to device, host to device and device to host, in one process and across
//! two, and over nixl (registered as VRAM) device to device in one process, beside plain CUDA
//! copies and loopback TCP of the same size measured in the same run.
//! Where no GPU is usable it prints `skipped: <reason>` and exits 0.
//!
//! ```sh
//! cargo build --release -p ferry-benches --features cuda --bin ferry-bench-cuda
//! flock /tmp/ferry-bench.lock target/release/ferry-bench-cuda --markdown cuda.md --json cuda.json
//! target/release/ferry-bench-cuda --quick
//! ```
//!
//! Needs only the NVIDIA driver (`libcuda.so.1`, opened at run time); no CUDA toolkit.

#[path = "../cuda.rs"]
mod cuda;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ferry::core::cuda::cudarc::driver::CudaStream;
use ferry_benches::baseline;
use ferry_benches::cli::{self, command_line, RunArgs};
use ferry_benches::report::Machine;
use ferry_benches::stats::{gigabytes, Summary};
use ferry_benches::units::format_size;
use ferry_benches::{clock, Result};
use serde_json::json;

use cuda::{Backend, Path, Peer, Row, ONE_PROCESS, TWO_PROCESSES};

/// Sizes of a full run and of `--quick`.
const FULL: [usize; 2] = [64 << 20, 256 << 20];
const QUICK: [usize; 1] = [16 << 20];

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench-cuda",
    about = "device memory over ferry's tcp and nixl backends, beside CUDA copies and loopback TCP \
             measured in the same run"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Seconds of the iperf3 run (loopback TCP), when iperf3 is installed; else a tokio
    /// stream of each size is timed instead.
    #[arg(long, default_value_t = 3)]
    iperf_seconds: u32,
    /// Leave out the two-process rows.
    #[arg(long)]
    one_process: bool,
    /// Act as the peer process (used by the benchmark itself).
    #[arg(long, hide = true)]
    peer: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stream = match ferry::cuda::context(0) {
        Ok(ctx) => ctx.default_stream(),
        Err(e) => {
            if !args.peer {
                println!("skipped: no usable CUDA device: {e}");
            }
            return ExitCode::SUCCESS;
        }
    };
    let outcome = if args.peer {
        cli::block_on_worker(cuda::serve_peer(stream))
    } else {
        cli::block_on_worker(run(args, stream))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench-cuda: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The reference of the staged tcp rows.
const TCP_REFERENCE: &str = "min(loopback TCP, H2D)";

/// The reference of the nixl rows.
const NIXL_REFERENCE: &str = "D2D copy";

fn row(
    what: String,
    size: usize,
    summary: Option<Summary>,
    reference: Option<(f64, &'static str)>,
) -> Vec<Row> {
    summary
        .map(|summary| {
            let mut row = Row {
                what,
                size,
                summary,
                ratio: None,
                reference: reference.map_or("", |(_, name)| name),
            };
            row.ratio = reference.map(|(rate, _)| row.rate() / rate);
            row
        })
        .into_iter()
        .collect()
}

/// A ferry row; judged against `reference` where device memory takes part.
fn path_row(
    path: Path,
    place: &str,
    size: usize,
    summary: Option<Summary>,
    reference: Option<f64>,
) -> Vec<Row> {
    let judged = path
        .staged()
        .then_some(reference)
        .flatten()
        .map(|rate| (rate, TCP_REFERENCE));
    row(
        format!("tcp {} ({place})", path.name()),
        size,
        summary,
        judged,
    )
}

async fn run(args: Args, stream: Arc<CudaStream>) -> Result<()> {
    let plan = args.run.plan();
    let sizes = if !args.run.sizes.is_empty() {
        args.run.sizes.clone()
    } else if args.run.quick {
        QUICK.to_vec()
    } else {
        FULL.to_vec()
    };
    let started = clock::utc_now();
    let device = stream
        .context()
        .name()
        .unwrap_or_else(|e| format!("? ({e})"));
    println!("device 0: {device}; {}", Machine::detect().describe());
    let iperf = baseline::iperf3(args.iperf_seconds).await?;
    match iperf {
        Some(i) => println!(
            "loopback TCP: iperf3, one stream, {} s: {:.2} GB/s",
            i.seconds,
            gigabytes(i.bytes_per_second())
        ),
        None => println!("loopback TCP: iperf3 is not installed; a tokio stream per size"),
    }
    let mut peer = match args.one_process {
        true => None,
        false => Some(Peer::spawn()?),
    };
    let connector = cuda::connector(Backend::Tcp).await?;
    let nixl = cuda::nixl_support();
    if let Err(why) = &nixl {
        println!("nixl rows skipped: {why}");
    }
    let mut rows = Vec::new();
    for &size in &sizes {
        let [h2d, d2h, d2d] = cuda::cuda_copies(&stream, size, plan)?;
        let h2d_rate = h2d.as_ref().map(|s| s.throughput(size));
        let d2d_rate = d2d.as_ref().map(|s| s.throughput(size));
        let tcp = match iperf {
            Some(i) => Some((i.bytes_per_second(), None)),
            None => cuda::tokio_stream(size, plan)
                .await?
                .map(|s| (s.throughput(size), Some(s))),
        };
        let tcp_rate = tcp.as_ref().map(|(rate, _)| *rate);
        let reference = match (tcp_rate, h2d_rate) {
            (Some(t), Some(h)) => Some(t.min(h)),
            (t, h) => t.or(h),
        };
        rows.extend(row("cuda H2D copy (pageable)".into(), size, h2d, None));
        rows.extend(row("cuda D2H copy (pageable)".into(), size, d2h, None));
        rows.extend(row("cuda D2D copy".into(), size, d2d, None));
        if let Some((_, Some(summary))) = tcp {
            rows.extend(row(
                "loopback TCP (tokio stream)".into(),
                size,
                Some(summary),
                None,
            ));
        }
        for path in ONE_PROCESS {
            let summary = cuda::one_process(&stream, Backend::Tcp, path, size, plan).await?;
            rows.extend(path_row(path, "1 process", size, summary, reference));
        }
        if nixl.is_ok() {
            let d2d_rate = d2d_rate.map(|rate| (rate, NIXL_REFERENCE));
            for path in ONE_PROCESS.into_iter().filter(|p| p.from_gpu && p.to_gpu) {
                let summary = cuda::one_process(&stream, Backend::Nixl, path, size, plan).await?;
                rows.extend(row(
                    format!("nixl {} (1 process)", path.name()),
                    size,
                    summary,
                    d2d_rate,
                ));
            }
        }
        if let Some(peer) = peer.as_mut() {
            for path in TWO_PROCESSES {
                let summary = peer.time(&stream, &connector, path, size, plan).await?;
                rows.extend(path_row(path, "2 processes", size, summary, reference));
            }
        }
        println!(
            "{}: reference {:.2} GB/s (loopback TCP {}, H2D {})",
            format_size(size),
            reference.map_or(0.0, gigabytes),
            tcp_rate.map_or("?".into(), |r| format!("{:.2}", gigabytes(r))),
            h2d_rate.map_or("?".into(), |r| format!("{:.2}", gigabytes(r))),
        );
    }
    if let Some(peer) = peer {
        peer.finish().await;
    }
    let table = cuda::table(&rows);
    println!("\n{table}");
    args.run.write_outputs(
        || {
            json!({
                "started": started,
                "command": command_line(),
                "device": device,
                "iperf3_bytes_per_second": iperf.map(|i| i.bytes_per_second()),
                "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
            })
        },
        || {
            format!(
                "# ferry-bench-cuda\n\n`{}` on {started}, device 0: {device}\n\n{table}\n\
                 Host copies use pageable memory (no pinned baseline: cudarc's pinned \
                 allocation is unsafe); a tcp row's ratio is over the lower of loopback TCP and \
                 the H2D copy, a nixl row's over the D2D copy.\n",
                command_line()
            )
        },
    )
}
