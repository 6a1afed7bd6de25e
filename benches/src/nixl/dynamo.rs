//! The same 1 MiB cycle between two Dynamo Python workers, measured in the same run: the
//! published `dynamo.nixl_connect` (ai-dynamo-runtime 1.6.1 over nixl-cu12 1.5.1) in the venv
//! `scripts/install-dynamo-venv.sh` builds, driven by `benches/dynamo/cycle.py` (a parent
//! worker that reads, a child worker that creates the readable, metadata over a pipe).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use super::report::CycleBaseline;
use crate::stats::Summary;

/// The venv's folder when `FERRY_DYNAMO_VENV` is not set, under `$HOME`.
const DEFAULT_VENV: &str = ".cache/ferry/dynamo-venv-1.6.1";

/// Written last by the install script: its absence means an unfinished venv.
const MARKER: &str = ".ferry-dynamo-venv";

/// The venv's Python, or why there is none.
fn venv_python() -> Result<PathBuf, String> {
    let venv = match std::env::var_os("FERRY_DYNAMO_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(DEFAULT_VENV)
        }
    };
    if !venv.join(MARKER).is_file() {
        return Err(format!(
            "no Dynamo venv at {} (scripts/install-dynamo-venv.sh builds it)",
            venv.display()
        ));
    }
    Ok(venv.join("bin/python"))
}

/// Measures `iterations` cycles of `size` bytes between two Dynamo workers. `Err` says why
/// it could not (no venv, the workers failed); the caller reports it as skipped.
pub async fn measure(size: usize, iterations: usize) -> Result<CycleBaseline, String> {
    let python = venv_python()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("dynamo/cycle.py");
    let stub = root.join("../ferry/tests/dynamo/stub");
    // Each warm cycle takes milliseconds; the worst case is bounded by the script's own
    // per-wait timeout too.
    let limit = Duration::from_secs(60) + Duration::from_millis(200) * iterations as u32;
    let run = Command::new(&python)
        .arg(&script)
        .args(["--size", &size.to_string()])
        .args(["--iterations", &iterations.to_string()])
        .args(["--timeout", "30"])
        .env("PYTHONPATH", &stub)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("the Dynamo workers did not finish within {limit:?}"))?
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!(
            "the Dynamo workers failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .ok_or("the Dynamo workers printed nothing")?;
    let result: Value =
        serde_json::from_str(line).map_err(|e| format!("unreadable Dynamo result: {e}"))?;
    let samples = result["samples_us"]
        .as_array()
        .ok_or("no samples in the Dynamo result")?
        .iter()
        .filter_map(Value::as_f64)
        .map(|us| Duration::from_secs_f64(us / 1e6))
        .collect();
    let summary = Summary::from_samples(samples).ok_or("the Dynamo workers timed no cycle")?;
    Ok(CycleBaseline {
        source: format!(
            "two Dynamo 1.6.1 Python workers (dynamo.nixl_connect over nixl-cu12 1.5.1, \
             {}), benches/dynamo/cycle.py",
            python.display()
        ),
        size,
        summary,
    })
}
