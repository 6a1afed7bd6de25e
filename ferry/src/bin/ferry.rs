//! The `ferry` command: `demo`, `probe`, `bench`.
//!
//! `ferry bench …` runs the `ferry-bench` program of the ferry-benches crate (which depends on
//! this one, so it cannot be built into it), the way cargo runs its subcommands: the
//! executable next to this one first, then on `PATH`, replacing this process with the
//! remaining arguments. When it is absent it fails saying how to build it.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ferry::demo::{DemoConfig, DemoReport};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Move tensors and KV-cache blocks between inference workers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Two workers on the default backend: a readable read by its peer and a writable written
    /// by its peer, every byte verified; prints throughput and per-operation latency.
    Demo {
        /// MiB per transfer.
        #[arg(long, default_value_t = 64)]
        mib: usize,
        /// Descriptors each transfer is split over.
        #[arg(long, default_value_t = 64)]
        descriptors: usize,
        /// Transfers of each pairing.
        #[arg(long, default_value_t = 8)]
        iterations: usize,
    },
    /// The backends in this build, which are usable here and why not, and what
    /// `Connector::auto()` would pick.
    Probe {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every usable backend, read and write, 4 KiB to 1 GiB, 1 to 4096 descriptors, in one
    /// process and across two, beside same-run baselines, and a KV-cache hand-off: runs the
    /// `ferry-bench` program (crate ferry-benches) with these arguments (`ferry bench --help`
    /// lists them; `ferry bench --quick --out DIR` takes under a minute).
    #[command(disable_help_flag = true)]
    Bench {
        /// The arguments for ferry-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// The program `ferry bench` runs.
const BENCH_PROGRAM: &str = "ferry-bench";

/// Why `ferry bench` could not run its program.
#[derive(Debug)]
enum BenchError {
    /// No `ferry-bench` next to this executable nor on `PATH`.
    NotFound {
        /// Every place looked at, in order.
        searched: Vec<PathBuf>,
    },
    /// It was found but could not be started.
    Exec {
        /// The program.
        program: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::NotFound { searched } => {
                write!(
                    f,
                    "`{BENCH_PROGRAM}` was not found next to this `ferry` nor on PATH; build \
                     both with\n    cargo build --release -p ferry -p ferry-benches\nand run \
                     target/release/ferry bench (looked in: "
                )?;
                let places: Vec<String> =
                    searched.iter().map(|p| p.display().to_string()).collect();
                write!(f, "{})", places.join(", "))
            }
            BenchError::Exec { program, source } => {
                write!(f, "cannot run {}: {source}", program.display())
            }
        }
    }
}

impl std::error::Error for BenchError {}

/// Where `ferry-bench` is: in `beside` (this executable's directory) first, then in each
/// directory of `path` (a `PATH` value). The error lists every place looked at.
fn find_bench(
    beside: Option<&Path>,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, BenchError> {
    let name = format!("{BENCH_PROGRAM}{}", std::env::consts::EXE_SUFFIX);
    let mut searched = Vec::new();
    let dirs = beside
        .map(Path::to_path_buf)
        .into_iter()
        .chain(path.into_iter().flat_map(std::env::split_paths));
    for dir in dirs {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(BenchError::NotFound { searched })
}

/// Runs `ferry-bench` with `args` in place of this process (on Unix; elsewhere as a child
/// whose exit status this process returns).
fn bench(args: Vec<OsString>) -> ExitCode {
    let exe = std::env::current_exe().ok();
    let beside = exe.as_deref().and_then(Path::parent);
    let path = std::env::var_os("PATH");
    let launched = find_bench(beside, path.as_deref()).and_then(|program| {
        let mut command = std::process::Command::new(&program);
        command.args(&args);
        launch(command).map_err(|source| BenchError::Exec { program, source })
    });
    match launched {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Replaces this process with `command`; returns only on failure.
#[cfg(unix)]
fn launch(mut command: std::process::Command) -> std::io::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    Err(command.exec())
}

/// Runs `command` to its end and passes its exit status on.
#[cfg(not(unix))]
fn launch(mut command: std::process::Command) -> std::io::Result<ExitCode> {
    let status = command.status()?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            mib,
            descriptors,
            iterations,
        } => demo(DemoConfig {
            bytes: mib << 20,
            descriptors,
            iterations,
        }),
        Command::Probe { json } => probe(json),
        Command::Bench { args } => bench(args),
    }
}

fn demo(config: DemoConfig) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry demo: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut shown = false;
    let report = runtime.block_on(ferry::demo::run(config, |done, total| {
        // Anything that takes more than a second shows progress.
        if started.elapsed() > Duration::from_secs(1) || shown {
            shown = true;
            eprint!(
                "\r  {done}/{total} transfers ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }));
    if shown {
        eprintln!();
    }
    match report {
        Ok(report) => {
            print_report(&report, config);
            if report.verified() {
                ExitCode::SUCCESS
            } else {
                eprintln!("ferry demo: DATA MISMATCH");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ferry demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(report: &DemoReport, config: DemoConfig) {
    println!(
        "ferry demo on the {} backend: {} MiB per transfer, {} descriptors, {} transfers per pairing",
        report.backend,
        config.bytes >> 20,
        report.pairings.first().map_or(0, |p| p.descriptors),
        config.iterations
    );
    println!(
        "{:<18} {:>9} {:>12} {:>12} {:>12}",
        "pairing", "verified", "GB/s", "p50 cycle", "max cycle"
    );
    for p in &report.pairings {
        println!(
            "{:<18} {:>9} {:>12.2} {:>9.0} µs {:>9.0} µs",
            p.name,
            if p.verified { "yes" } else { "NO" },
            p.throughput / 1e9,
            p.p50.as_secs_f64() * 1e6,
            p.max.as_secs_f64() * 1e6
        );
    }
}

fn probe(json: bool) -> ExitCode {
    let probe = ferry::probe();
    if json {
        match serde_json::to_string_pretty(&probe) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("ferry probe: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    println!("{:<6} {:<6} usable here", "backend", "built");
    for b in &probe.backends {
        let usable = match &b.unusable {
            None => "yes".to_string(),
            Some(why) => format!("no: {why}"),
        };
        println!(
            "{:<7} {:<6} {usable}",
            b.name,
            if b.built { "yes" } else { "no" }
        );
        match &b.transports {
            Some(Ok(found)) => print_transports(found),
            Some(Err(why)) => println!("{:<14} transports unknown: {why}", ""),
            None => {}
        }
        match &b.cuda {
            Some(Ok(())) => println!("{:<14} cuda device memory: yes", ""),
            Some(Err(why)) => println!("{:<14} cuda device memory: no: {why}", ""),
            None => {}
        }
    }
    match &probe.choice {
        Ok(name) => println!("Connector::auto() picks: {name} ({})", probe.reason),
        Err(e) => println!("Connector::auto() fails: {e}"),
    }
    ExitCode::SUCCESS
}

/// The lines under a backend's row: its environment, what it enabled, what it selected.
fn print_transports(found: &ferry::Transports) {
    let environment: Vec<String> = found
        .environment
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let selected: Vec<String> = found
        .selected
        .iter()
        .map(|lane| format!("{} ({})", lane.transport, lane.uses.join(" ")))
        .collect();
    let none = |list: Vec<String>, separator: &str| match list.is_empty() {
        true => "none".to_string(),
        false => list.join(separator),
    };
    println!("{:<14} environment: {}", "", none(environment, " "));
    println!("{:<14} enabled: {}", "", none(found.enabled.clone(), ", "));
    println!("{:<14} selected: {}", "", none(selected, ", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_is_found_beside_this_executable_before_path() {
        let root = std::env::temp_dir().join(format!("ferry-bench-find-{}", std::process::id()));
        let (beside, on_path) = (root.join("beside"), root.join("on-path"));
        std::fs::create_dir_all(&beside).unwrap();
        std::fs::create_dir_all(&on_path).unwrap();
        let name = format!("{BENCH_PROGRAM}{}", std::env::consts::EXE_SUFFIX);
        std::fs::write(on_path.join(&name), "").unwrap();
        let path = std::env::join_paths([&on_path]).unwrap();
        assert_eq!(
            find_bench(Some(&beside), Some(&path)).unwrap(),
            on_path.join(&name)
        );
        std::fs::write(beside.join(&name), "").unwrap();
        assert_eq!(
            find_bench(Some(&beside), Some(&path)).unwrap(),
            beside.join(&name)
        );
        let missing = root.join("missing");
        let error = find_bench(Some(&missing), None).unwrap_err();
        let text = error.to_string();
        assert!(matches!(&error, BenchError::NotFound { searched } if searched.len() == 1));
        assert!(
            text.contains("cargo build --release -p ferry -p ferry-benches"),
            "{text}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
