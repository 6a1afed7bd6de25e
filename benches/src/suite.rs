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
//!   GB/s ÷ iperf3 from 1 MiB, p50 ÷ a bare TCP ping-pong at 4 KiB), ferry's nixl backend
//!   against ferry-bench-nixl's peer beside a raw nixl-sys loop (ratio: ferry ÷ raw), and
//!   ferry's ucx backend against ferry-bench-ucx's peer beside `ucx_perftest` (ratio: ferry ÷
//!   `ucp_put_bw` or `ucp_get`; [`Floor`]); one descriptor per operation, and the same bytes
//!   split over more ([`crate::split`], ratio: GB/s ÷ the same row at one descriptor);
//! - **KV hand-off** ([`crate::handoff`]): a Llama-3-70B KV cache moved five ways in one
//!   process, and from a prefill process to a decode process ([`crate::kv`], [`KvAcrossRow`]);
//!   GB/s, the time until the first layer is usable, and GB/s ÷ memcpy of the hand-off's size.
//!
//! A part measured by another program (the ucx rows, by ferry-bench-ucx: NIXL and the system
//! UCX cannot share a process) comes back as this module's JSON and is read with
//! [`Suite::absorb`].
//!
//! CPU time is this process's user + system time over a row's operations ([`crate::cpu`]),
//! divided by them: in one process it covers both sides; across two, the active side only.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::baseline::{Iperf, PING_BYTES, PONG_BYTES};
use crate::cpu::CpuTime;
use crate::handoff::{HandoffRow, Variant};
use crate::kv::KvRow;
use crate::local::{LocalBackend, LocalRow};
use crate::peer::Direction;
use crate::plot::Series;
use crate::report::{Machine, THROUGHPUT_FROM};
use crate::stats::{gigabytes, micros, Summary};
use crate::units::format_size;

/// The smallest size a ucx row is compared with `ucx_perftest`'s bandwidth at (as in
/// ferry-bench-ucx).
pub const UCX_BANDWIDTH_FROM: usize = 64 << 10;

/// The `ucx_perftest` test a ucx row of `direction` is compared with.
pub fn ucx_bandwidth_test(direction: Direction) -> &'static str {
    match direction {
        Direction::Read => "ucp_get",
        Direction::Write => "ucp_put_bw",
    }
}

/// The name of the derived ucx latency floor: 3 × `ucp_put_lat` p50 + `ucp_am_lat` p50, the
/// bound of ferry-bench-ucx (a put, the flush's round trip, the notification).
pub const UCX_LATENCY_BOUND: &str = "3 × ucp_put_lat + ucp_am_lat";

/// A row measured between two processes.
#[derive(Debug, Clone, PartialEq)]
pub struct AcrossRow {
    /// `tcp`, `nixl` or `ucx`.
    pub backend: &'static str,
    /// How the bytes moved: `ferry`, `ferry, cached registrations` or `raw nixl-sys`.
    pub path: &'static str,
    /// Which way.
    pub direction: Direction,
    /// Bytes per operation, over all its descriptors.
    pub size: usize,
    /// Descriptors per operation on each side (nixlbench's batch size).
    pub descriptors: usize,
    /// Per operation, from just before the begin until it completed (for nixl and ucx, and
    /// rows of more than one descriptor, until both sides knew).
    pub transfer: Summary,
    /// Until the begin returned, where measured (rows of more than one descriptor).
    pub post: Option<Summary>,
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

/// A backend's raw floor measured by another program in the same run: `ucx_perftest`'s runs,
/// and the latency bound derived from them ([`UCX_LATENCY_BOUND`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    /// The backend it is the floor of (`ucx`).
    pub backend: &'static str,
    /// The test (`ucp_put_bw`, `ucp_get`, `ucp_put_lat`, `ucp_am_lat`) or
    /// [`UCX_LATENCY_BOUND`].
    pub test: String,
    /// Bytes per message.
    pub size: usize,
    /// Median latency (one way for `*_lat`) or overhead (bandwidth tests).
    pub p50: Duration,
    /// Overall bandwidth, bytes per second.
    pub bytes_per_second: f64,
}

/// The KV hand-off between two processes: a block set pulled by the decode process from the
/// prefill process's pool ([`crate::kv::Decode`]), one operation, both pools registered once.
#[derive(Debug, Clone, PartialEq)]
pub struct KvAcrossRow {
    /// `tcp` or `nixl`.
    pub backend: &'static str,
    /// The figures.
    pub row: KvRow,
    /// This (decode) process's CPU over the row, its verified warm-up included.
    pub cpu: Option<CpuTime>,
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
    /// KV hand-off rows, one process.
    pub handoff: Vec<HandoffRow>,
    /// KV hand-off rows, prefill process → decode process.
    pub kv_across: Vec<KvAcrossRow>,
    /// Floors measured by other programs (`ucx_perftest`).
    pub floors: Vec<Floor>,
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
    /// A run of `command` started at `date` that has measured nothing yet: no rows, no
    /// baselines (iperf3 `not measured`), on this machine.
    pub fn empty(command: String, date: String) -> Suite {
        Suite {
            command,
            date,
            machine: Machine::detect(),
            memcpy: Vec::new(),
            iperf: Err("not measured".into()),
            ping_pong: None,
            local: Vec::new(),
            across: Vec::new(),
            handoff: Vec::new(),
            kv_across: Vec::new(),
            floors: Vec::new(),
            skipped: Vec::new(),
            wall: Duration::ZERO,
        }
    }

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
            && self.kv_across.iter().all(|r| r.row.verified)
    }

    /// The floor `test` of `backend` at `size`, if measured.
    pub fn floor(&self, backend: &str, test: &str, size: usize) -> Option<&Floor> {
        self.floors
            .iter()
            .find(|f| f.backend == backend && f.test == test && f.size == size)
    }

    /// A two-process row's ratio against its floor and what it means: tcp GB/s ÷ iperf3 (from
    /// 1 MiB) or p50 ÷ ping-pong p50 (4 KiB, one descriptor); nixl ferry GB/s ÷ raw nixl-sys
    /// GB/s (same size and direction, one descriptor); ucx GB/s ÷ `ucp_put_bw` (writes) or
    /// `ucp_get` (reads) at the same size (from 64 KiB), or p50 ÷ [`UCX_LATENCY_BOUND`] (a
    /// 4 KiB write, one descriptor).
    pub fn across_ratio(&self, row: &AcrossRow) -> Option<(f64, &'static str)> {
        let p50 = |floor: Duration| row.transfer.p50.as_secs_f64() / floor.as_secs_f64().max(1e-12);
        match row.backend {
            "tcp" if row.size >= THROUGHPUT_FROM => {
                Some((row.throughput() / self.iperf_rate()?, "GB/s ÷ iperf3"))
            }
            "tcp" if row.size == PONG_BYTES && row.descriptors == 1 => {
                Some((p50(self.ping_pong.as_ref()?.p50), "p50 ÷ ping-pong p50"))
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
            "ucx" if row.size >= UCX_BANDWIDTH_FROM => {
                let test = ucx_bandwidth_test(row.direction);
                let floor = self.floor("ucx", test, row.size)?;
                let what = match row.direction {
                    Direction::Read => "GB/s ÷ ucp_get",
                    Direction::Write => "GB/s ÷ ucp_put_bw",
                };
                Some((row.throughput() / floor.bytes_per_second, what))
            }
            "ucx"
                if row.size == PONG_BYTES
                    && row.descriptors == 1
                    && row.direction == Direction::Write =>
            {
                let floor = self.floor("ucx", UCX_LATENCY_BOUND, PONG_BYTES)?;
                Some((p50(floor.p50), "p50 ÷ (3 × put_lat + am_lat)"))
            }
            _ => None,
        }
    }

    /// A row of more than one descriptor: its GB/s ÷ the GB/s of the row of the same backend,
    /// path, direction and size at one descriptor (what splitting the bytes costs).
    pub fn split_ratio(&self, row: &AcrossRow) -> Option<f64> {
        if row.descriptors <= 1 {
            return None;
        }
        let whole = self.across.iter().find(|r| {
            r.descriptors == 1
                && r.backend == row.backend
                && r.path == row.path
                && r.direction == row.direction
                && r.size == row.size
        })?;
        Some(row.throughput() / whole.throughput())
    }

    /// Takes in a part measured by another program (its [`Suite::json`]): its rows, floors
    /// and what it left out. A part that says `"skipped"` adds only that reason.
    pub fn absorb(&mut self, part: &Value) -> Result<(), String> {
        if let Some(why) = part["skipped"].as_str() {
            self.skipped.push(why.to_owned());
            return Ok(());
        }
        let rows = |key: &str| part[key].as_array().cloned().unwrap_or_default();
        for row in rows("one_process") {
            self.local
                .push(local_row(&row).ok_or(format!("a bad row: {row}"))?);
        }
        for row in rows("two_processes") {
            self.across
                .push(across_row(&row).ok_or(format!("a bad row: {row}"))?);
        }
        for row in rows("kv_handoff") {
            self.handoff
                .push(handoff_row(&row).ok_or(format!("a bad row: {row}"))?);
        }
        for floor in part["baselines"]["floors"].as_array().into_iter().flatten() {
            self.floors
                .push(floor_of(floor).ok_or(format!("a bad floor: {floor}"))?);
        }
        for why in part["skipped"].as_array().into_iter().flatten() {
            self.skipped.extend(why.as_str().map(str::to_owned));
        }
        Ok(())
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
                "### Two processes\n\n| backend | path | op | block size | batch size | total \
                 | iterations | B/W GB/s | p50 µs | p99 µs | avg post µs | p99 post µs \
                 | CPU µs/op (this side) | ratio to floor | GB/s ÷ 1 descriptor | bytes |\n\
                 |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|\n",
            );
            for r in &self.across {
                let ratio = self
                    .across_ratio(r)
                    .map_or(String::new(), |(v, what)| format!("{v:.3} ({what})"));
                let split = self
                    .split_ratio(r)
                    .map_or(String::new(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {ratio} \
                     | {split} | {} |",
                    r.backend,
                    r.path,
                    r.direction.name(),
                    format_size(r.size / r.descriptors.max(1)),
                    r.descriptors,
                    format_size(r.size),
                    r.transfer.iterations,
                    gigabytes(r.throughput()),
                    us(Some(r.transfer.p50)),
                    us(Some(r.transfer.p99)),
                    us(r.post.as_ref().map(mean)),
                    us(r.post.as_ref().map(|p| p.p99)),
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
        if !self.kv_across.is_empty() {
            out.push_str(
                "### KV hand-off (Llama-3-70B, BF16, prefill process → decode process)\n\n\
                 | backend | block set | blocks | MiB | descriptors | chunks | reads | begin p50 ms \
                 | transfer p50 ms | transfer p99 ms | first layer p50 ms | GB/s | GB/s ÷ memcpy \
                 | GB/s ÷ iperf3 | CPU ms/read (decode side) | bytes |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
            );
            for KvAcrossRow { backend, row, cpu } in &self.kv_across {
                let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
                let rate = row.throughput();
                let memcpy = self
                    .memcpy_rate(row.bytes as usize)
                    .map_or(String::new(), |m| format!("{:.3}", rate / m));
                let iperf = match (*backend, self.iperf_rate()) {
                    ("tcp", Some(i)) => format!("{:.3}", rate / i),
                    _ => String::new(),
                };
                let cpu = cpu.map_or(String::new(), |c| {
                    let n = u32::try_from(row.summary.iterations + 1).unwrap_or(u32::MAX);
                    ms(c.total() / n)
                });
                let _ = writeln!(
                    out,
                    "| {backend} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} \
                     | {memcpy} | {iperf} | {cpu} | {} |",
                    row.set.name(),
                    row.blocks,
                    row.bytes >> 20,
                    row.descriptors,
                    row.chunks,
                    row.summary.iterations,
                    ms(row.begin.p50),
                    ms(row.summary.p50),
                    ms(row.summary.p99),
                    // One read moves every layer: layer 0 is usable when it completes.
                    ms(row.summary.p50),
                    gigabytes(rate),
                    bytes_cell(row.verified),
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
        for f in &self.floors {
            let what = if f.test.ends_with("_lat") || f.test == UCX_LATENCY_BOUND {
                format!("p50 {:.2} µs", micros(f.p50))
            } else {
                format!("{:.3} GB/s", gigabytes(f.bytes_per_second))
            };
            let tool = if f.test == UCX_LATENCY_BOUND {
                f.test.clone()
            } else {
                format!("ucx_perftest -t {}", f.test)
            };
            let size = format_size(f.size);
            let _ = writeln!(out, "- {} floor, {tool}, {size}: {what}", f.backend);
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

    /// The lines of the plot of `direction`: ferry's rows of one descriptor per backend and
    /// mode (one process, two processes), then the baselines: memcpy per size, iperf3 as a
    /// level line across the sizes, the raw nixl-sys loop, and `ucx_perftest`'s bandwidth test
    /// for that direction.
    pub fn series(&self, direction: Direction) -> Vec<Series> {
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
        let local = self.local.iter().filter(|r| r.direction == direction);
        for r in local.filter(|r| r.descriptors == 1) {
            let name = format!("{}, one process", r.backend.name());
            add(name, r.size, r.throughput(), false);
        }
        let across = self.across.iter().filter(|r| r.direction == direction);
        for r in across.filter(|r| r.descriptors == 1) {
            let raw = r.path == "raw nixl-sys";
            let name = if raw {
                "raw nixl-sys loop, two processes".to_owned()
            } else if r.path == "ferry" {
                format!("{}, two processes", r.backend)
            } else {
                format!("{} {}, two processes", r.backend, r.path)
            };
            add(name, r.size, r.throughput(), raw);
        }
        let sizes: Vec<usize> = self.local.iter().map(|r| r.size).collect();
        let sizes: Vec<usize> = sizes
            .into_iter()
            .chain(self.across.iter().map(|r| r.size))
            .collect();
        for (size, s) in self.memcpy.iter().filter(|(size, _)| sizes.contains(size)) {
            add(
                "memcpy, one thread".into(),
                *size,
                s.throughput(*size),
                true,
            );
        }
        if let Some(rate) = self.iperf_rate() {
            if let (Some(&lo), Some(&hi)) = (sizes.iter().min(), sizes.iter().max()) {
                add("iperf3, one TCP stream".into(), lo, rate, true);
                add("iperf3, one TCP stream".into(), hi, rate, true);
            }
        }
        let test = ucx_bandwidth_test(direction);
        for f in self.floors.iter().filter(|f| f.test == test) {
            let name = format!("ucx_perftest -t {test}");
            add(name, f.size, f.bytes_per_second, true);
        }
        series
    }

    /// Every figure, as JSON: durations in microseconds, rates in bytes per second.
    pub fn json(&self) -> Value {
        let summary = summary_json;
        let cpu = |c: &Option<CpuTime>| c.as_ref().map(cpu_json);
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
                    "block_size": r.size / r.descriptors.max(1),
                    "batch_size": r.descriptors,
                    "bytes_per_second": r.throughput(),
                    "transfer": summary(&r.transfer),
                    "post": r.post.as_ref().map(summary),
                    "cpu": cpu(&r.cpu),
                    "cpu_operations": r.cpu_operations,
                    "cpu_per_operation_us": r.cpu_per_operation().map(micros),
                    "ratio": ratio.map(|(v, what)| json!({"value": v, "meaning": what})),
                    "ratio_vs_one_descriptor": self.split_ratio(r),
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
        let kv_across: Vec<Value> = self
            .kv_across
            .iter()
            .map(|KvAcrossRow { backend, row, cpu: c }| {
                json!({
                    "backend": backend,
                    "set": row.set.name(),
                    "blocks": row.blocks,
                    "bytes": row.bytes,
                    "descriptors": row.descriptors,
                    "chunks": row.chunks,
                    "bytes_per_second": row.throughput(),
                    "begin": summary(&row.begin),
                    "transfer": summary(&row.summary),
                    "first_layer": summary(&row.summary),
                    "cpu": cpu(c),
                    "ratio_vs_memcpy": self.memcpy_rate(row.bytes as usize).map(|m| row.throughput() / m),
                    "verified": row.verified,
                })
            })
            .collect();
        let floors: Vec<Value> = self
            .floors
            .iter()
            .map(|f| {
                json!({
                    "backend": f.backend,
                    "test": f.test,
                    "size": f.size,
                    "p50_us": micros(f.p50),
                    "bytes_per_second": f.bytes_per_second,
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
            "kv_handoff_two_processes": kv_across,
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
                "floors": floors,
            },
            "skipped": self.skipped,
            "verified": self.verified(),
            "wall_s": self.wall.as_secs_f64(),
        })
    }
}

/// A summary as JSON, in microseconds.
fn summary_json(s: &Summary) -> Value {
    json!({
        "iterations": s.iterations,
        "avg_us": micros(mean(s)),
        "p50_us": micros(s.p50),
        "p99_us": micros(s.p99),
        "min_us": micros(s.min),
        "max_us": micros(s.max),
        "total_us": micros(s.total),
    })
}

/// CPU time as JSON, in microseconds.
fn cpu_json(c: &CpuTime) -> Value {
    json!({"user_us": micros(c.user), "system_us": micros(c.system)})
}

/// A duration from a number of microseconds.
fn duration_of(us: &Value) -> Option<Duration> {
    let us = us.as_f64()?;
    (us.is_finite() && us >= 0.0).then(|| Duration::from_secs_f64(us / 1e6))
}

/// A count or size.
fn number_of(v: &Value) -> Option<usize> {
    usize::try_from(v.as_u64()?).ok()
}

/// A summary from [`summary_json`]'s form.
fn summary_of(v: &Value) -> Option<Summary> {
    Some(Summary {
        iterations: number_of(&v["iterations"])?,
        p50: duration_of(&v["p50_us"])?,
        p99: duration_of(&v["p99_us"])?,
        min: duration_of(&v["min_us"])?,
        max: duration_of(&v["max_us"])?,
        total: duration_of(&v["total_us"])?,
    })
}

/// CPU time from [`cpu_json`]'s form.
fn cpu_of(v: &Value) -> Option<CpuTime> {
    Some(CpuTime {
        user: duration_of(&v["user_us"])?,
        system: duration_of(&v["system_us"])?,
    })
}

/// `read` or `write`.
fn direction_of(v: &Value) -> Option<Direction> {
    match v.as_str()? {
        "read" => Some(Direction::Read),
        "write" => Some(Direction::Write),
        _ => None,
    }
}

/// The one of `known` that `v` names (rows keep `&'static str` names).
fn known_name(v: &Value, known: &[&'static str]) -> Option<&'static str> {
    let name = v.as_str()?;
    known.iter().copied().find(|k| *k == name)
}

/// Backends a two-process row or floor may name.
const BACKENDS: [&str; 3] = ["tcp", "nixl", "ucx"];

/// Paths a two-process row may name.
const PATHS: [&str; 3] = ["ferry", "raw nixl-sys", "ferry, cached registrations"];

/// A one-process row from [`Suite::json`]'s form.
fn local_row(v: &Value) -> Option<LocalRow> {
    Some(LocalRow {
        backend: LocalBackend::from_name(v["backend"].as_str()?)?,
        direction: direction_of(&v["op"])?,
        size: number_of(&v["size"])?,
        descriptors: number_of(&v["batch_size"])?,
        prepare: summary_of(&v["prepare"])?,
        post: summary_of(&v["post"])?,
        transfer: summary_of(&v["transfer"])?,
        cpu: cpu_of(&v["cpu"]),
        verified: v["verified"].as_bool()?,
    })
}

/// A two-process row from [`Suite::json`]'s form.
fn across_row(v: &Value) -> Option<AcrossRow> {
    Some(AcrossRow {
        backend: known_name(&v["backend"], &BACKENDS)?,
        path: known_name(&v["path"], &PATHS)?,
        direction: direction_of(&v["op"])?,
        size: number_of(&v["size"])?,
        descriptors: number_of(&v["batch_size"]).unwrap_or(1),
        transfer: summary_of(&v["transfer"])?,
        post: summary_of(&v["post"]),
        cpu: cpu_of(&v["cpu"]),
        cpu_operations: number_of(&v["cpu_operations"])?,
        verified: v["verified"].as_bool()?,
    })
}

/// A one-process KV hand-off row from [`Suite::json`]'s form.
fn handoff_row(v: &Value) -> Option<HandoffRow> {
    let variant = v["variant"].as_str()?;
    Some(HandoffRow {
        backend: LocalBackend::from_name(v["backend"].as_str()?)?,
        variant: Variant::ALL.into_iter().find(|x| x.name() == variant)?,
        blocks: u32::try_from(v["blocks"].as_u64()?).ok()?,
        bytes: v["bytes"].as_u64()?,
        operations: number_of(&v["operations"])?,
        descriptors: number_of(&v["descriptors"])?,
        prepare: summary_of(&v["prepare"])?,
        transfer: summary_of(&v["transfer"])?,
        first_layer: summary_of(&v["first_layer"])?,
        cpu: cpu_of(&v["cpu"]),
        verified: v["verified"].as_bool()?,
    })
}

/// A floor from [`Suite::json`]'s form.
fn floor_of(v: &Value) -> Option<Floor> {
    Some(Floor {
        backend: known_name(&v["backend"], &BACKENDS)?,
        test: v["test"].as_str()?.to_owned(),
        size: number_of(&v["size"])?,
        p50: duration_of(&v["p50_us"])?,
        bytes_per_second: v["bytes_per_second"].as_f64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(us: u64, n: usize) -> Summary {
        Summary::from_samples(vec![Duration::from_micros(us); n]).unwrap()
    }

    fn across(path: &'static str, backend: &'static str, us: u64) -> AcrossRow {
        AcrossRow {
            backend,
            path,
            direction: Direction::Read,
            size: 1 << 20,
            descriptors: 1,
            transfer: summary(us, 10),
            post: None,
            cpu: Some(CpuTime {
                user: Duration::from_millis(8),
                system: Duration::from_millis(3),
            }),
            cpu_operations: 11,
            verified: true,
        }
    }

    fn suite() -> Suite {
        let mut split = across("ferry", "tcp", 4000);
        split.descriptors = 256;
        split.post = Some(summary(30, 10));
        let mut ucx_write = across("ferry", "ucx", 250);
        ucx_write.direction = Direction::Write;
        let mut ucx_page = across("ferry", "ucx", 30);
        (ucx_page.direction, ucx_page.size) = (Direction::Write, 4096);
        let floor = |test: &str, size: usize, p50_us: u64, rate: f64| Floor {
            backend: "ucx",
            test: test.into(),
            size,
            p50: Duration::from_micros(p50_us),
            bytes_per_second: rate,
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
                split,
                ucx_write,
                ucx_page,
            ],
            handoff: Vec::new(),
            kv_across: Vec::new(),
            floors: vec![
                floor("ucp_put_bw", 1 << 20, 0, 8.0e9),
                floor(UCX_LATENCY_BOUND, 4096, 10, 0.0),
            ],
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
        // 256 descriptors in 4 ms against one in 1 ms: a quarter of the throughput.
        assert!((s.split_ratio(&s.across[3]).unwrap() - 0.25).abs() < 1e-9);
        assert!(s.split_ratio(&s.across[0]).is_none());
        // ucx: 1 MiB per 250 µs (4.194 GB/s) ÷ ucp_put_bw's 8 GB/s; 30 µs ÷ a 10 µs bound.
        let (ucx, what) = s.across_ratio(&s.across[4]).unwrap();
        assert!((ucx - 4.194_304 / 8.0).abs() < 1e-6 && what == "GB/s ÷ ucp_put_bw");
        let (page, what) = s.across_ratio(&s.across[5]).unwrap();
        assert!((page - 3.0).abs() < 1e-9 && what == "p50 ÷ (3 × put_lat + am_lat)");
        assert!(
            table.contains("| tcp | ferry | read | 1 MiB | 1 | 1 MiB | 10 | 1.049 | 1000.0 | 1000.0 |  |  | 1000.0 | 0.524 (GB/s ÷ iperf3) |  | verified |"),
            "{table}"
        );
        assert!(
            table.contains("| tcp | ferry | read | 4 KiB | 256 | 1 MiB | 10 | 0.262 | 4000.0 | 4000.0 | 30.0 | 30.0 | 1000.0 | 0.131 (GB/s ÷ iperf3) | 0.250 | verified |"),
            "{table}"
        );
        assert!(table.contains("- ucx floor, ucx_perftest -t ucp_put_bw, 1 MiB: 8.000 GB/s"));
        assert!(table.contains("left out: ucx: not in this build"));
        let json = s.json();
        assert_eq!(json["one_process"][0]["batch_size"], 16);
        assert_eq!(json["one_process"][0]["block_size"], 65536);
        assert_eq!(json["two_processes"][3]["batch_size"], 256);
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
    fn a_part_read_back_shows_the_same_rows() {
        let original = suite();
        let mut absorbed = Suite {
            local: Vec::new(),
            across: Vec::new(),
            floors: Vec::new(),
            skipped: Vec::new(),
            ..original.clone()
        };
        absorbed.absorb(&original.json()).unwrap();
        assert_eq!(absorbed.tables(), original.tables());
        assert_eq!(absorbed.across.len(), original.across.len());
        let mut skipped = absorbed.clone();
        skipped
            .absorb(&json!({"skipped": "ucx: no UCX here"}))
            .unwrap();
        assert_eq!(skipped.skipped.last().unwrap(), "ucx: no UCX here");
        let mut bad = original.json();
        bad["two_processes"][0]["backend"] = json!("carrier pigeon");
        assert!(absorbed.absorb(&bad).is_err());
    }

    #[test]
    fn series_hold_one_descriptor_rows_and_baselines() {
        let s = suite();
        let names: Vec<String> = s
            .series(Direction::Read)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("one process")),
            "16 descriptors: not plotted"
        );
        assert!(names.contains(&"memcpy, one thread".to_string()));
        assert!(names.contains(&"iperf3, one TCP stream".to_string()));
        assert!(names.contains(&"raw nixl-sys loop, two processes".to_string()));
        assert!(names.contains(&"tcp, two processes".to_string()));
        let writes = s.series(Direction::Write);
        let put = writes
            .iter()
            .find(|l| l.name == "ucx_perftest -t ucp_put_bw")
            .unwrap();
        assert!(put.baseline && put.points == vec![(1 << 20, 8.0e9)]);
        assert!(writes.iter().any(|l| l.name == "ucx, two processes"));
    }
}
