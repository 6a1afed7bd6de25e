#!/usr/bin/env bash
# Installs the system tools the test suite uses beyond Rust: `ip` (iproute2), for the tcp test
# that joins two network namespaces with a veth pair; a C++ compiler, which libfuzzer-sys needs
# for the bounded fuzz run (fuzz/run.sh); and iperf3, the baseline of the benchmark smoke run.
# Needs root and apt-get to install; without them it says what is missing, and the tests that
# need it print `skipped: <reason>` (the fuzz run and iperf3's column say why they cannot run).
set -euo pipefail

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-tools: ip, c++ and iperf3 are present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: missing ${missing[*]}, which cannot be installed here (needs root" \
         "and apt-get)"
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "install-test-tools: installed ${missing[*]}"
