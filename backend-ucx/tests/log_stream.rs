//! UCX's log goes to standard error, never to standard output, which some processes use as a
//! data channel (the conformance suite's backend hosts speak a framed protocol on it, the
//! benchmarks' peers JSON lines).
//!
//! Regression (issue 5): under `UCX_TLS=posix,cma,self` with
//! `ErrorHandling::PeerIfSupported`, a backend's first connect tries peer error mode, which no
//! transport there supports, and UCX logs `UCX  ERROR   no active messages transport ...`. UCX
//! prints its log on standard output by default; in the two-process conformance suite that
//! line landed in a backend host's protocol pipe, and every rule in which the host connected
//! hung until its 60 s limit.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_backend_ucx::{ErrorHandling, UcxConfig};

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
    let outcome = ferry_backend_ucx::available_with(&UcxConfig {
        error_handling: ErrorHandling::PeerIfSupported,
    });
    println!("{DONE} {outcome:?}");
}

#[test]
fn ucx_logs_go_to_standard_error() {
    if !ferry_backend_ucx::UCX_BUILT {
        println!("skipped: built without UCX");
        return;
    }
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--ignored", "--exact", "log_child", "--nocapture"])
        .env(CHILD, "1")
        .env("UCX_TLS", "posix,cma,self")
        .env_remove("UCX_LOG_FILE")
        .env_remove("UCX_LOG_LEVEL")
        .env_remove("FERRY_UCX_ERROR_HANDLING")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts the child");
    let (mut stdout, mut stderr) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    // Read both streams on their own threads so neither pipe fills while the child runs.
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
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
