//! The results of a nixl run: a markdown table of every path beside the raw loop of the same
//! size and direction, the cycle, and the same figures as JSON.
//!
//! Targets: ferry's throughput at least [`THROUGHPUT_TARGET`] × raw from [`THROUGHPUT_FROM`]
//! bytes up; at most [`ADDED_TARGET_US`] µs added to a [`LATENCY_SIZE`]-byte operation (ferry
//! p50 − raw p50); and a cycle at least [`CYCLE_TARGET`] × faster than the same cycle between
//! two Dynamo Python workers. That last one needs a Dynamo figure: [`super::dynamo`] measures
//! one where the Dynamo venv exists and puts it in [`NixlReport::dynamo_cycle`]
//! ([`CycleBaseline`]); without it the table says the target is pending.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::raw::Polling;
use super::{Measured, Path, Sources};
use crate::report::Machine;
use crate::stats::{gigabytes, micros, Summary};
use crate::units::format_size;

/// The smallest size judged by throughput.
pub const THROUGHPUT_FROM: usize = 1 << 20;

/// The lowest acceptable ratio of ferry's throughput to the raw loop's.
pub const THROUGHPUT_TARGET: f64 = 0.95;

/// The size judged by the time ferry adds to one operation.
pub const LATENCY_SIZE: usize = 4 << 10;

/// The most microseconds ferry may add to one [`LATENCY_SIZE`] operation (p50 − raw p50).
pub const ADDED_TARGET_US: f64 = 5.0;

/// How many times faster than Dynamo's the cycle must be (Dynamo p50 ÷ ferry p50).
pub const CYCLE_TARGET: f64 = 30.0;

/// A cycle measured elsewhere to compare ferry's with: the same cycle (create_readable, then
/// begin_read, then both sides complete) between two Dynamo Python workers, as
/// [`super::dynamo::measure`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleBaseline {
    /// What was measured and how, for the report (versions, command).
    pub source: String,
    /// Bytes per cycle.
    pub size: usize,
    /// Its cycles.
    pub summary: Summary,
}

/// How a ferry row compares with the raw row of its size and direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// ferry GB/s ÷ raw GB/s; higher is better.
    Throughput(f64),
    /// ferry p50 − raw p50, µs; lower is better.
    Added(f64),
}

impl Verdict {
    /// Whether it meets its target.
    pub fn met(self) -> bool {
        match self {
            Verdict::Throughput(v) => v >= THROUGHPUT_TARGET,
            Verdict::Added(us) => us <= ADDED_TARGET_US,
        }
    }

    /// The target, as text.
    pub fn target(self) -> String {
        match self {
            Verdict::Throughput(_) => format!("≥ {THROUGHPUT_TARGET} × raw"),
            Verdict::Added(_) => format!("≤ {ADDED_TARGET_US} µs added"),
        }
    }
}

/// Everything one nixl run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct NixlReport {
    /// The command line, as typed.
    pub command: String,
    /// When the run started.
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// Every path, size and direction measured, in order.
    pub rows: Vec<Measured>,
    /// The ferry cycle, if measured.
    pub cycle: Option<Measured>,
    /// Dynamo's cycle, when a source provides one (none does yet).
    pub dynamo_cycle: Option<CycleBaseline>,
    /// Sizes not measured, and why.
    pub skipped: Vec<(usize, String)>,
    /// The `UCX_*`, `NIXL_*` and `FERRY_NIXL_*` environment both processes ran with.
    pub environment: Vec<(String, String)>,
    /// Which memory ferry's timed operations sent from.
    pub sources: Sources,
    /// How the raw loop polled.
    pub raw_polling: Polling,
    /// Rounds the paths alternated in.
    pub rounds: usize,
    /// The whole run's wall time.
    pub wall: Duration,
}

/// `row`'s throughput ÷ `base`'s.
fn throughput_over(row: &Measured, base: &Measured) -> f64 {
    row.throughput() / base.throughput().max(1e-12)
}

/// `row`'s p50 − `base`'s p50, µs.
fn added_over(row: &Measured, base: &Measured) -> f64 {
    micros(row.both.p50) - micros(base.both.p50)
}

/// The environment variables that shape NIXL and UCX here, sorted.
pub fn environment() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("UCX_") || k.starts_with("NIXL_") || k.starts_with("FERRY_NIXL_")
        })
        .collect();
    vars.sort();
    vars
}

impl NixlReport {
    /// The row of `path` at `row`'s size and direction.
    fn row_of(&self, path: Path, row: &Measured) -> Option<&Measured> {
        self.rows
            .iter()
            .find(|r| r.path == path && r.size == row.size && r.direction == row.direction)
    }

    /// The raw row of `row`'s size and direction, which every other row is compared with
    /// (none for the raw row itself). Both ferry paths are judged against it, whether they
    /// register per operation or not, as the raw loop registers once; the row of
    /// [`Path::RawPerOp`] shows what registering per operation costs the raw loop itself.
    pub fn raw_of(&self, row: &Measured) -> Option<&Measured> {
        (row.path != Path::Raw)
            .then(|| self.row_of(Path::Raw, row))
            .flatten()
    }

    /// `row`'s throughput ÷ the raw row's ([`NixlReport::raw_of`]).
    pub fn throughput_ratio(&self, row: &Measured) -> Option<f64> {
        Some(throughput_over(row, self.raw_of(row)?))
    }

    /// `row`'s p50 − the raw row's p50, µs ([`NixlReport::raw_of`]).
    pub fn added_micros(&self, row: &Measured) -> Option<f64> {
        Some(added_over(row, self.raw_of(row)?))
    }

    /// The target `row` is judged by, where one applies: throughput from
    /// [`THROUGHPUT_FROM`], added time at [`LATENCY_SIZE`].
    pub fn verdict(&self, row: &Measured) -> Option<Verdict> {
        if row.path.is_raw() {
            return None;
        }
        if row.size >= THROUGHPUT_FROM {
            self.throughput_ratio(row).map(Verdict::Throughput)
        } else if row.size == LATENCY_SIZE {
            self.added_micros(row).map(Verdict::Added)
        } else {
            None
        }
    }

    /// Dynamo's cycle p50 ÷ ferry's, when both were measured at the same size.
    pub fn cycle_ratio(&self) -> Option<f64> {
        let ferry = self.cycle.as_ref()?;
        let dynamo = self
            .dynamo_cycle
            .as_ref()
            .filter(|d| d.size == ferry.size)?;
        Some(dynamo.summary.p50.as_secs_f64() / ferry.both.p50.as_secs_f64().max(1e-12))
    }

    /// Whether every measured warm-up delivered the right bytes.
    pub fn verified(&self) -> bool {
        self.rows.iter().chain(&self.cycle).all(|r| r.verified)
    }

    /// The tables and the notes under them, as markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| size | op | path | iterations | p50 µs | p99 µs | active p50 µs | GB/s (mean) \
             | ÷ raw GB/s | p50 − raw p50 µs | target | bytes |\n",
        );
        out.push_str("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
        for row in &self.rows {
            let ratio = self
                .throughput_ratio(row)
                .map_or(String::new(), |r| format!("{r:.2}"));
            let added = self
                .added_micros(row)
                .map_or(String::new(), |us| format!("{us:+.1}"));
            let target = self.verdict(row).map_or(String::new(), |v| {
                format!(
                    "{} {}",
                    v.target(),
                    if v.met() { "met" } else { "**missed**" }
                )
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {ratio} | {added} | \
                 {target} | {} |",
                format_size(row.size),
                row.direction.name(),
                row.path.describe(),
                row.both.iterations,
                micros(row.both.p50),
                micros(row.both.p99),
                micros(row.active.p50),
                gigabytes(row.throughput()),
                if row.verified {
                    "verified"
                } else {
                    "**WRONG**"
                },
            );
        }
        if let Some(cycle) = &self.cycle {
            out.push('\n');
            out.push_str(
                "| cycle | size | iterations | p50 µs | p99 µs | mean µs | active p50 µs | bytes \
                 |\n",
            );
            out.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
            let mean = |s: &Summary| micros(s.total) / s.iterations.max(1) as f64;
            let _ = writeln!(
                out,
                "| ferry: create_readable (peer) + begin_read, both complete | {} | {} | {:.1} \
                 | {:.1} | {:.1} | {:.1} | {} |",
                format_size(cycle.size),
                cycle.both.iterations,
                micros(cycle.both.p50),
                micros(cycle.both.p99),
                mean(&cycle.both),
                micros(cycle.active.p50),
                if cycle.verified {
                    "verified"
                } else {
                    "**WRONG**"
                },
            );
            match &self.dynamo_cycle {
                Some(dynamo) => {
                    let _ = writeln!(
                        out,
                        "| Dynamo: {} | {} | {} | {:.1} | {:.1} | {:.1} |  |  |",
                        dynamo.source,
                        format_size(dynamo.size),
                        dynamo.summary.iterations,
                        micros(dynamo.summary.p50),
                        micros(dynamo.summary.p99),
                        mean(&dynamo.summary),
                    );
                }
                None => out.push_str(
                    "| Dynamo: two Python workers, same cycle | | | not measured by this \
                     program | | | | |\n",
                ),
            }
            out.push('\n');
            match self.cycle_ratio() {
                Some(ratio) => {
                    let _ = writeln!(
                        out,
                        "Cycle: Dynamo p50 ÷ ferry p50 = {ratio:.1} (target ≥ {CYCLE_TARGET} {})",
                        if ratio >= CYCLE_TARGET {
                            "met"
                        } else {
                            "**missed**"
                        }
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "Cycle: target ≥ {CYCLE_TARGET} × faster than Dynamo's pending (no \
                         Dynamo figure at this size in this run)."
                    );
                }
            }
        }
        out.push('\n');
        for (size, why) in &self.skipped {
            let _ = writeln!(out, "- {} skipped: {why}", format_size(*size));
        }
        let environment = if self.environment.is_empty() {
            "none set".to_owned()
        } else {
            self.environment
                .iter()
                .map(|(k, v)| format!("`{k}={v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- UCX/NIXL environment of both processes: {environment}\n\
             \n\
             p50/p99 and GB/s are per operation until both sides knew it finished (the later of \
             the active side's completion and the peer's, whose instant it reports by the \
             shared system clock); active p50 is until the active side's own completion. GB/s \
             is 10⁹ bytes per second, bytes × operations ÷ their total time. ÷ raw GB/s and \
             p50 − raw p50 compare with the raw nixl-sys row of the same size and direction, \
             which registers its memory once; both ferry paths are judged against it. The raw \
             loop registering per operation (both sides; its target deregisters before it \
             reports, as a ferry passive operation does) shows what that costs NIXL itself, and \
             is not judged. \
             The paths ran in {} alternating rounds; one verified warm-up per path, size and \
             direction is not timed (ferry's over its own pattern buffers). {} The raw loop \
             polled NIXL with `--raw-polling {}`. The cycle's time runs from just before the request for \
             the readable is written to the peer until both sides knew the read finished. Wall \
             time of the run: {:.1} s.",
            self.rounds,
            match self.sources {
                Sources::Shared => {
                    "ferry's timed operations sent the raw loop's own source buffers (a read \
                     pulled the peer's raw buffer, a write sent this side's), each path landing \
                     in its own buffer (`--ferry-sources shared`)."
                }
                Sources::Own => {
                    "ferry's timed operations sent its own pattern buffers \
                     (`--ferry-sources own`)."
                }
            },
            self.raw_polling.key(),
            self.wall.as_secs_f64()
        );
        out
    }

    /// The report as a markdown document: the command, the date and machine, the tables.
    pub fn markdown(&self) -> String {
        format!(
            "# ferry-bench-nixl\n\n- command: `{}`\n- date: {}\n- machine: {}\n\n{}",
            self.command,
            self.date,
            self.machine.describe(),
            self.table()
        )
    }

    /// Every figure, as JSON. Durations are in microseconds, rates in bytes per second.
    pub fn json(&self) -> Value {
        let summary = |s: &Summary| {
            json!({
                "iterations": s.iterations,
                "p50_us": micros(s.p50),
                "p99_us": micros(s.p99),
                "min_us": micros(s.min),
                "max_us": micros(s.max),
                "total_us": micros(s.total),
            })
        };
        let measured = |row: &Measured| {
            json!({
                "size": row.size,
                "op": row.direction.name(),
                "path": row.path.key(),
                "both_sides": summary(&row.both),
                "active_side": summary(&row.active),
                "bytes_per_second": row.throughput(),
                "verified": row.verified,
                "finished_in_post": row.finished_in_post,
            })
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut value = measured(row);
                value["throughput_vs_raw"] = json!(self.throughput_ratio(row));
                value["added_us_vs_raw_p50"] = json!(self.added_micros(row));
                // Beside the raw loop doing the same registration work, for ferry's default.
                let per_op = self
                    .row_of(Path::RawPerOp, row)
                    .filter(|_| row.path == Path::Ferry);
                value["throughput_vs_raw_per_op"] = json!(per_op.map(|r| throughput_over(row, r)));
                value["added_us_vs_raw_per_op_p50"] = json!(per_op.map(|r| added_over(row, r)));
                value["target"] = json!(self.verdict(row).map(|v| json!({
                    "kind": match v {
                        Verdict::Throughput(_) => "throughput_vs_raw",
                        Verdict::Added(_) => "added_us_vs_raw_p50",
                    },
                    "target": v.target(),
                    "met": v.met(),
                })));
                value
            })
            .collect();
        json!({
            "bench": "ferry-bench-nixl",
            "command": self.command,
            "date": self.date,
            "machine": {
                "cpus": self.machine.cpus,
                "cpu_model": self.machine.cpu_model,
                "memory_bytes": self.machine.memory,
                "kernel": self.machine.kernel,
            },
            "environment": self.environment.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "rounds": self.rounds,
            "ferry_sources": self.sources.key(),
            "raw_polling": self.raw_polling.key(),
            "rows": rows,
            "cycle": self.cycle.as_ref().map(measured),
            "dynamo_cycle": self.dynamo_cycle.as_ref().map(|d| json!({
                "source": d.source,
                "size": d.size,
                "latency": summary(&d.summary),
            })),
            "cycle_dynamo_p50_over_ferry_p50": self.cycle_ratio(),
            "cycle_target": CYCLE_TARGET,
            "skipped": self.skipped.iter().map(|(s, why)| json!({"size": s, "why": why})).collect::<Vec<_>>(),
            "wall_s": self.wall.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Direction;

    fn summary(us: u64, n: usize) -> Summary {
        Summary::from_samples(vec![Duration::from_micros(us); n]).unwrap()
    }

    fn row(path: Path, size: usize, us: u64) -> Measured {
        Measured {
            path,
            direction: Direction::Read,
            size,
            both: summary(us, 10),
            active: summary(us, 10),
            verified: true,
            finished_in_post: None,
        }
    }

    fn report() -> NixlReport {
        NixlReport {
            command: "ferry-bench-nixl --quick".into(),
            date: "2026-01-01 00:00:00 UTC".into(),
            machine: Machine::detect(),
            rows: vec![
                row(Path::Raw, 4096, 3),
                row(Path::Ferry, 4096, 10),
                row(Path::FerryCached, 4096, 6),
                row(Path::Raw, 1 << 20, 100),
                row(Path::Ferry, 1 << 20, 104),
            ],
            cycle: Some(row(Path::Ferry, 1 << 20, 200)),
            dynamo_cycle: None,
            skipped: vec![(1 << 30, "not enough memory".into())],
            environment: vec![("UCX_NET_DEVICES".into(), "lo".into())],
            sources: Sources::Shared,
            raw_polling: Polling::Backoff,
            rounds: 4,
            wall: Duration::from_secs(3),
        }
    }

    #[test]
    fn ferry_rows_are_judged_against_raw() {
        let r = report();
        assert_eq!(r.verdict(&r.rows[0]), None);
        assert_eq!(r.verdict(&r.rows[1]), Some(Verdict::Added(7.0)));
        assert!(!Verdict::Added(7.0).met());
        assert!(Verdict::Added(3.0).met());
        let Some(Verdict::Throughput(ratio)) = r.verdict(&r.rows[4]) else {
            panic!("no throughput verdict");
        };
        assert!((ratio - 100.0 / 104.0).abs() < 1e-9);
        assert!(Verdict::Throughput(ratio).met());
        let table = r.table();
        assert!(
            table.contains("| 4 KiB | read | ferry | 10 | 10.0 | 10.0 | 10.0 | 0.410 | 0.30 | +7.0 | ≤ 5 µs added **missed** | verified |"),
            "{table}"
        );
        assert!(
            table.contains("| 1 MiB | read | ferry | 10 | 104.0 |"),
            "{table}"
        );
        assert!(table.contains("≥ 0.95 × raw met"), "{table}");
        assert!(table.contains("`UCX_NET_DEVICES=lo`"), "{table}");
        let json = r.json();
        assert_eq!(json["rows"][1]["added_us_vs_raw_p50"], 7.0);
        assert!(json["rows"][1]["added_us_vs_raw_per_op_p50"].is_null());
        assert!(json["rows"][0]["target"].is_null());
        assert_eq!(json["rows"][4]["target"]["met"], true);
    }

    #[test]
    fn the_raw_loop_registering_per_operation_is_shown_not_judged() {
        let mut r = report();
        r.rows = vec![
            row(Path::Raw, 4096, 3),
            row(Path::RawPerOp, 4096, 8),
            row(Path::Ferry, 4096, 10),
            row(Path::FerryCached, 4096, 6),
        ];
        // Both ferry paths are judged against the raw loop registering once.
        assert_eq!(r.verdict(&r.rows[1]), None);
        assert_eq!(r.verdict(&r.rows[2]), Some(Verdict::Added(7.0)));
        assert_eq!(r.verdict(&r.rows[3]), Some(Verdict::Added(3.0)));
        let json = r.json();
        assert_eq!(json["rows"][1]["added_us_vs_raw_p50"], 5.0);
        assert!(json["rows"][1]["target"].is_null());
        // ferry's default beside the raw loop doing the same registration work, in the JSON.
        assert_eq!(json["rows"][2]["added_us_vs_raw_per_op_p50"], 2.0);
        assert!(json["rows"][3]["added_us_vs_raw_per_op_p50"].is_null());
        let table = r.table();
        assert!(
            table.contains("| 4 KiB | read | raw nixl-sys, registered per operation | 10 | 8.0 | 8.0 | 8.0 | 0.512 | 0.38 | +5.0 |  | verified |"),
            "{table}"
        );
    }

    #[test]
    fn the_dynamo_cycle_is_pending_until_a_source_gives_one() {
        let mut r = report();
        assert_eq!(r.cycle_ratio(), None);
        assert!(r.table().contains("pending"), "{}", r.table());
        assert!(r.json()["dynamo_cycle"].is_null());
        r.dynamo_cycle = Some(CycleBaseline {
            source: "two Python workers".into(),
            size: 1 << 20,
            summary: summary(6000, 20),
        });
        assert_eq!(r.cycle_ratio(), Some(30.0));
        assert!(r
            .table()
            .contains("Dynamo p50 ÷ ferry p50 = 30.0 (target ≥ 30 met)"));
        // A figure at another size is not compared.
        r.dynamo_cycle.as_mut().unwrap().size = 4096;
        assert_eq!(r.cycle_ratio(), None);
    }
}
