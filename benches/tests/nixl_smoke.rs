//! The nixl benchmark end to end, tiny: two processes, both raw loops and both ferry paths, the
//! cycle (and Dynamo's, where its venv is), the table and the JSON. Prints
//! `skipped: <reason>` where NIXL cannot be loaded (scripts/install-nixl.sh installs it).

use std::process::Command;

#[test]
fn tiny_run_prints_table_and_json() {
    // ferry_backend_nixl::available, through the facade's re-export.
    if let Err(why) = ferry::nixl::available(None) {
        println!("skipped: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferry-bench-nixl-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("nixl.json");
    let markdown = dir.join("nixl.md");
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-bench-nixl"))
        .args([
            "--sizes",
            "4K,1M",
            "--seconds",
            "0",
            "--min-iterations",
            "2",
            "--rounds",
            "2",
            "--json",
        ])
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for row in [
        "| 4 KiB | read | raw nixl-sys | 2 |",
        "| 4 KiB | read | raw nixl-sys, registered per operation | 2 |",
        "| 4 KiB | read | ferry | 2 |",
        "| 4 KiB | write | ferry, cached registrations | 2 |",
        "| 1 MiB | write | raw nixl-sys | 2 |",
        "| 1 MiB | write | ferry | 2 |",
        "| ferry: create_readable (peer) + begin_read, both complete | 1 MiB | 2 |",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    assert!(stdout.contains("≤ 5 µs added"), "{stdout}");
    assert!(stdout.contains("≥ 0.95 × raw"), "{stdout}");
    // The Dynamo cycle runs where the venv of scripts/install-dynamo-venv.sh is (as in CI).
    let dynamo_skipped = stderr.contains("dynamo cycle: skipped");
    if dynamo_skipped {
        assert!(stdout.contains("pending"), "{stdout}");
    } else {
        assert!(
            stdout.contains("Dynamo p50 ÷ ferry p50"),
            "{stdout}\n{stderr}"
        );
    }

    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = figures["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 16);
    assert!(rows.iter().all(|r| r["verified"] == true));
    let paths: Vec<&str> = rows.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(&paths[..4], ["raw", "raw-per-op", "ferry", "ferry-cached"]);
    for row in rows.iter().filter(|r| r["path"] != "raw") {
        assert!(row["throughput_vs_raw"].as_f64().is_some(), "{row}");
        assert!(row["added_us_vs_raw_p50"].as_f64().is_some(), "{row}");
        let active = row["active_side"]["p50_us"].as_f64().unwrap();
        let both = row["both_sides"]["p50_us"].as_f64().unwrap();
        assert!(active > 0.0 && both > 0.0, "{row}");
        // ferry's default path also sits beside the raw loop registering per operation.
        let per_op = row["added_us_vs_raw_per_op_p50"].as_f64();
        assert_eq!(per_op.is_some(), row["path"] == "ferry", "{row}");
        let in_post = row["finished_in_post"].as_u64();
        let ferry = row["path"] == "ferry" || row["path"] == "ferry-cached";
        assert_eq!(in_post.is_some(), ferry, "{row}");
        let iterations = row["both_sides"]["iterations"].as_u64().unwrap();
        assert!(in_post.unwrap_or(0) <= iterations, "{row}");
    }
    assert_eq!(figures["cycle"]["both_sides"]["iterations"], 2);
    if dynamo_skipped {
        assert!(figures["dynamo_cycle"].is_null());
    } else {
        assert_eq!(figures["dynamo_cycle"]["size"], 1 << 20);
        assert!(figures["cycle_dynamo_p50_over_ferry_p50"].as_f64().unwrap() > 0.0);
    }

    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(
        md.contains("- command: `") && md.contains("--sizes 4K,1M"),
        "{md}"
    );
    // Between two processes of one host UCX moves 1 MiB with CMA during the post, and ferry
    // then completes the operation without polling NIXL again. Only where UCX may use CMA:
    // `UCX_TLS` can leave it out. Most 1 MiB transfers finish so, but not all (none of the 8
    // of the run above once in CI), so this counts over a run of its own, 32 each way.
    let tls = std::env::var("UCX_TLS").unwrap_or_default();
    let cma_allowed = match tls.strip_prefix('^') {
        Some(left_out) => !left_out.split(',').any(|t| t == "cma"),
        None => {
            tls.is_empty()
                || tls
                    .split(',')
                    .any(|t| ["cma", "all", "shm", "sm"].contains(&t))
        }
    };
    if cma_allowed {
        let in_post_json = dir.join("in-post.json");
        let output = Command::new(env!("CARGO_BIN_EXE_ferry-bench-nixl"))
            .args([
                "--sizes",
                "1M",
                "--paths",
                "ferry-cached",
                "--seconds",
                "0",
                "--min-iterations",
                "32",
                "--rounds",
                "1",
                "--no-cycle",
                "--no-dynamo",
                "--json",
            ])
            .arg(&in_post_json)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let figures: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&in_post_json).unwrap()).unwrap();
        let in_post: u64 = figures["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["finished_in_post"].as_u64())
            .sum();
        println!("1 MiB ferry transfers finished within their post: {in_post}");
        assert!(
            in_post > 0,
            "no 1 MiB ferry transfer finished within its post"
        );
    }

    std::fs::remove_dir_all(&dir).unwrap();
}
