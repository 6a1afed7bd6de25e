#!/usr/bin/env bash
# Installs the system tools the test suite uses beyond Rust: `ip` (iproute2), for the tcp test
# that joins two network namespaces with a veth pair. Needs root to install; without root, or
# without apt-get, it says so and the test prints `skipped: <reason>`.
set -euo pipefail

if command -v ip >/dev/null 2>&1; then
    echo "install-test-tools: ip is present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: ip is missing and cannot be installed here (needs root and apt-get);" \
         "the network-namespace test will be skipped"
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
echo "install-test-tools: installed iproute2"
