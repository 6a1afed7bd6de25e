//! The results of a run: a markdown table with ratios against the same-run baselines, and
//! the same figures as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::baseline::{Iperf, PING_BYTES, PONG_BYTES};
use crate::stats::{gigabytes, micros, Summary};
use crate::units::format_size;

/// The smallest size compared with iperf3's throughput.
pub const THROUGHPUT_FROM: usize = 1 << 20;

/// The lowest acceptable ratio of ferry's throughput to iperf3's.
pub const THROUGHPUT_TARGET: f64 = 0.9;

/// The highest acceptable ratio of ferry's p50 to the ping-pong's p50, at [`PONG_BYTES`].
pub const LATENCY_TARGET: f64 = 2.0;

/// One measured size, direction and number of operations in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Bytes per operation.
    pub size: usize,
    /// Operations in flight at once: 1 for one at a time; N for batches of N operations
    /// begun together and awaited together, each on its own buffer.
    pub in_flight: usize,
    /// `read` or `write`.
    pub direction: &'static str,
    /// The timed operations, or with more than one in flight the timed batches.
    pub summary: Summary,
    /// Whether the warm-up's bytes were verified.
    pub verified: bool,
    /// iperf3's rates (bytes per second) in the runs just before and just after this row, when
    /// the run bracketed its rows; empty otherwise. The row's ratio is taken against their
    /// mean, so a load that comes and goes on a shared machine weighs on both sides alike.
    pub iperf_around: Vec<f64>,
}

impl Row {
    /// The iperf3 rate this row is judged against: the mean of [`Row::iperf_around`], if any.
    pub fn bracket_rate(&self) -> Option<f64> {
        if self.iperf_around.is_empty() {
            None
        } else {
            Some(self.iperf_around.iter().sum::<f64>() / self.iperf_around.len() as f64)
        }
    }

    /// Mean throughput, bytes per second: in flight × bytes × iterations ÷ total time (for
    /// one in flight, bytes × operations ÷ total operation time; for N, the bytes of every
    /// batch ÷ total batch time).
    pub fn throughput(&self) -> f64 {
        self.summary
            .throughput(self.size.saturating_mul(self.in_flight.max(1)))
    }
}

/// How a row compares with its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ratio {
    /// ferry GB/s ÷ iperf3 GB/s; higher is better.
    Throughput(f64),
    /// ferry p50 ÷ ping-pong p50; lower is better.
    Latency(f64),
}

impl Ratio {
    /// The ratio.
    pub fn value(self) -> f64 {
        match self {
            Ratio::Throughput(v) | Ratio::Latency(v) => v,
        }
    }

    /// Whether it meets its target.
    pub fn met(self) -> bool {
        match self {
            Ratio::Throughput(v) => v >= THROUGHPUT_TARGET,
            Ratio::Latency(v) => v <= LATENCY_TARGET,
        }
    }

    /// The target, as text.
    pub fn target(self) -> String {
        match self {
            Ratio::Throughput(_) => format!("≥ {THROUGHPUT_TARGET}"),
            Ratio::Latency(_) => format!("≤ {LATENCY_TARGET:.1}"),
        }
    }

    /// What is divided by what.
    pub fn meaning(self) -> &'static str {
        match self {
            Ratio::Throughput(_) => "GB/s ÷ iperf3",
            Ratio::Latency(_) => "p50 ÷ ping-pong p50",
        }
    }
}

/// The machine the run was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// The CPU model, from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory in bytes, from /proc/meminfo.
    pub memory: Option<u64>,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads what it can about this machine; what it cannot is `unknown`.
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
            .map(|m| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory: meminfo("MemTotal:"),
            kernel: if kernel.is_empty() {
                "unknown".into()
            } else {
                kernel
            },
        }
    }

    /// The machine as a JSON object: `cpus`, `cpu_model`, `memory_bytes`, `kernel`.
    pub fn json(&self) -> Value {
        json!({
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "memory_bytes": self.memory,
            "kernel": self.kernel,
        })
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        let memory = self.memory.map_or("unknown memory".into(), |m| {
            format!("{:.1} GiB", m as f64 / f64::from(1u32 << 30))
        });
        format!(
            "{} CPUs ({}), {memory}, Linux {}",
            self.cpus, self.cpu_model, self.kernel
        )
    }
}

/// A `/proc/meminfo` field, in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The command line, as typed.
    pub command: String,
    /// When the run started.
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// The backend measured.
    pub backend: &'static str,
    /// Measured sizes and directions, in order.
    pub rows: Vec<Row>,
    /// Sizes not measured, and why.
    pub skipped: Vec<(usize, String)>,
    /// Each iperf3 run (before and after the backend), or why there were none.
    pub iperf: Result<Vec<Iperf>, String>,
    /// The ping-pong round trips.
    pub ping_pong: Summary,
    /// Ping-pong runs just before and just after the latency rows, when the run took them:
    /// the latency ratio is taken against the mean of their p50s (else against `ping_pong`),
    /// since a vCPU that halts between round trips wakes slower than a busy one.
    pub ping_pong_around: Vec<Summary>,
    /// The whole run's wall time.
    pub wall: Duration,
}

impl Report {
    /// iperf3's mean received rate over its runs, bytes per second.
    pub fn iperf_rate(&self) -> Option<f64> {
        let runs = self.iperf.as_ref().ok().filter(|r| !r.is_empty())?;
        Some(runs.iter().map(Iperf::bytes_per_second).sum::<f64>() / runs.len() as f64)
    }

    /// The ping-pong p50 latency rows are judged against: the mean of the runs around them,
    /// or the run's one.
    pub fn ping_pong_p50(&self) -> Duration {
        if self.ping_pong_around.is_empty() {
            self.ping_pong.p50
        } else {
            self.ping_pong_around
                .iter()
                .map(|s| s.p50)
                .sum::<Duration>()
                / self.ping_pong_around.len() as u32
        }
    }

    /// How `row` compares with its baseline, where one applies: throughput from
    /// [`THROUGHPUT_FROM`] bytes (at any number in flight) against the iperf3 runs around the
    /// row, or the whole run's when it was not bracketed; latency at [`PONG_BYTES`] (one
    /// operation in flight only: a batch's time is not one operation's).
    pub fn ratio(&self, row: &Row) -> Option<Ratio> {
        if row.size >= THROUGHPUT_FROM {
            let baseline = row.bracket_rate().or_else(|| self.iperf_rate())?;
            Some(Ratio::Throughput(row.throughput() / baseline))
        } else if row.size == PONG_BYTES && row.in_flight == 1 {
            let floor = self.ping_pong_p50().as_secs_f64();
            Some(Ratio::Latency(
                row.summary.p50.as_secs_f64() / floor.max(1e-12),
            ))
        } else {
            None
        }
    }

    /// Whether `row`'s ratio is held to its target. Latency is judged one operation at a
    /// time. Throughput is judged as bandwidth tools judge it (ucx_perftest's window of
    /// outstanding operations, nixlbench's batches, iperf3's stream): on the row with the most
    /// operations in flight for that size and direction. A row one at a time beside such a row
    /// still shows its ratio, which then includes a request's round trip per operation.
    pub fn judged(&self, row: &Row) -> bool {
        match self.ratio(row) {
            Some(Ratio::Throughput(_)) => !self.rows.iter().any(|other| {
                other.size == row.size
                    && other.direction == row.direction
                    && other.in_flight > row.in_flight
            }),
            Some(Ratio::Latency(_)) => true,
            None => false,
        }
    }

    /// Whether every row's bytes were verified.
    pub fn verified(&self) -> bool {
        self.rows.iter().all(|r| r.verified)
    }

    /// The results table and the baselines under it, as markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| size | op | in flight | iterations | p50 µs | p99 µs | GB/s (mean) | iperf3 around \
             | ratio | target | bytes |\n",
        );
        out.push_str("|---:|---|---:|---:|---:|---:|---:|---|---|---|---|\n");
        for row in &self.rows {
            let (ratio, target) = match self.ratio(row) {
                Some(r) if self.judged(row) => (
                    format!("{:.2} ({})", r.value(), r.meaning()),
                    format!(
                        "{} {}",
                        r.target(),
                        if r.met() { "met" } else { "**missed**" }
                    ),
                ),
                Some(r) => (
                    format!("{:.2} ({})", r.value(), r.meaning()),
                    "not judged: see the row in flight".into(),
                ),
                None => ("".into(), "".into()),
            };
            let around: Vec<String> = row
                .iperf_around
                .iter()
                .map(|rate| format!("{:.3}", gigabytes(*rate)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.3} | {} | {ratio} | {target} | {} |",
                format_size(row.size),
                row.direction,
                row.in_flight,
                row.summary.iterations,
                micros(row.summary.p50),
                micros(row.summary.p99),
                gigabytes(row.throughput()),
                around.join(" / "),
                if row.verified {
                    "verified"
                } else {
                    "**WRONG**"
                },
            );
        }
        out.push('\n');
        out.push_str("Baselines, same run:\n\n");
        match &self.iperf {
            Ok(runs) if !runs.is_empty() => {
                let each: Vec<String> = runs
                    .iter()
                    .map(|r| format!("{:.3}", gigabytes(r.bytes_per_second())))
                    .collect();
                let _ = writeln!(
                    out,
                    "- iperf3, one stream over 127.0.0.1: {:.3} GB/s (mean of {} run{} of {} s: {} GB/s)",
                    gigabytes(self.iperf_rate().unwrap_or(0.0)),
                    runs.len(),
                    if runs.len() == 1 { "" } else { "s" },
                    runs[0].seconds,
                    each.join(", "),
                );
            }
            Ok(_) => out.push_str("- iperf3: skipped: no runs\n"),
            Err(why) => {
                let _ = writeln!(out, "- iperf3: skipped: {why}");
            }
        }
        let _ = writeln!(
            out,
            "- tokio TCP ping-pong, {PING_BYTES} B request → {PONG_BYTES} B answer, TCP_NODELAY, \
             {} round trips: p50 {:.1} µs, p99 {:.1} µs",
            self.ping_pong.iterations,
            micros(self.ping_pong.p50),
            micros(self.ping_pong.p99),
        );
        if !self.ping_pong_around.is_empty() {
            let p50s: Vec<String> = self
                .ping_pong_around
                .iter()
                .map(|s| format!("{:.1}", micros(s.p50)))
                .collect();
            let _ = writeln!(
                out,
                "- the same ping-pong just before and just after the 4 KiB rows: p50 {} µs; the \
                 latency ratio is taken against their mean, {:.1} µs",
                p50s.join(" and "),
                micros(self.ping_pong_p50()),
            );
        }
        for (size, why) in &self.skipped {
            let _ = writeln!(out, "- {} skipped: {why}", format_size(*size));
        }
        let _ = writeln!(
            out,
            "\nGB/s is 10⁹ bytes per second, mean over the timed operations (bytes × iterations ÷ \
             total operation time); p50/p99 are per operation, from just before begin_read / \
             begin_write to wait_for_completion returning Ok. Rows with N > 1 in flight time \
             batches: N operations, each on its own buffer, begun together and awaited \
             together; their iterations are batches, their p50/p99 are per batch (just before \
             the first begin to the last of the N completions), and their GB/s is N × size × \
             batches ÷ total batch time. One verified warm-up (operation or batch) per row is \
             not timed. \"iperf3 around\" lists the iperf3 runs just before and just after a \
             row, in GB/s; a row that has them is compared with their mean, any other \
             throughput row with the mean of the whole run's iperf3 runs. Throughput is held to \
             its target on the row with the most operations in flight for its size and \
             direction, as bandwidth tools measure; a row one at a time beside it pays a \
             request's round trip per operation and is shown, not judged. Wall time of the \
             run: {:.1} s.",
            self.wall.as_secs_f64()
        );
        out
    }

    /// The report as a markdown document: the command, the date and machine, the table.
    pub fn markdown(&self) -> String {
        format!(
            "# ferry-bench-{}\n\n- command: `{}`\n- date: {}\n- machine: {}\n\n{}",
            self.backend,
            self.command,
            self.date,
            self.machine.describe(),
            self.table()
        )
    }

    /// Every figure, as JSON. Durations are in microseconds, rates in bytes per second. A row's
    /// `latency` is per operation when its `in_flight` is 1 and per batch of `in_flight`
    /// operations otherwise (`latency_per` says which).
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
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let ratio = self.ratio(row);
                json!({
                    "size": row.size,
                    "op": row.direction,
                    "in_flight": row.in_flight,
                    "latency_per": if row.in_flight > 1 { "batch" } else { "operation" },
                    "latency": summary(&row.summary),
                    "bytes_per_second": row.throughput(),
                    "iperf3_around_bytes_per_second": row.iperf_around,
                    "verified": row.verified,
                    "ratio": ratio.map(|r| json!({
                        "kind": match r { Ratio::Throughput(_) => "throughput_vs_iperf3", Ratio::Latency(_) => "p50_vs_ping_pong_p50" },
                        "value": r.value(),
                        "target": r.target(),
                        "judged": self.judged(row),
                        "met": r.met(),
                    })),
                })
            })
            .collect();
        let iperf = match &self.iperf {
            Ok(runs) => json!({
                "runs_bits_per_second": runs.iter().map(|r| r.bits_per_second).collect::<Vec<_>>(),
                "seconds": runs.first().map(|r| r.seconds),
                "bytes_per_second": self.iperf_rate(),
            }),
            Err(why) => json!({ "skipped": why }),
        };
        json!({
            "bench": format!("ferry-bench-{}", self.backend),
            "command": self.command,
            "date": self.date,
            "machine": {
                "cpus": self.machine.cpus,
                "cpu_model": self.machine.cpu_model,
                "memory_bytes": self.machine.memory,
                "kernel": self.machine.kernel,
            },
            "rows": rows,
            "skipped": self.skipped.iter().map(|(s, why)| json!({"size": s, "why": why})).collect::<Vec<_>>(),
            "baselines": {
                "iperf3": iperf,
                "ping_pong": {
                    "request_bytes": PING_BYTES,
                    "answer_bytes": PONG_BYTES,
                    "latency": summary(&self.ping_pong),
                    "around_latency_rows": self.ping_pong_around.iter().map(summary).collect::<Vec<_>>(),
                    "judged_against_p50_us": micros(self.ping_pong_p50()),
                },
            },
            "wall_s": self.wall.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(us: u64, n: usize) -> Summary {
        Summary::from_samples(vec![Duration::from_micros(us); n]).unwrap()
    }

    fn report(iperf: Result<Vec<Iperf>, String>) -> Report {
        Report {
            command: "ferry-bench-tcp --quick".into(),
            date: "2026-01-01 00:00:00 UTC".into(),
            machine: Machine::detect(),
            backend: "tcp",
            rows: vec![
                Row {
                    size: 4096,
                    in_flight: 1,
                    direction: "read",
                    summary: summary(60, 10),
                    verified: true,
                    iperf_around: Vec::new(),
                },
                Row {
                    size: 1 << 20,
                    in_flight: 1,
                    direction: "write",
                    summary: summary(1000, 10),
                    verified: true,
                    iperf_around: Vec::new(),
                },
                Row {
                    size: 4096,
                    in_flight: 8,
                    direction: "read",
                    summary: summary(120, 10),
                    verified: true,
                    iperf_around: Vec::new(),
                },
                Row {
                    size: 1 << 20,
                    in_flight: 8,
                    direction: "write",
                    summary: summary(4000, 10),
                    verified: true,
                    iperf_around: Vec::new(),
                },
            ],
            skipped: vec![(1 << 30, "not enough memory".into())],
            iperf,
            ping_pong: summary(40, 100),
            ping_pong_around: Vec::new(),
            wall: Duration::from_secs(3),
        }
    }

    #[test]
    fn ratios_against_baselines() {
        let iperf = Iperf {
            bits_per_second: 8.0 * 2.0e9,
            seconds: 3,
        };
        let r = report(Ok(vec![iperf]));
        let latency = r.ratio(&r.rows[0]).unwrap();
        assert!(matches!(latency, Ratio::Latency(v) if (v - 1.5).abs() < 1e-9));
        assert!(latency.met());
        // 1 MiB per ms is 1.048576 GB/s, against 2 GB/s.
        let throughput = r.ratio(&r.rows[1]).unwrap();
        assert!((throughput.value() - 0.524_288).abs() < 1e-6);
        assert!(!throughput.met());
        let table = r.markdown();
        assert!(
            table.contains("| 4 KiB | read | 1 | 10 | 60.0 | 60.0 |"),
            "{table}"
        );
        assert!(table.contains("1 GiB skipped: not enough memory"));
        assert_eq!(r.json()["rows"][1]["ratio"]["met"], false);
        assert_eq!(r.json()["rows"][1]["in_flight"], 1);
    }

    #[test]
    fn batch_rows_count_every_operation_in_flight() {
        let iperf = Iperf {
            bits_per_second: 8.0 * 2.0e9,
            seconds: 3,
        };
        let r = report(Ok(vec![iperf]));
        // 8 × 1 MiB per 4 ms batch, 10 batches: 8 × 1048576 × 10 B ÷ 0.04 s = 2.097152 GB/s.
        let batch = &r.rows[3];
        assert!((batch.throughput() - 2.097_152e9).abs() < 1.0);
        let throughput = r.ratio(batch).unwrap();
        assert!(matches!(throughput, Ratio::Throughput(v) if (v - 1.048_576).abs() < 1e-6));
        assert!(throughput.met());
        // A 4 KiB batch's time is not one operation's: no latency ratio.
        assert!(r.ratio(&r.rows[2]).is_none());
        // Throughput is judged on the row with the most in flight; the 1 MiB write one at a
        // time beside it is shown, not judged.
        assert!(r.judged(batch));
        assert!(!r.judged(&r.rows[1]));
        assert!(r.judged(&r.rows[0]), "latency is judged one at a time");
        assert!(r.table().contains("| not judged: see the row in flight |"));
        assert_eq!(r.json()["rows"][1]["ratio"]["judged"], false);
        let table = r.table();
        assert!(
            table.contains(
                "| 1 MiB | write | 8 | 10 | 4000.0 | 4000.0 | 2.097 |  | 1.05 (GB/s ÷ iperf3) |"
            ),
            "{table}"
        );
        assert!(table.contains("| 4 KiB | read | 8 | 10 | 120.0 | 120.0 | 0.273 |  |  |"));
        let json = r.json();
        assert_eq!(json["rows"][3]["in_flight"], 8);
        assert_eq!(json["rows"][3]["latency_per"], "batch");
        assert_eq!(json["rows"][0]["latency_per"], "operation");
        assert!(json["rows"][2]["ratio"].is_null());
    }

    #[test]
    fn a_bracketed_row_is_judged_against_the_runs_around_it() {
        let iperf = Iperf {
            bits_per_second: 8.0 * 4.0e9,
            seconds: 3,
        };
        let mut r = report(Ok(vec![iperf]));
        // 1 MiB per ms against the mean of 1 and 3 GB/s, not the whole run's 4 GB/s.
        r.rows[1].iperf_around = vec![1.0e9, 3.0e9];
        let throughput = r.ratio(&r.rows[1]).unwrap();
        assert!((throughput.value() - 0.524_288).abs() < 1e-6);
        // The row beside it has no bracket and keeps the whole run's baseline.
        let batch = r.ratio(&r.rows[3]).unwrap();
        assert!((batch.value() - 0.524_288).abs() < 1e-6);
        assert!(r
            .table()
            .contains("| 1.049 | 1.000 / 3.000 | 0.52 (GB/s ÷ iperf3) |"));
        assert_eq!(
            r.json()["rows"][1]["iperf3_around_bytes_per_second"][1],
            3.0e9
        );
    }

    #[test]
    fn latency_is_judged_against_the_ping_pongs_around_it() {
        let mut r = report(Err("not installed".into()));
        // 60 µs against the mean of 20 and 40 µs, not the run's 40 µs.
        r.ping_pong_around = vec![summary(20, 10), summary(40, 10)];
        assert!(matches!(r.ratio(&r.rows[0]), Some(Ratio::Latency(v)) if (v - 2.0).abs() < 1e-9));
        assert!(r.table().contains("p50 20.0 and 40.0 µs"));
        assert_eq!(
            r.json()["baselines"]["ping_pong"]["judged_against_p50_us"],
            30.0
        );
    }

    #[test]
    fn no_iperf_leaves_the_column_empty() {
        let r = report(Err("not installed".into()));
        assert!(r.ratio(&r.rows[1]).is_none());
        assert!(r.table().contains("- iperf3: skipped: not installed"));
        assert_eq!(r.json()["baselines"]["iperf3"]["skipped"], "not installed");
    }
}
