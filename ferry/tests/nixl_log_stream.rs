//! The UCX inside NIXL's wheel logs to standard error, never to standard output, which some
//! processes use as a data channel (the benchmarks' peers speak JSON lines on it, the
//! conformance suite's backend hosts a framed protocol).
//!
//! Regression: the wheel's UCX prints its log on standard output unless `UCX_LOG_FILE` says
//! otherwise, and `ferry probe` under `UCX_TLS=tcp,<unknown transport>` printed UCX's
//! `transport ... is not available` warning among its own output.
#![cfg(feature = "nixl")]

use std::process::Command;

/// A transport name UCX does not know, so that creating NIXL's UCX backend logs a warning.
const UNKNOWN: &str = "ferry-no-such-transport";

#[test]
fn nixl_ucx_logs_go_to_standard_error() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    let probe = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("probe")
        .env("UCX_TLS", format!("tcp,{UNKNOWN}"))
        .env_remove("UCX_LOG_FILE")
        .env_remove("FERRY_BACKEND")
        .output()
        .expect("ferry probe runs");
    let stdout = String::from_utf8_lossy(&probe.stdout);
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(probe.status.success(), "ferry probe failed: {stderr}");
    assert!(
        stdout.contains("nixl"),
        "the probe's own output is on standard output: {stdout}"
    );
    assert!(
        stderr.contains(UNKNOWN),
        "UCX's warning about the unknown transport reaches standard error: {stderr}"
    );
    assert!(
        !stdout.contains(UNKNOWN) && !stdout.contains("UCX "),
        "UCX's log stays off standard output: {stdout}"
    );
}
