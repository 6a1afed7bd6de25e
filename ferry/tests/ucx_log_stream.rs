//! UCX's log goes to standard error, never to standard output, which some processes use as a
//! data channel (the conformance suite's backend hosts speak a framed protocol on it, the
//! benchmarks' peers JSON lines).
//!
//! Regression (issue 5): under `UCX_TLS=posix,cma,self` with
//! `ErrorHandling::PeerIfSupported`, deciding the error handling tries peer mode, which no
//! transport there supports, and UCX logs `UCX  ERROR   no active messages transport ...`.
//! UCX prints its log on standard output by default; in the two-process conformance suite
//! that line landed in a backend host's protocol pipe, and every rule in which the host
//! connected hung until its 60 s limit.
#![cfg(feature = "ucx")]

mod ucx_child;

use std::time::Duration;

use ferry::ucx::{ErrorHandling, UcxConfig};

/// Set in the child process's environment.
const CHILD: &str = "FERRY_UCX_LOG_CHILD";

/// What the child prints on standard output when it is done.
const DONE: &str = "LOG-CHILD-DONE";

/// The child process of [`ucx_logs_go_to_standard_error`] (run by it, never on its own):
/// checks that a connect works with peer error handling where supported, which under
/// `UCX_TLS=posix,cma,self` makes UCX log an error for the peer-mode attempt first.
#[test]
#[ignore = "the child process of ucx_logs_go_to_standard_error, started by it"]
fn log_child() {
    if std::env::var_os(CHILD).is_none() {
        println!("skipped: {CHILD} is not set: this is the child process of another test");
        return;
    }
    let outcome = ferry::ucx::available_with(&UcxConfig {
        error_handling: ErrorHandling::PeerIfSupported,
        ..UcxConfig::default()
    });
    println!("{DONE} {outcome:?}");
}

#[test]
fn ucx_logs_go_to_standard_error() {
    if !ferry::ucx::UCX_BUILT {
        println!("skipped: built without UCX");
        return;
    }
    let finished = ucx_child::run(
        "log_child",
        &[(CHILD, "1"), ("UCX_TLS", "posix,cma,self")],
        &["UCX_LOG_FILE", "UCX_LOG_LEVEL", "FERRY_UCX_ERROR_HANDLING"],
        Duration::from_secs(60),
    );
    let (stdout, stderr) = (&finished.stdout, &finished.stderr);
    assert!(
        finished.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        finished.status
    );
    assert!(
        stdout.contains(&format!("{DONE} Ok(())")),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("UCX"),
        "UCX wrote to standard output:\n{stdout}"
    );
    // The peer-mode attempt's error is still reported, on standard error.
    assert!(
        stderr.contains("UCX  ERROR") && stderr.contains("no active messages transport"),
        "stderr:\n{stderr}"
    );
}
