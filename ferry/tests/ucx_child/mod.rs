//! What the ucx tests whose body needs a process of its own share (UCX reads `UCX_*` once per
//! context, from the environment; standard output must be checked from outside): run this
//! test binary again for one ignored test, with variables set and removed, bounded in time.

use std::io::Read as _;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a child run ended, and what it printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the ignored test `test` of this binary in a child process with `set` in its
/// environment and `unset` removed; panics if it runs past `limit` (after killing it).
pub fn run(test: &str, set: &[(&str, &str)], unset: &[&str], limit: Duration) -> Finished {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args(["--ignored", "--exact", test, "--nocapture"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in set {
        command.env(name, value);
    }
    for name in unset {
        command.env_remove(name);
    }
    let mut child = command.spawn().expect("starts the child");
    // Both streams read on their own threads, so neither pipe fills while the child runs;
    // each says when its stream closed (the child exited, or closed it).
    let (closed, closes) = std::sync::mpsc::channel();
    let drain = |mut stream: Box<dyn std::io::Read + Send>| {
        let closed = closed.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            let _ = closed.send(());
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if closes.recv_timeout(left).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child ({test}) did not finish within {limit:?}");
        }
    }
    // Both streams closed: the child has exited (or is exiting), so this wait is short.
    let status = child.wait().expect("waits");
    Finished {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}
