//! The `ferry` command: `demo`, `probe`.

use std::io::Write as _;
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
