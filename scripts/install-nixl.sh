#!/usr/bin/env bash
# Installs what the nixl backend needs:
# - to build: libclang (nixl-sys runs bindgen), from Debian's packages;
# - to run: the NIXL libraries from PyPI's `nixl-cu12` wheel, downloaded with
#   `pip download --no-deps` (none of its Python dependencies) and unpacked into a cache folder.
#
# The backend finds that folder by itself (see ferry-backend-nixl's docs: FERRY_NIXL_LIB_DIR,
# then FERRY_NIXL_HOME, then this default), so nothing needs exporting. The environment printed
# at the end is for running other NIXL programs against the same libraries.
#
#   FERRY_NIXL_HOME   where to unpack (default: ~/.cache/ferry/nixl-cu12-1.5.1)
#   NIXL_WHEEL_VERSION  the nixl-cu12 version (default: 1.5.1)
set -euo pipefail

version="${NIXL_WHEEL_VERSION:-1.5.1}"
home="${FERRY_NIXL_HOME:-${HOME}/.cache/ferry/nixl-cu12-${version}}"
libs="${home}/.nixl_cu12.mesonpy.libs"

if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libclang; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
        echo "install-nixl: installed libclang-dev"
    else
        echo "install-nixl: libclang is missing and cannot be installed here (needs root and" \
             "apt-get); building ferry-backend-nixl will fail" >&2
        exit 1
    fi
fi

if [ -f "${libs}/libnixl_capi.so" ]; then
    echo "install-nixl: nixl-cu12 ${version} is in ${home}"
else
    python=""
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
            python="$candidate"
            break
        fi
    done
    if [ -z "$python" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        # A fresh Debian has python3 without pip.
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
        echo "install-nixl: installed python3-pip"
        python3 -m pip --version >/dev/null 2>&1 && python=python3
    fi
    if [ -z "$python" ]; then
        echo "install-nixl: needs python3 with pip to fetch the nixl-cu12 wheel" >&2
        exit 1
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # The wheel's native libraries do not depend on the Python version; ask for a CPython 3.11
    # wheel explicitly so the local interpreter does not matter.
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
        "nixl-cu12==${version}" -d "$work"
    wheel="$(ls "$work"/nixl_cu12-*.whl)"
    mkdir -p "${home}.partial"
    "$python" -m zipfile -e "$wheel" "${home}.partial"
    rm -rf "$home"
    mv "${home}.partial" "$home"
    echo "install-nixl: unpacked $(basename "$wheel") into ${home}"
fi

test -f "${libs}/libnixl_capi.so"
echo "install-nixl: to run other NIXL programs against these libraries:"
echo "  export LD_LIBRARY_PATH=${libs}:${home}/nixl_cu12.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
echo "  export NIXL_PLUGIN_DIR=${libs}/plugins"
