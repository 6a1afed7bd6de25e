//! Replays the seed corpus (`corpus/<target>/`) and every kept finding
//! (`regressions/<target>/`) through the fuzz checks, so they run on every `cargo test` without
//! libFuzzer. A fuzz run's crash input, copied into `regressions/<target>/`, is a regression
//! test from then on.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue; // git keeps no empty folder
        };
        let mut paths: Vec<_> = entries
            .map(|e| e.expect("directory entry").path())
            .collect();
        paths.sort();
        for path in paths {
            let input = std::fs::read(&path).expect("corpus file");
            println!("{}", path.display()); // shown with the panic, if this input breaks a check
            check(&input);
            replayed += 1;
        }
    }
    assert!(
        replayed >= 5,
        "{target}: only {replayed} inputs; the seed corpus is missing"
    );
}

#[test]
fn metadata_json_corpus() {
    replay("metadata_json", ferry_fuzz::metadata_json);
}

#[test]
fn tcp_frames_corpus() {
    replay("tcp_frames", ferry_fuzz::tcp_frames);
}
