#!/usr/bin/env bash
# Runs ferry's libFuzzer targets (fuzz/) for a bounded time each, on the stable toolchain.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 30 s, every target)
#
# Why not cargo-fuzz: it needs a nightly toolchain (its default build uses -Zsanitizer), which a
# fresh CI machine may not have. libfuzzer-sys needs only a C++ compiler (it builds libFuzzer
# from source) and SanitizerCoverage instrumentation, which stable rustc enables with the
# -Cpasses/-Cllvm-args flags below (the same ones cargo-fuzz passes). No AddressSanitizer: the
# code under test is safe Rust, so a memory error would be a compiler bug; panics, aborts,
# timeouts and out-of-memory are what libFuzzer reports here.
#
# The instrumented build goes to its own target directory (its flags differ from every other
# build's). Each target starts from fuzz/corpus/<target> and adds what it finds to a scratch
# copy (so the committed seed corpus stays small); a crash writes its input to
# fuzz/artifacts/<target>/ and fails the script. Copy such an input into
# fuzz/regressions/<target>/ once it is fixed: `cargo test -p ferry-fuzz` replays it for good.
set -euo pipefail

cd "$(dirname "$0")/.."  # the repository root
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(metadata_json tcp_frames)
fi

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz: libfuzzer-sys needs a C++ compiler (apt-get install g++)" >&2
    exit 1
fi

target_dir=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
export RUSTFLAGS="--cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (they link no libFuzzer).
host=$(rustc -vV | sed -n 's/^host: //p')
CARGO_TARGET_DIR=$target_dir cargo build --release -p ferry-fuzz --features libfuzzer --target "$host" \
    $(printf -- '--bin %s ' "${targets[@]}")

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
    cp fuzz/corpus/"$target"/* "$scratch/$target/"
    echo "fuzz: $target for ${seconds}s"
    log="$scratch/$target.log"
    status=0
    "$target_dir/$host/release/$target" "$scratch/$target" \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
    echo "fuzz: $target corpus grew from $(ls fuzz/corpus/"$target" | wc -l) to $(ls "$scratch/$target" | wc -l) inputs"
done
