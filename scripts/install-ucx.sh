#!/usr/bin/env bash
# Installs what the ucx backend needs, from Debian's packages:
# - to build: UCX's headers and pkg-config file (`libucx-dev`, UCX 1.13 on Debian 12) and the
#   `pkg-config` tool that ferry-backend-ucx's build script runs; bindgen also needs libclang
#   (`libclang-dev`), installed here when it is missing;
# - to inspect: `ucx_info` and `ucx_perftest` (`ucx-utils`).
#
# Idempotent: does nothing when `pkg-config --exists ucx` already succeeds and libclang is found.
# Without UCX, ferry-backend-ucx still builds, and its constructors return a typed
# "UCX not installed" error.
set -euo pipefail

have_libclang() {
    ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ldconfig -p 2>/dev/null | grep -q libclang
}

have_ucx() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists ucx
}

packages=()
have_ucx || packages+=(libucx-dev ucx-utils pkg-config)
have_libclang || packages+=(libclang-dev)

if [ "${#packages[@]}" -eq 0 ]; then
    echo "install-ucx: UCX $(pkg-config --modversion ucx) is installed; nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-ucx: missing ${packages[*]} and cannot install them here (needs root and" \
         "apt-get); ferry-backend-ucx will build without UCX and report it as unavailable" >&2
    exit 1
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
echo "install-ucx: installed ${packages[*]}"

pkg-config --exists ucx
echo "install-ucx: UCX $(pkg-config --modversion ucx) ($(pkg-config --variable=prefix ucx))"
