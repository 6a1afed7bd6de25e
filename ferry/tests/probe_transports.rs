//! `ferry probe` shows which UCX transports were selected, and they follow `UCX_TLS`: with
//! `UCX_TLS=tcp` the ucx backend's connections use tcp, never shared memory (posix, sysv) or
//! CMA. Runs the `ferry` binary in a child process, so the variable is set before UCX reads
//! it. Prints `skipped: <reason>` where the build has no ucx feature or UCX is missing.

use std::process::Command;
use std::time::Duration;

/// How long `ferry probe` may take (it makes a UCX context and connects two workers).
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `ferry probe --json` with `UCX_TLS=tcp`; its JSON, or why not.
fn probe_with_tcp(binary: &str) -> serde_json::Value {
    let mut child = Command::new(binary)
        .args(["probe", "--json"])
        .env("UCX_TLS", "tcp")
        .env_remove("FERRY_BACKEND")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting ferry probe");
    // Bounded without polling: a thread reads the child's stdout to its end (the child's
    // exit closes it) and hands it over; past the limit the child is killed.
    let mut stdout = child.stdout.take().expect("a stdout pipe");
    let (sent, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = std::io::Read::read_to_end(&mut stdout, &mut bytes).map(|_| bytes);
        let _ = sent.send(read);
    });
    let stdout = match received.recv_timeout(LIMIT) {
        Ok(read) => read.expect("reading ferry probe"),
        Err(_) => {
            let _ = child.kill();
            panic!("ferry probe ran past {LIMIT:?}");
        }
    };
    let status = child.wait().expect("waiting for ferry probe");
    assert!(status.success(), "ferry probe failed: {status:?}");
    let output = std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    };
    serde_json::from_slice(&output.stdout).expect("ferry probe --json prints JSON")
}

#[test]
fn ucx_tls_tcp_selects_tcp_only() {
    let Some(binary) = option_env!("CARGO_BIN_EXE_ferry") else {
        println!("skipped: the ferry binary is not in this build (it needs the sim feature)");
        return;
    };
    if !cfg!(feature = "ucx") {
        println!("skipped: ferry built without the ucx feature");
        return;
    }
    let probe = probe_with_tcp(binary);
    let ucx = probe["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == "ucx"))
        .expect("probe lists ucx")
        .clone();
    if let Some(why) = ucx["unusable"].as_str() {
        println!("skipped: {why}");
        return;
    }
    let found = &ucx["transports"]["Ok"];
    assert!(found.is_object(), "no transports in {ucx}");
    let names = |field: &str, key: Option<&str>| -> Vec<String> {
        found[field]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|v| key.map_or(v, |k| &v[k]).as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let enabled = names("enabled", None);
    let selected = names("selected", Some("transport"));
    assert!(
        found["environment"]
            .as_array()
            .is_some_and(|vars| vars.iter().any(|v| v[0] == "UCX_TLS" && v[1] == "tcp")),
        "UCX_TLS=tcp not reported: {found}"
    );
    for (what, list) in [("enabled", &enabled), ("selected", &selected)] {
        assert!(
            list.iter().any(|t| t.starts_with("tcp/")),
            "{what} has no tcp: {list:?}"
        );
        for name in list {
            assert!(
                !["posix/", "sysv/", "cma/"]
                    .iter()
                    .any(|shm| name.starts_with(shm)),
                "{what} has {name} under UCX_TLS=tcp: {list:?}"
            );
        }
    }
}
