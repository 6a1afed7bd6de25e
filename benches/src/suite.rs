//! What `ferry bench` (the `ferry-bench` program) measured in one run, and how it is shown: a
//! markdown document, JSON, and the series of its plot ([`crate::plot`]).
//!
//! Three parts, each judged against baselines from the same run:
//!
//! - **one process** ([`crate::local`]): each usable backend between two Connectors of this
//!   process, read and write, sizes 4 KiB to 1 GiB, the same bytes split over 1 to 4096
//!   descriptors, in nixlbench's columns (block size, batch size, B/W, average and p99 of
//!   prepare, post and transfer); ratio: GB/s ÷ a single-thread memcpy of the same size;
//! - **two processes**: ferry's tcp backend against ferry-bench-tcp's peer process (ratios:
//!   GB/s ÷ iperf3 from 1 MiB, p50 ÷ a bare TCP ping-pong at 4 KiB), and ferry's nixl backend
//!   against ferry-bench-nixl's peer beside a raw nixl-sys loop (ratio: ferry ÷ raw);
//! - **KV hand-off** ([`crate::handoff`]): a Llama-3-70B KV cache moved five ways; GB/s, the
//!   time until the first layer is usable, and GB/s ÷ memcpy of the hand-off's size.
//!
//! CPU time is this process's user + system time over a row's operations ([`crate::cpu`]),
//! divided by them: in one process it covers both sides; across two, the active side only.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::baseline::{Iperf, PING_BYTES, PONG_BYTES};
use crate::cpu::CpuTime;
use crate::handoff::HandoffRow;
use crate::local::LocalRow;
use crate::peer::Direction;
use crate::plot::Series;
use crate::report::{Machine, THROUGHPUT_FROM};
use crate::stats::{gigabytes, micros, Summary};
use crate::units::format_size;

/// A row measured between two processes.
#[derive(Debug, Clone, PartialEq)]
pub struct AcrossRow {
    /// `tcp` or `nixl`.
    pub backend: &'static str,
    /// How the bytes moved: `ferry`, `ferry, cached registrations` or `raw nixl-sys`.
    pub path: &'static str,
    /// Which way.
    pub direction: Direction,
    /// Bytes per operation (one descriptor).
    pub size: usize,
    /// Per operation, from just before the begin until it completed (for nixl, until both
    /// sides knew).
    pub transfer: Summary,
    /// This process's CPU over the row, its one verified warm-up included.
    pub cpu: Option<CpuTime>,
    /// Operations the CPU time covers: the timed ones and the warm-ups of every path measured
    /// with it (nixl's paths alternate in one measurement).
    pub cpu_operations: usize,
    /// Whether the warm-up's bytes were right.
    pub verified: bool,
}

impl AcrossRow {
    /// Mean throughput, bytes per second.
    pub fn throughput(&self) -> f64 {
        self.transfer.throughput(self.size)
    }

    /// CPU per operation, user plus system.
    pub fn cpu_per_operation(&self) -> Option<Duration> {
        let operations = u32::try_from(self.cpu_operations.max(1)).ok()?;
        Some(self.cpu?.total() / operations)
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// The command line, as typed.
    pub command: String,
    /// When the run started.
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// Single-thread memcpy, per size (including the hand-off's).
    pub memcpy: Vec<(usize, Summary)>,
    /// iperf3 runs, or why none.
    pub iperf: Result<Vec<Iperf>, String>,
    /// The bare TCP ping-pong between the two processes, if tcp was measured across them.
    pub ping_pong: Option<Summary>,
    /// One-process rows.
    pub local: Vec<LocalRow>,
    /// Two-process rows.
    pub across: Vec<AcrossRow>,
    /// KV hand-off rows.
    pub handoff: Vec<HandoffRow>,
    /// What was left out, and why.
    pub skipped: Vec<String>,
    /// The run's wall time.
    pub wall: Duration,
}

/// Microseconds with one decimal, or empty.
fn us(d: Option<Duration>) -> String {
    d.map_or(String::new(), |d| format!("{:.1}", micros(d)))
}

/// A summary's mean.
fn mean(s: &Summary) -> Duration {
    s.total / u32::try_from(s.iterations.max(1)).unwrap_or(u32::MAX)
}

fn bytes_cell(verified: bool) -> &'static str {
    if verified {
        "verified"
    } else {
        "**WRONG**"
    }
}

impl Suite {
    /// The memcpy rate at `size`, bytes per second, if measured.
    pub fn memcpy_rate(&self, size: usize) -> Option<f64> {
        self.memcpy
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(s, summary)| summary.throughput(*s))
    }

    /// iperf3's mean rate, bytes per second.
    pub fn iperf_rate(&self) -> Option<f64> {
        let runs = self.iperf.as_ref().ok().filter(|r| !r.is_empty())?;
        Some(runs.iter().map(Iperf::bytes_per_second).sum::<f64>() / runs.len() as f64)
    }

    /// Whether every row's bytes were right.
    pub fn verified(&self) -> bool {
        self.local.iter().all(|r| r.verified)
            && self.across.iter().all(|r| r.verified)
            && self.handoff.iter().all(|r| r.verified)
    }

    /// A two-process row's ratio and what it means: tcp GB/s ÷ iperf3 (from 1 MiB) or p50 ÷
    /// ping-pong p50 (4 KiB); nixl ferry GB/s ÷ raw nixl-sys GB/s (same size and direction).
    pub fn across_ratio(&self, row: &AcrossRow) -> Option<(f64, &'static str)> {
        match row.backend {
            "tcp" if row.size >= THROUGHPUT_FROM => {
                Some((row.throughput() / self.iperf_rate()?, "GB/s ÷ iperf3"))
            }
            "tcp" if row.size == PONG_BYTES => {
                let floor = self.ping_pong.as_ref()?.p50.as_secs_f64().max(1e-12);
                Some((
                    row.transfer.p50.as_secs_f64() / floor,
                    "p50 ÷ ping-pong p50",
                ))
            }
            "nixl" if row.path != "raw nixl-sys" => {
                let raw = self.across.iter().find(|r| {
                    r.backend == "nixl"
                        && r.path == "raw nixl-sys"
                        && r.size == row.size
                        && r.direction == row.direction
                })?;
                Some((row.throughput() / raw.throughput(), "GB/s ÷ raw nixl-sys"))
            }
            _ => None,
        }
    }

    /// The tables, as markdown.
    pub fn tables(&self) -> String {
        let mut out = String::new();
        if !self.local.is_empty() {
            out.push_str(
                "### One process\n\n| backend | op | block size | batch size | total | iterations \
                 | B/W GB/s | avg prep µs | p99 prep µs | avg post µs | p99 post µs | avg tx µs \
                 | p50 tx µs | p99 tx µs | CPU µs/op | GB/s ÷ memcpy | bytes |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
            );
            for r in &self.local {
                let ratio = self
                    .memcpy_rate(r.size)
                    .map_or(String::new(), |m| format!("{:.3}", r.throughput() / m));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} \
                     | {ratio} | {} |",
                    r.backend.name(),
                    r.direction.name(),
                    format_size(r.size / r.descriptors.max(1)),
                    r.descriptors,
                    format_size(r.size),
                    r.transfer.iterations,
                    gigabytes(r.throughput()),
                    us(Some(mean(&r.prepare))),
                    us(Some(r.prepare.p99)),
                    us(Some(mean(&r.post))),
                    us(Some(r.post.p99)),
                    us(Some(mean(&r.transfer))),
                    us(Some(r.transfer.p50)),
                    us(Some(r.transfer.p99)),
                    us(r.cpu_per_operation()),
                    bytes_cell(r.verified),
                );
            }
            out.push('\n');
        }
        if !self.across.is_empty() {
            out.push_str(
                "### Two processes\n\n| backend | path | op | size | iterations | GB/s | p50 µs \
                 | p99 µs | CPU µs/op (this side) | ratio | bytes |\n\
                 |---|---|---|---:|---:|---:|---:|---:|---:|---|---|\n",
            );
            for r in &self.across {
                let ratio = self
                    .across_ratio(r)
                    .map_or(String::new(), |(v, what)| format!("{v:.3} ({what})"));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {ratio} | {} |",
                    r.backend,
                    r.path,
                    r.direction.name(),
                    format_size(r.size),
                    r.transfer.iterations,
                    gigabytes(r.throughput()),
                    us(Some(r.transfer.p50)),
                    us(Some(r.transfer.p99)),
                    us(r.cpu_per_operation()),
                    bytes_cell(r.verified),
                );
            }
            out.push('\n');
        }
        if !self.handoff.is_empty() {
            out.push_str(
                "### KV hand-off (Llama-3-70B, BF16, one process)\n\n| backend | variant | blocks \
                 | MiB | ops | descriptors | hand-offs | GB/s | prepare p50 ms | transfer p50 ms \
                 | first layer p50 ms | first layer ÷ transfer | GB/s ÷ memcpy | CPU ms/hand-off \
                 | bytes |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
            );
            for r in &self.handoff {
                let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
                let memcpy = self
                    .memcpy_rate(r.bytes as usize)
                    .map_or(String::new(), |m| format!("{:.3}", r.throughput() / m));
                let cpu = r.cpu.map_or(String::new(), |c| {
                    let n = u32::try_from(r.transfer.iterations.max(1)).unwrap_or(u32::MAX);
                    ms(c.total() / n)
                });
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {:.3} | {memcpy} \
                     | {cpu} | {} |",
                    r.backend.name(),
                    r.variant.name(),
                    r.blocks,
                    r.bytes >> 20,
                    r.operations,
                    r.descriptors,
                    r.transfer.iterations,
                    gigabytes(r.throughput()),
                    ms(r.prepare.p50),
                    ms(r.transfer.p50),
                    ms(r.first_layer.p50),
                    r.first_layer.p50.as_secs_f64() / r.transfer.p50.as_secs_f64().max(1e-12),
                    bytes_cell(r.verified),
                );
            }
            out.push('\n');
        }
        out.push_str("### Baselines, same run\n\n");
        for (size, s) in &self.memcpy {
            let _ = writeln!(
                out,
                "- memcpy, one thread, {}: {:.3} GB/s (p50 {:.2} µs, {} copies)",
                format_size(*size),
                gigabytes(s.throughput(*size)),
                micros(s.p50),
                s.iterations
            );
        }
        match (&self.iperf, self.iperf_rate()) {
            (Ok(runs), Some(rate)) => {
                let _ = writeln!(
                    out,
                    "- iperf3, one stream over 127.0.0.1: {:.3} GB/s (mean of {} run(s) of {} s)",
                    gigabytes(rate),
                    runs.len(),
                    runs.first().map_or(0, |r| r.seconds)
                );
            }
            (Err(why), _) => {
                let _ = writeln!(out, "- iperf3: skipped: {why}");
            }
            _ => out.push_str("- iperf3: no runs\n"),
        }
        if let Some(p) = &self.ping_pong {
            let _ = writeln!(
                out,
                "- tokio TCP ping-pong between the two processes, {PING_BYTES} B → {PONG_BYTES} B: \
                 p50 {} µs, p99 {} µs ({} round trips)",
                us(Some(p.p50)),
                us(Some(p.p99)),
                p.iterations
            );
        }
        for why in &self.skipped {
            let _ = writeln!(out, "- left out: {why}");
        }
        let _ = writeln!(
            out,
            "\nWall time of the run: {:.1} s.",
            self.wall.as_secs_f64()
        );
        out
    }

    /// The run as a markdown document: command, date, machine, tables.
    pub fn markdown(&self) -> String {
        format!(
            "# ferry bench\n\n- command: `{}`\n- date: {}\n- machine: {}\n\n{}",
            self.command,
            self.date,
            self.machine.describe(),
            self.tables()
        )
    }

    /// The plot's lines: reads of one descriptor per backend and mode (writes are in the
    /// tables), then the baselines
    /// (memcpy per size; iperf3 as a level line across the sizes).
    pub fn series(&self) -> Vec<Series> {
        let mut series: Vec<Series> = Vec::new();
        let mut add = |name: String, size: usize, rate: f64, baseline: bool| match series
            .iter_mut()
            .find(|s| s.name == name)
        {
            Some(s) => s.points.push((size, rate)),
            None => series.push(Series {
                name,
                points: vec![(size, rate)],
                baseline,
            }),
        };
        let read = |d: Direction| d == Direction::Read;
        for r in self
            .local
            .iter()
            .filter(|r| r.descriptors == 1 && read(r.direction))
        {
            let name = format!("{}, one process, {}", r.backend.name(), r.direction.name());
            add(name, r.size, r.throughput(), false);
        }
        for r in self.across.iter().filter(|r| read(r.direction)) {
            let name = format!(
                "{} {}, two processes, {}",
                r.backend,
                r.path,
                r.direction.name()
            );
            add(name, r.size, r.throughput(), false);
        }
        for (size, s) in &self.memcpy {
            add(
                "memcpy, one thread".into(),
                *size,
                s.throughput(*size),
                true,
            );
        }
        if let Some(rate) = self.iperf_rate() {
            let sizes = self.local.iter().map(|r| r.size);
            let sizes: Vec<usize> = sizes.chain(self.across.iter().map(|r| r.size)).collect();
            if let (Some(&lo), Some(&hi)) = (sizes.iter().min(), sizes.iter().max()) {
                add("iperf3, one TCP stream".into(), lo, rate, true);
                add("iperf3, one TCP stream".into(), hi, rate, true);
            }
        }
        series
    }

    /// Every figure, as JSON: durations in microseconds, rates in bytes per second.
    pub fn json(&self) -> Value {
        let summary = |s: &Summary| {
            json!({
                "iterations": s.iterations,
                "avg_us": micros(mean(s)),
                "p50_us": micros(s.p50),
                "p99_us": micros(s.p99),
                "min_us": micros(s.min),
                "max_us": micros(s.max),
                "total_us": micros(s.total),
            })
        };
        let cpu = |c: &Option<CpuTime>| {
            c.map(|c| json!({"user_us": micros(c.user), "system_us": micros(c.system)}))
        };
        let local: Vec<Value> = self
            .local
            .iter()
            .map(|r| {
                json!({
                    "backend": r.backend.name(),
                    "op": r.direction.name(),
                    "size": r.size,
                    "block_size": r.size / r.descriptors.max(1),
                    "batch_size": r.descriptors,
                    "bytes_per_second": r.throughput(),
                    "prepare": summary(&r.prepare),
                    "post": summary(&r.post),
                    "transfer": summary(&r.transfer),
                    "cpu": cpu(&r.cpu),
                    "cpu_per_operation_us": r.cpu_per_operation().map(micros),
                    "ratio_vs_memcpy": self.memcpy_rate(r.size).map(|m| r.throughput() / m),
                    "verified": r.verified,
                })
            })
            .collect();
        let across: Vec<Value> = self
            .across
            .iter()
            .map(|r| {
                let ratio = self.across_ratio(r);
                json!({
                    "backend": r.backend,
                    "path": r.path,
                    "op": r.direction.name(),
                    "size": r.size,
                    "bytes_per_second": r.throughput(),
                    "transfer": summary(&r.transfer),
                    "cpu": cpu(&r.cpu),
                    "cpu_operations": r.cpu_operations,
                    "cpu_per_operation_us": r.cpu_per_operation().map(micros),
                    "ratio": ratio.map(|(v, what)| json!({"value": v, "meaning": what})),
                    "verified": r.verified,
                })
            })
            .collect();
        let handoff: Vec<Value> = self
            .handoff
            .iter()
            .map(|r| {
                json!({
                    "backend": r.backend.name(),
                    "variant": r.variant.name(),
                    "blocks": r.blocks,
                    "bytes": r.bytes,
                    "operations": r.operations,
                    "descriptors": r.descriptors,
                    "bytes_per_second": r.throughput(),
                    "prepare": summary(&r.prepare),
                    "transfer": summary(&r.transfer),
                    "first_layer": summary(&r.first_layer),
                    "cpu": cpu(&r.cpu),
                    "ratio_vs_memcpy": self.memcpy_rate(r.bytes as usize).map(|m| r.throughput() / m),
                    "verified": r.verified,
                })
            })
            .collect();
        json!({
            "bench": "ferry bench",
            "command": self.command,
            "date": self.date,
            "machine": self.machine.json(),
            "one_process": local,
            "two_processes": across,
            "kv_handoff": handoff,
            "baselines": {
                "memcpy": self.memcpy.iter().map(|(size, s)| json!({
                    "size": size,
                    "bytes_per_second": s.throughput(*size),
                    "copy": summary(s),
                })).collect::<Vec<_>>(),
                "iperf3": match &self.iperf {
                    Ok(runs) => json!({
                        "runs_bits_per_second": runs.iter().map(|r| r.bits_per_second).collect::<Vec<_>>(),
                        "bytes_per_second": self.iperf_rate(),
                    }),
                    Err(why) => json!({"skipped": why}),
                },
                "ping_pong": self.ping_pong.as_ref().map(summary),
            },
            "skipped": self.skipped,
            "verified": self.verified(),
            "wall_s": self.wall.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalBackend;

    fn summary(us: u64, n: usize) -> Summary {
        Summary::from_samples(vec![Duration::from_micros(us); n]).unwrap()
    }

    fn suite() -> Suite {
        let across = |path: &'static str, backend: &'static str, us: u64| AcrossRow {
            backend,
            path,
            direction: Direction::Read,
            size: 1 << 20,
            transfer: summary(us, 10),
            cpu: Some(CpuTime {
                user: Duration::from_millis(8),
                system: Duration::from_millis(3),
            }),
            cpu_operations: 11,
            verified: true,
        };
        Suite {
            command: "ferry-bench --quick".into(),
            date: "2026-01-01 00:00:00 UTC".into(),
            machine: Machine::detect(),
            memcpy: vec![(1 << 20, summary(100, 10))],
            iperf: Ok(vec![Iperf {
                bits_per_second: 8.0 * 2.0e9,
                seconds: 1,
            }]),
            ping_pong: Some(summary(20, 100)),
            local: vec![LocalRow {
                backend: LocalBackend::Tcp,
                direction: Direction::Write,
                size: 1 << 20,
                descriptors: 16,
                prepare: summary(10, 4),
                post: summary(5, 4),
                transfer: summary(1000, 4),
                cpu: Some(CpuTime {
                    user: Duration::from_millis(3),
                    system: Duration::from_millis(1),
                }),
                verified: true,
            }],
            across: vec![
                across("ferry", "tcp", 1000),
                across("raw nixl-sys", "nixl", 500),
                across("ferry", "nixl", 1000),
            ],
            handoff: Vec::new(),
            skipped: vec!["ucx: not in this build".into()],
            wall: Duration::from_secs(9),
        }
    }

    #[test]
    fn ratios_against_same_run_baselines() {
        let s = suite();
        // 1 MiB per ms is 1.048576 GB/s; memcpy 1 MiB per 100 µs is 10.48576 GB/s.
        let table = s.tables();
        assert!(
            table.contains("| tcp | write | 64 KiB | 16 | 1 MiB | 4 | 1.049 | 10.0 | 10.0 | 5.0 | 5.0 | 1000.0 | 1000.0 | 1000.0 | 1000.0 | 0.100 | verified |"),
            "{table}"
        );
        let (tcp, what) = s.across_ratio(&s.across[0]).unwrap();
        assert!((tcp - 0.524_288).abs() < 1e-6 && what == "GB/s ÷ iperf3");
        let (nixl, what) = s.across_ratio(&s.across[2]).unwrap();
        assert!((nixl - 0.5).abs() < 1e-9 && what == "GB/s ÷ raw nixl-sys");
        assert!(s.across_ratio(&s.across[1]).is_none());
        assert!(
            table.contains("| 1000.0 | 0.524 (GB/s ÷ iperf3) | verified |"),
            "{table}"
        );
        assert!(table.contains("left out: ucx: not in this build"));
        let json = s.json();
        assert_eq!(json["one_process"][0]["batch_size"], 16);
        assert_eq!(json["one_process"][0]["block_size"], 65536);
        assert_eq!(json["verified"], true);
        assert!(
            (json["two_processes"][0]["cpu_per_operation_us"]
                .as_f64()
                .unwrap()
                - 1000.0)
                .abs()
                < 1e-6
        );
    }

    #[test]
    fn series_hold_one_descriptor_rows_and_baselines() {
        let s = suite();
        let names: Vec<String> = s.series().into_iter().map(|l| l.name).collect();
        assert!(
            !names.iter().any(|n| n.contains("one process")),
            "16 descriptors: not plotted"
        );
        assert!(names.contains(&"memcpy, one thread".to_string()));
        assert!(names.contains(&"iperf3, one TCP stream".to_string()));
        assert!(names.contains(&"nixl raw nixl-sys, two processes, read".to_string()));
    }
}
