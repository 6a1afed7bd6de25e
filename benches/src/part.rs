//! A part of `ferry bench` measured by a sibling program: the ucx rows, which ferry-bench-ucx
//! measures (it links the system UCX, and NIXL refuses to start in a process that has one, so
//! ferry-bench itself, which measures nixl, never links it).
//!
//! ```text
//!  ferry-bench                                  ferry-bench-ucx --suite-part REQUEST
//!  ───────────                                  ────────────────────────────────────
//!  PartRequest::json ───── command line ──────▶ one process: two ucx Connectors
//!                                               two processes: ferry-bench-ucx --peer
//!                                               ucx_perftest: ucp_put_bw, ucp_get, *_lat
//!  Suite::absorb ◀──── REQUEST.out (JSON) ───── Suite::json of what it measured
//! ```
//!
//! The answer is a file, not stdout: UCX prints its warnings on stdout. A sibling that is not
//! there, fails or runs past its limit leaves its rows out, with why.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::stats::IterationPlan;
use crate::Result;

/// What `ferry bench` asks a sibling program to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct PartRequest {
    /// Sizes at one descriptor, in one process and across two.
    pub sizes: Vec<usize>,
    /// Sizes also split over each of `descriptors`.
    pub split_sizes: Vec<usize>,
    /// Descriptor counts of the split sizes.
    pub descriptors: Vec<usize>,
    /// When to stop timing a row.
    pub plan: IterationPlan,
    /// Blocks of the one-process KV hand-off, if it is measured.
    pub kv_blocks: Option<u32>,
    /// Whether to measure across two processes.
    pub across: bool,
    /// A `--quick` run (lighter baselines).
    pub quick: bool,
    /// Where to write the answer ([`crate::suite::Suite::json`]).
    pub out: PathBuf,
}

impl PartRequest {
    /// The request as JSON, for the command line.
    pub fn json(&self) -> Value {
        json!({
            "sizes": self.sizes,
            "split_sizes": self.split_sizes,
            "descriptors": self.descriptors,
            "seconds": self.plan.target.as_secs_f64(),
            "min": self.plan.min,
            "max": self.plan.max,
            "kv_blocks": self.kv_blocks,
            "across": self.across,
            "quick": self.quick,
            "out": self.out.to_string_lossy(),
        })
    }

    /// Reads a request written by [`PartRequest::json`].
    pub fn from_json(text: &str) -> Result<PartRequest> {
        let v: Value = serde_json::from_str(text)?;
        let bad = || format!("not a part request: {text}");
        let list = |key: &str| -> Option<Vec<usize>> {
            v[key]
                .as_array()?
                .iter()
                .map(|n| usize::try_from(n.as_u64()?).ok())
                .collect()
        };
        let number = |key: &str| v[key].as_u64().and_then(|n| usize::try_from(n).ok());
        let seconds = v["seconds"].as_f64().filter(|s| s.is_finite() && *s >= 0.0);
        Ok(PartRequest {
            sizes: list("sizes").ok_or_else(bad)?,
            split_sizes: list("split_sizes").ok_or_else(bad)?,
            descriptors: list("descriptors").ok_or_else(bad)?,
            plan: IterationPlan {
                target: Duration::from_secs_f64(seconds.ok_or_else(bad)?),
                min: number("min").ok_or_else(bad)?,
                max: number("max").ok_or_else(bad)?,
            },
            kv_blocks: v["kv_blocks"].as_u64().and_then(|b| u32::try_from(b).ok()),
            across: v["across"].as_bool().ok_or_else(bad)?,
            quick: v["quick"].as_bool().ok_or_else(bad)?,
            out: PathBuf::from(v["out"].as_str().ok_or_else(bad)?),
        })
    }
}

/// Where `program` is beside this executable, if it is there.
pub fn sibling(program: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join(program);
    candidate.is_file().then_some(candidate)
}

/// Runs `program` (a path) with `args`, `--suite-part` and `request`, waits for it for at most
/// `limit` (then kills it, by its PID, on drop), and returns the JSON it wrote to
/// `request.out`.
pub async fn run(
    program: &Path,
    args: &[&str],
    request: &PartRequest,
    limit: Duration,
) -> Result<Value> {
    let _ = std::fs::remove_file(&request.out);
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .arg("--suite-part")
        .arg(request.json().to_string())
        .stdin(Stdio::null())
        // UCX's own messages go to stdout: keep them out of ferry bench's table.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            child.kill().await?;
            return Err(format!("{} ran past {limit:?}; killed", program.display()).into());
        }
    };
    let text = std::fs::read_to_string(&request.out).map_err(|e| {
        format!(
            "{} ({status}) wrote no answer to {}: {e}",
            program.display(),
            request.out.display()
        )
    })?;
    let _ = std::fs::remove_file(&request.out);
    Ok(serde_json::from_str(&text)?)
}

/// Writes `answer` where `request` says, for [`run`] to read.
pub fn answer(request: &PartRequest, answer: &Value) -> Result<()> {
    let text = serde_json::to_string(answer)? + "\n";
    std::fs::write(&request.out, text)
        .map_err(|e| format!("cannot write {}: {e}", request.out.display()).into())
}

#[cfg(feature = "ucx")]
pub use measure::ucx;

/// Serves `--suite-part REQUEST` in ferry-bench-ucx: measures ucx as the request (JSON) says,
/// on a tokio worker, endpoints using `error_handling`, and writes the answer where it says.
#[cfg(feature = "ucx")]
pub fn serve_ucx(request: &str, error_handling: ferry::ucx::ErrorHandling) -> Result<()> {
    let request = PartRequest::from_json(request)?;
    let suite = crate::cli::block_on_worker(ucx(request.clone(), error_handling))?;
    answer(&request, &suite.json())
}

#[cfg(feature = "ucx")]
mod measure {
    use std::time::{Duration, Instant};

    use ferry::ucx::ErrorHandling;

    use super::PartRequest;
    use crate::cpu::CpuTime;
    use crate::handoff::{self, Variant};
    use crate::local::{self, LocalBackend, Pair};
    use crate::peer::Direction;
    use crate::progress::Progress;
    use crate::split::{self, RowsOf, Until};
    use crate::suite::{ucx_bandwidth_test, AcrossRow, Floor, Suite, UCX_LATENCY_BOUND};
    use crate::ucx::perftest;
    use crate::ucx::report::PUT_LATENCIES;
    use crate::units::format_size;
    use crate::{ucx as ucx_bench, Result};

    /// The size of ferry's completion notification: a notification key's text (a UUID).
    const NOTIFICATION_BYTES: usize = 36;

    /// Measures ucx as `request` says, its endpoints (in one process and across two) using
    /// `error_handling`: one process
    /// (every cell, and the KV hand-off if asked), two processes (one descriptor per size,
    /// the split sizes over each descriptor count) and `ucx_perftest` in the same run. What
    /// cannot run is left out with why; the result is a [`Suite`] of this part alone.
    pub async fn ucx(request: PartRequest, error_handling: ErrorHandling) -> Result<Suite> {
        let started = Instant::now();
        let config = ferry::ucx::UcxConfig {
            error_handling,
            ..Default::default()
        };
        let command = crate::cli::command_line();
        let mut suite = Suite::empty(command, crate::clock::utc_now());
        if let Err(why) = ferry::ucx::available_with(&config) {
            suite.skipped.push(format!("ucx: {why}"));
            return Ok(suite);
        }
        local::set_ucx_error_handling(error_handling);
        let cells = local::cells(&request.sizes, &request.split_sizes, &request.descriptors);
        let kv = request.kv_blocks.map_or(0, |_| Variant::ALL.len());
        let two = if request.across { 2 * cells.len() } else { 0 };
        let mut progress = Progress::new(2 * cells.len() + kv + two + 1);
        let plan = request.plan;

        let pair = Pair::open(LocalBackend::Ucx, 0).await?;
        for &(size, descriptors) in &cells {
            for direction in [Direction::Read, Direction::Write] {
                progress.step(&format!(
                    "ucx, one process: {} {} × {descriptors}",
                    direction.name(),
                    format_size(size)
                ));
                let row = local::measure(&pair, direction, size, descriptors, plan).await;
                match row {
                    Ok(row) => suite.local.push(row),
                    Err(e) => suite.skipped.push(format!("ucx, one process: {e}")),
                }
            }
        }
        drop(pair);

        if let Some(blocks) = request.kv_blocks {
            let mut memory = handoff::Memory::new(blocks)?;
            let kv_plan = handoff::plan(plan, request.quick);
            for variant in Variant::ALL {
                progress.step(&format!("ucx KV hand-off: {}", variant.name()));
                match handoff::measure(LocalBackend::Ucx, variant, &mut memory, kv_plan).await {
                    Ok(row) => suite.handoff.push(row),
                    Err(e) => suite.skipped.push(format!("ucx KV hand-off: {e}")),
                }
            }
        }

        if request.across {
            if let Err(e) =
                across(&request, &cells, error_handling, &mut progress, &mut suite).await
            {
                suite.skipped.push(format!("ucx, two processes: {e}"));
            }
        }

        progress.step("ucx_perftest");
        floors(&request, &mut suite).await;
        progress.finish();
        suite.wall = started.elapsed();
        Ok(suite)
    }

    /// The two-process rows: ferry-bench-ucx's peer, one descriptor per size
    /// ([`ucx_bench::Bench::measure`], until both sides knew), and the split cells
    /// ([`split::rows`]).
    async fn across(
        request: &PartRequest,
        cells: &[(usize, usize)],
        error_handling: ErrorHandling,
        progress: &mut Progress,
        suite: &mut Suite,
    ) -> Result<()> {
        let mut bench = ucx_bench::Bench::start(ferry::ucx::UcxConfig {
            error_handling,
            ..Default::default()
        })
        .await?;
        for &size in &request.sizes {
            for direction in [Direction::Read, Direction::Write] {
                progress.step(&format!(
                    "ucx, two processes: {} {}",
                    direction.name(),
                    format_size(size)
                ));
                let before = CpuTime::now();
                let m = bench.measure(size, direction, 1, request.plan, 0).await?;
                suite.across.push(AcrossRow {
                    backend: "ucx",
                    path: "ferry",
                    direction,
                    size,
                    descriptors: 1,
                    cpu_operations: m.row.summary.iterations + 1,
                    transfer: m.row.summary,
                    post: None,
                    cpu: CpuTime::used_since(before),
                    verified: m.row.verified,
                });
            }
        }
        let of = RowsOf {
            backend: "ucx",
            read_seed: ucx_bench::READ_SEED,
            until: Until::BothSides,
        };
        let (connector, peer) = bench.ferry_and_peer();
        let rows = split::rows(connector, &mut peer.io, of, cells, request.plan, progress);
        suite.across.extend(rows.await?);
        bench.exit().await
    }

    /// `ucx_perftest` in the same run: `ucp_put_bw` and `ucp_get` at every size from 4 KiB,
    /// `ucp_put_lat` at 4 KiB and `ucp_am_lat` at ferry's notification size, and the latency
    /// bound derived from the two.
    async fn floors(request: &PartRequest, suite: &mut Suite) {
        if perftest::program().is_none() {
            let why = "ucx_perftest: not installed (apt-get install ucx-utils)";
            suite.skipped.push(why.into());
            return;
        }
        let limit = Duration::from_secs(120);
        let bytes: u64 = if request.quick { 256 << 20 } else { 2 << 30 };
        let latency = if request.quick {
            (2_000, 200)
        } else {
            (20_000, 2_000)
        };
        let mut runs = Vec::new();
        for &size in &request.sizes {
            for direction in [Direction::Write, Direction::Read] {
                let (n, warm) = perftest::bandwidth_iterations(size, bytes);
                let test = ucx_bandwidth_test(direction);
                runs.push(perftest::run(test, size, n, warm, &[], limit).await);
            }
        }
        let page = 4 << 10;
        let put = perftest::run("ucp_put_lat", page, latency.0, latency.1, &[], limit).await;
        let am = perftest::run(
            "ucp_am_lat",
            NOTIFICATION_BYTES,
            latency.0,
            latency.1,
            &[],
            limit,
        );
        let am = am.await;
        if let (Ok(put), Ok(am)) = (&put, &am) {
            let bound = PUT_LATENCIES * put.p50_us + am.p50_us;
            suite.floors.push(Floor {
                backend: "ucx",
                test: UCX_LATENCY_BOUND.into(),
                size: page,
                p50: Duration::from_secs_f64(bound / 1e6),
                bytes_per_second: 0.0,
            });
        }
        runs.push(put);
        runs.push(am);
        for run in runs {
            match run {
                Ok(run) => suite.floors.push(Floor {
                    backend: "ucx",
                    test: run.test,
                    size: run.size,
                    p50: Duration::from_secs_f64(run.p50_us.max(0.0) / 1e6),
                    bytes_per_second: run.bytes_per_second,
                }),
                Err(e) => suite.skipped.push(format!("ucx floor: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_survive_the_command_line() {
        let request = PartRequest {
            sizes: vec![4096, 1 << 20],
            split_sizes: vec![1 << 20],
            descriptors: vec![1, 16, 4096],
            plan: IterationPlan {
                target: Duration::from_millis(80),
                min: 3,
                max: 200,
            },
            kv_blocks: Some(16),
            across: true,
            quick: true,
            out: PathBuf::from("/tmp/part.json"),
        };
        let text = request.json().to_string();
        assert_eq!(PartRequest::from_json(&text).unwrap(), request);
        let none = PartRequest {
            kv_blocks: None,
            ..request
        };
        assert_eq!(
            PartRequest::from_json(&none.json().to_string()).unwrap(),
            none
        );
        assert!(PartRequest::from_json("{\"sizes\":[1]}").is_err());
        assert!(PartRequest::from_json("nonsense").is_err());
    }
}
