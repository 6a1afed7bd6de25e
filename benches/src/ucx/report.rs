//! The results of a ferry-bench-ucx run: ferry's rows beside `ucx_perftest`'s figures from the
//! same run, with the two targets, as markdown and JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::perftest::PerfRun;
use super::Measured;
use crate::peer::Direction;
use crate::report::Machine;
use crate::stats::{gigabytes, micros, Summary};
use crate::units::format_size;

/// The smallest size compared with `ucp_put_bw`.
pub const BANDWIDTH_FROM: usize = 64 << 10;

/// The lowest acceptable ratio of ferry's write throughput to `ucp_put_bw`'s.
pub const BANDWIDTH_TARGET: f64 = 0.9;

/// The size of the latency target.
pub const LATENCY_SIZE: usize = 4 << 10;

/// How many put latencies the latency bound allows (plus one active-message latency).
pub const PUT_LATENCIES: f64 = 3.0;

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct UcxReport {
    /// The command line, as typed.
    pub command: String,
    /// When the run started.
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// Every `UCX_*` variable both ferry and ucx_perftest ran under.
    pub environment: Vec<(String, String)>,
    /// ferry's rows, in order.
    pub rows: Vec<Measured>,
    /// Why ferry measured nothing (or stopped early), if it did.
    pub ferry_error: Option<String>,
    /// `ucp_put_bw` per size, or why it failed.
    pub put_bw: Vec<(usize, Result<PerfRun, String>)>,
    /// `ucp_put_lat` at [`LATENCY_SIZE`].
    pub put_lat: Result<PerfRun, String>,
    /// `ucp_am_lat` at the size of ferry's notification.
    pub am_lat: Result<PerfRun, String>,
    /// Sizes not measured, and why.
    pub skipped: Vec<(usize, String)>,
    /// The whole run's wall time.
    pub wall: Duration,
}

/// A ratio and its verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The ratio.
    pub value: f64,
    /// Whether it meets its target.
    pub met: bool,
}

impl UcxReport {
    /// `ucp_put_bw` at `size`, bytes per second, if it ran.
    pub fn put_bw_at(&self, size: usize) -> Option<f64> {
        self.put_bw
            .iter()
            .find(|(s, _)| *s == size)
            .and_then(|(_, run)| run.as_ref().ok())
            .map(|run| run.bytes_per_second)
    }

    /// The latency bound: [`PUT_LATENCIES`] × `ucp_put_lat`'s p50 + `ucp_am_lat`'s p50, µs.
    pub fn latency_bound_us(&self) -> Option<f64> {
        let put = self.put_lat.as_ref().ok()?;
        let am = self.am_lat.as_ref().ok()?;
        Some(PUT_LATENCIES * put.p50_us + am.p50_us)
    }

    /// How a write row compares: throughput ÷ `ucp_put_bw` from [`BANDWIDTH_FROM`]; at
    /// [`LATENCY_SIZE`], p50 (both sides) ÷ the latency bound. Reads have no target.
    pub fn verdict(&self, measured: &Measured) -> Option<(Verdict, &'static str)> {
        let row = &measured.row;
        if row.direction != Direction::Write.name() {
            return None;
        }
        if row.size >= BANDWIDTH_FROM {
            let value = row.throughput() / self.put_bw_at(row.size)?;
            let met = value >= BANDWIDTH_TARGET;
            return Some((Verdict { value, met }, "GB/s ÷ ucp_put_bw GB/s, ≥ 0.9"));
        }
        if row.size == LATENCY_SIZE && row.in_flight == 1 {
            let value = micros(row.summary.p50) / self.latency_bound_us()?.max(1e-9);
            let met = value <= 1.0;
            return Some((Verdict { value, met }, "p50 ÷ (3 × put_lat + am_lat), ≤ 1"));
        }
        None
    }

    /// Whether every row's bytes were verified.
    pub fn verified(&self) -> bool {
        self.rows.iter().all(|r| r.row.verified)
    }

    /// The table and the baselines under it, as markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| size | op | in flight | iterations | p50 µs | p50 µs active side | p99 µs | GB/s \
             (mean) | ucp_put_bw GB/s | ratio | target | bytes |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n",
        );
        for measured in &self.rows {
            let row = &measured.row;
            let baseline = match self.put_bw_at(row.size) {
                Some(b) if row.direction == Direction::Write.name() => {
                    format!("{:.3}", gigabytes(b))
                }
                _ => "".into(),
            };
            let (ratio, target) = match self.verdict(measured) {
                Some((v, meaning)) => (
                    format!("{:.3}", v.value),
                    format!("{meaning}: {}", if v.met { "met" } else { "**missed**" }),
                ),
                None => ("".into(), "".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {baseline} | {ratio} | {target} | {} |",
                format_size(row.size),
                row.direction,
                row.in_flight,
                row.summary.iterations,
                micros(row.summary.p50),
                micros(measured.active.p50),
                micros(row.summary.p99),
                gigabytes(row.throughput()),
                if row.verified { "verified" } else { "**WRONG**" },
            );
        }
        if let Some(why) = &self.ferry_error {
            let _ = writeln!(out, "\nferry: **failed**: {why}");
        }
        out.push_str("\nBaselines, same run (ucx_perftest, server and client on 127.0.0.1):\n\n");
        for (size, run) in &self.put_bw {
            match run {
                Ok(r) => {
                    let _ = writeln!(
                        out,
                        "- ucp_put_bw {}: {:.3} GB/s ({} iterations, overhead p50 {:.3} µs)",
                        format_size(*size),
                        gigabytes(r.bytes_per_second),
                        r.iterations,
                        r.p50_us
                    );
                }
                Err(why) => {
                    let _ = writeln!(out, "- ucp_put_bw {}: {why}", format_size(*size));
                }
            }
        }
        for (name, run) in [("ucp_put_lat", &self.put_lat), ("ucp_am_lat", &self.am_lat)] {
            match run {
                Ok(r) => {
                    let _ = writeln!(
                        out,
                        "- {name} {}: p50 {:.3} µs one way, average {:.3} µs ({} iterations)",
                        format_size(r.size),
                        r.p50_us,
                        r.average_us,
                        r.iterations
                    );
                }
                Err(why) => {
                    let _ = writeln!(out, "- {name}: {why}");
                }
            }
        }
        if let Some(bound) = self.latency_bound_us() {
            let _ = writeln!(
                out,
                "- latency bound: 3 × put_lat p50 + am_lat p50 = {bound:.3} µs"
            );
        }
        for (size, why) in &self.skipped {
            let _ = writeln!(out, "- {} skipped: {why}", format_size(*size));
        }
        let _ = writeln!(
            out,
            "\nferry's p50/p99 run from just before begin_write/begin_read until both sides \
             know the operation finished (the active side's wait_for_completion, and the \
             passive side's, which returns when the notification arrives after the data); \
             the active side's own p50 is beside it. With N in flight a row times batches of \
             N writes, each on its own buffer, begun together and awaited together, until \
             both sides knew all N finished. GB/s is 10⁹ bytes per second: bytes × \
             operations ÷ their total time. ucp_put_bw keeps puts in flight back to \
             back (-O 0: no bound on outstanding puts) and counts bytes ÷ time at the \
             sender; its MB/s \
             (2²⁰) are converted. Latency tests report half a round trip. One verified \
             warm-up per row is not timed; the 4 KiB rows one at a time run as many \
             operations as ucp_put_lat, after a tenth as many untimed ones (unless \
             --max-iterations is given). Wall time of the run: {:.1} s.",
            self.wall.as_secs_f64()
        );
        out
    }

    /// The report as a markdown document: the command, the date, machine and environment,
    /// the table.
    pub fn markdown(&self) -> String {
        format!(
            "# ferry-bench-ucx\n\n- command: `{}`\n- date: {}\n- machine: {}\n- environment: \
             {}\n\n{}",
            self.command,
            self.date,
            self.machine.describe(),
            self.environment_text(),
            self.table()
        )
    }

    /// The `UCX_*` variables as `NAME=value`, or a note that none was set.
    pub fn environment_text(&self) -> String {
        if self.environment.is_empty() {
            return "no UCX_* variable set (UCX's defaults)".into();
        }
        let vars: Vec<String> = self
            .environment
            .iter()
            .map(|(name, value)| format!("`{name}={value}`"))
            .collect();
        vars.join(" ")
    }

    /// Every figure, as JSON (durations in µs, rates in bytes per second).
    pub fn json(&self) -> Value {
        let summary = |s: &Summary| {
            json!({"iterations": s.iterations, "p50_us": micros(s.p50), "p99_us": micros(s.p99),
                   "min_us": micros(s.min), "max_us": micros(s.max), "total_us": micros(s.total)})
        };
        let perf = |run: &Result<PerfRun, String>| match run {
            Ok(r) => json!({"test": r.test, "size": r.size, "iterations": r.iterations,
                            "p50_us": r.p50_us, "average_us": r.average_us,
                            "bytes_per_second": r.bytes_per_second}),
            Err(why) => json!({"failed": why}),
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|measured| {
                let row = &measured.row;
                json!({
                    "size": row.size,
                    "op": row.direction,
                    "in_flight": row.in_flight,
                    "both": summary(&row.summary),
                    "active": summary(&measured.active),
                    "bytes_per_second": row.throughput(),
                    "verified": row.verified,
                    "ratio": self.verdict(measured).map(|(v, meaning)| json!({
                        "value": v.value, "met": v.met, "meaning": meaning})),
                })
            })
            .collect();
        json!({
            "bench": "ferry-bench-ucx",
            "command": self.command,
            "date": self.date,
            "machine": self.machine.describe(),
            "environment": self.environment,
            "rows": rows,
            "ferry_error": self.ferry_error,
            "baselines": {
                "ucp_put_bw": self.put_bw.iter().map(|(_, r)| perf(r)).collect::<Vec<_>>(),
                "ucp_put_lat": perf(&self.put_lat),
                "ucp_am_lat": perf(&self.am_lat),
                "latency_bound_us": self.latency_bound_us(),
            },
            "skipped": self.skipped.iter().map(|(s, why)| json!({"size": s, "why": why})).collect::<Vec<_>>(),
            "wall_s": self.wall.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Row;

    fn perf(test: &str, size: usize, p50_us: f64, gbps: f64) -> Result<PerfRun, String> {
        Ok(PerfRun {
            test: test.into(),
            size,
            iterations: 100,
            p50_us,
            average_us: p50_us,
            bytes_per_second: gbps * 1e9,
        })
    }

    fn row(size: usize, us: u64) -> Measured {
        let s = Summary::from_samples(vec![Duration::from_micros(us); 10]).unwrap();
        Measured {
            row: Row {
                size,
                in_flight: 1,
                direction: "write",
                summary: s.clone(),
                verified: true,
                iperf_around: Vec::new(),
            },
            active: s,
        }
    }

    #[test]
    fn targets_against_same_run_baselines() {
        let report = UcxReport {
            command: "ferry-bench-ucx --quick".into(),
            date: "2026-01-01 00:00:00 UTC".into(),
            machine: Machine::detect(),
            environment: vec![("UCX_TLS".into(), "tcp".into())],
            rows: vec![row(4096, 10), row(1 << 20, 100)],
            ferry_error: None,
            put_bw: vec![(1 << 20, perf("ucp_put_bw", 1 << 20, 1.0, 10.0))],
            put_lat: perf("ucp_put_lat", 4096, 2.0, 0.0),
            am_lat: perf("ucp_am_lat", 36, 3.0, 0.0),
            skipped: Vec::new(),
            wall: Duration::from_secs(1),
        };
        // 10 µs against 3 × 2 + 3 = 9 µs: missed.
        let (latency, _) = report.verdict(&report.rows[0]).unwrap();
        assert!((latency.value - 10.0 / 9.0).abs() < 1e-9 && !latency.met);
        // 1 MiB in 100 µs is 10.49 GB/s against 10: met.
        let (bandwidth, _) = report.verdict(&report.rows[1]).unwrap();
        assert!(bandwidth.met && bandwidth.value > 1.0);
        let table = report.markdown();
        assert!(table.contains("`UCX_TLS=tcp`"), "{table}");
        assert!(
            table.contains("**missed**") && table.contains(": met"),
            "{table}"
        );
        assert_eq!(report.json()["rows"][1]["ratio"]["met"], true);
        // A batch at 4 KiB is no latency: it has no target.
        let mut batch = row(4096, 10);
        batch.row.in_flight = 8;
        assert!(report.verdict(&batch).is_none());
    }
}
