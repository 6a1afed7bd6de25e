//! `ucx_perftest` (Debian's `ucx-utils`) as a baseline: a server and a client on 127.0.0.1,
//! both children of this process, so they run under its `UCX_*` environment.
//!
//! The client runs with `-f` (final numbers only) and prints one line of eight numbers:
//! iterations, then latency (or, for bandwidth tests, overhead) in µs as the 50th percentile,
//! average and overall, then bandwidth in MB/s (2²⁰ bytes per second, as UCX counts) average
//! and overall, then messages per second average and overall. Latency tests (`*_lat`) are
//! ping-pongs and report half a round trip.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::baseline::find_on_path;
use crate::Result;

/// What one `ucx_perftest` run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfRun {
    /// The test (`ucp_put_bw`, `ucp_put_lat`, `ucp_am_lat`).
    pub test: String,
    /// Bytes per message.
    pub size: usize,
    /// Timed iterations.
    pub iterations: u64,
    /// Median latency (one way, for `*_lat`) or overhead (for `*_bw`), µs.
    pub p50_us: f64,
    /// Average latency or overhead, µs.
    pub average_us: f64,
    /// Overall bandwidth, bytes per second.
    pub bytes_per_second: f64,
}

/// Where `ucx_perftest` is, if installed.
pub fn program() -> Option<PathBuf> {
    find_on_path("ucx_perftest")
}

/// Iterations and warm-up iterations for a bandwidth test at `size`: about `bytes` moved in
/// all (at least 8 iterations, at most 20 000), a tenth of that (at least 2) as warm-up.
pub fn bandwidth_iterations(size: usize, bytes: u64) -> (u64, u64) {
    let iterations = (bytes / size.max(1) as u64).clamp(8, 20_000);
    (iterations, (iterations / 10).max(2))
}

/// Runs `test` at `size` bytes with `iterations` (after `warmup`) between a server and a
/// client on 127.0.0.1, with `extra` options for both; both are killed after `limit`.
pub async fn run(
    test: &str,
    size: usize,
    iterations: u64,
    warmup: u64,
    extra: &[&str],
    limit: Duration,
) -> Result<PerfRun> {
    let program = program().ok_or("ucx_perftest is not installed (apt-get install ucx-utils)")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let (size_text, n, w) = (size.to_string(), iterations.to_string(), warmup.to_string());
    let mut options = vec![
        "-p", &port, "-t", test, "-s", &size_text, "-n", &n, "-w", &w,
    ];
    options.extend_from_slice(extra);
    let mut server = tokio::process::Command::new(&program)
        .args(&options)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut last_error = String::new();
    // The server needs a moment to listen; a refused client is retried.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let client = tokio::process::Command::new(&program)
            .arg("127.0.0.1")
            .args(&options)
            .arg("-f")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(limit, client)
            .await
            .map_err(|_| format!("ucx_perftest -t {test} -s {size} ran past {limit:?}"))??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if let Some(run) = parse(test, size, &stdout).filter(|_| output.status.success()) {
            let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
            let _ = server.kill().await;
            return Ok(run);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        last_error = stderr
            .lines()
            .rfind(|l| l.contains("rror"))
            .unwrap_or(stderr.trim())
            .to_owned();
        // A client that connected and failed will not do better on a second try.
        if !(stderr.contains("connect") || stderr.contains("refused")) {
            break;
        }
    }
    let _ = server.kill().await;
    Err(format!("ucx_perftest -t {test} -s {size} failed: {last_error}").into())
}

/// The final line of a client's `-f` output: the last line of at least eight numbers.
fn parse(test: &str, size: usize, stdout: &str) -> Option<PerfRun> {
    let numbers: Vec<f64> = stdout.lines().rev().find_map(|line| {
        let words: Vec<&str> = line
            .trim()
            .trim_start_matches("Final:")
            .split_whitespace()
            .collect();
        let numbers: Option<Vec<f64>> = words.iter().map(|w| w.parse().ok()).collect();
        numbers.filter(|n| n.len() >= 8)
    })?;
    Some(PerfRun {
        test: test.to_owned(),
        size,
        iterations: numbers[0] as u64,
        p50_us: numbers[1],
        average_us: numbers[2],
        bytes_per_second: numbers[5] * f64::from(1u32 << 20),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_final_line() {
        let out = "+----+\n|  Test | # iterations |\n+----+\n                        \
                   2000      0.642     0.662     0.662    94415.27   94415.27     1510644     \
                   1510644\n";
        let run = parse("ucp_put_bw", 65536, out).unwrap();
        assert_eq!(run.iterations, 2000);
        assert_eq!((run.p50_us, run.average_us), (0.642, 0.662));
        assert!((run.bytes_per_second - 94415.27 * 1048576.0).abs() < 1.0);
        let final_line = "Final:                 10000      0.115     0.125     0.125    \
                          31136.45   31136.45     7970931     7970931\n";
        assert_eq!(
            parse("ucp_put_lat", 4096, final_line).unwrap().p50_us,
            0.115
        );
        assert!(parse("ucp_put_lat", 4096, "ERROR: Destination is unreachable\n").is_none());
    }

    #[test]
    fn iterations_scale_with_size() {
        assert_eq!(bandwidth_iterations(1 << 30, 2 << 30), (8, 2));
        assert_eq!(bandwidth_iterations(4096, 2 << 30), (20_000, 2_000));
        assert_eq!(bandwidth_iterations(1 << 20, 2 << 30), (2048, 204));
    }
}
