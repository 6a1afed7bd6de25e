//! The tcp benchmark end to end, tiny: two processes, every message, the table and the JSON.

use std::process::Command;

#[test]
fn tiny_run_prints_table_and_json() {
    let dir = std::env::temp_dir().join(format!("ferry-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tcp.json");
    let markdown = dir.join("tcp.md");
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-bench-tcp"))
        .args([
            "--sizes",
            "4K,1M",
            "--seconds",
            "0",
            "--min-iterations",
            "2",
        ])
        .args(["--round-trips", "20", "--json"])
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        // No iperf3 on an empty PATH: the skip path is part of the contract.
        .env("PATH", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("iperf3: skipped: not installed"),
        "{stdout}"
    );
    for row in [
        "| 4 KiB | read | 1 | 2 |",
        "| 4 KiB | write | 1 | 2 |",
        "| 1 MiB | write | 1 | 2 |",
        // --in-flight defaults to 8: batches of 8 for every size up to 16 MiB.
        "| 4 KiB | read | 8 | 2 |",
        "| 1 MiB | read | 8 | 2 |",
        "| 1 MiB | write | 8 | 2 |",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    assert!(stdout.contains("p50 ÷ ping-pong p50"), "{stdout}");

    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = figures["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r["verified"] == true));
    let in_flight: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["in_flight"].as_u64())
        .collect();
    assert_eq!(in_flight, [1, 1, 8, 8, 1, 1, 8, 8]);
    assert_eq!(figures["baselines"]["iperf3"]["skipped"], "not installed");
    assert_eq!(
        figures["baselines"]["ping_pong"]["latency"]["iterations"],
        20
    );

    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(
        md.contains("- command: `") && md.contains("--sizes 4K,1M"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
