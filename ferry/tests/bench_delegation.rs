//! `ferry bench …` runs the `ferry-bench` program next to the `ferry` executable with the
//! remaining arguments, and fails with how to build it when there is none.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

/// Held by each test while it writes executables and runs them. A test that forks while
/// another's freshly written executable is still open for writing hands that descriptor to
/// its child until the child's exec; running that executable meanwhile fails with "Text file
/// busy" (ETXTBSY), which CI saw once.
static EXEC: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A fresh directory holding a copy of the `ferry` executable built for these tests.
fn ferry_alone(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let ferry = dir.join("ferry");
    std::fs::copy(env!("CARGO_BIN_EXE_ferry"), &ferry).expect("a copy of ferry");
    (dir, ferry)
}

#[test]
fn bench_runs_the_program_beside_ferry_with_the_remaining_arguments() {
    let _exec = EXEC.lock().unwrap_or_else(|p| p.into_inner());
    let (dir, ferry) = ferry_alone("bench-delegates");
    let program = dir.join("ferry-bench");
    // Prints its arguments one per line and exits with a status of its own.
    std::fs::write(
        &program,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(&ferry)
        .args(["bench", "--quick", "--out", "a dir", "--help"])
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "--quick\n--out\na dir\n--help\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_without_the_program_says_how_to_build_it() {
    let _exec = EXEC.lock().unwrap_or_else(|p| p.into_inner());
    let (dir, ferry) = ferry_alone("bench-missing");
    let output = Command::new(&ferry)
        .args(["bench", "--quick"])
        .env("PATH", dir.join("nowhere"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cargo build --release -p ferry -p ferry-benches"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&dir.join("ferry-bench").display().to_string()),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
