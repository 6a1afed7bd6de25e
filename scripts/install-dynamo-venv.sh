#!/usr/bin/env bash
# Installs what the Dynamo interop test (ferry/tests/dynamo_interop.rs) needs: a Python venv
# holding NVIDIA Dynamo's published `dynamo.nixl_connect` (PyPI `ai-dynamo-runtime`) and the
# real NIXL Python bindings (PyPI `nixl-cu12`, through the `nixl` meta package that provides
# `import nixl._api`).
#
# Everything is installed `--no-deps`, at the exact versions below, binary wheels only: the
# published packages' own requirements pull in torch and CUDA wheels (gigabytes) that a CPU-only
# test does not use. `dynamo.nixl_connect` imports torch at load time; the test puts a small
# stand-in module on PYTHONPATH instead (ferry/tests/dynamo/stub/torch). Dynamo's Rust runtime
# (`dynamo._core`) ships in the wheel but `dynamo.nixl_connect` never imports it.
#
# Idempotent: a marker file listing the pins is written last; when it is there and matches,
# the script does nothing. Nothing is written outside the venv folder except pip's own cache.
#
#   FERRY_DYNAMO_VENV  where the venv goes (default: ~/.cache/ferry/dynamo-venv-1.6.1)
#   FERRY_PYTHON       the interpreter that creates it (default: python3; 3.10 to 3.13)
set -euo pipefail

venv="${FERRY_DYNAMO_VENV:-${HOME}/.cache/ferry/dynamo-venv-1.6.1}"
python="${FERRY_PYTHON:-python3}"
marker="${venv}/.ferry-dynamo-venv"

# The exact set: Dynamo, NIXL, and what `import dynamo.nixl_connect` needs besides torch.
pins=(
    ai-dynamo-runtime==1.6.1
    nixl==1.5.1
    nixl-cu12==1.5.1
    pydantic==2.13.5
    pydantic-core==2.46.5
    annotated-types==0.8.0
    typing-extensions==4.16.0
    typing-inspection==0.4.5
    numpy==2.2.6
)
wanted="$(printf '%s\n' "${pins[@]}")"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] && [ -x "${venv}/bin/python" ]; then
    echo "install-dynamo-venv: Dynamo 1.6.1 venv is in ${venv}"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "install-dynamo-venv: needs ${python} (3.10 to 3.13) to create the venv" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)'; then
    echo "install-dynamo-venv: ${python} is $("$python" -V 2>&1); the pinned wheels need 3.10 to 3.13" >&2
    exit 1
fi
# Debian splits venv and ensurepip out of python3 itself.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        echo "install-dynamo-venv: installed python3-venv"
    else
        echo "install-dynamo-venv: ${python} has no venv/ensurepip module and it cannot be" \
             "installed here (needs root and apt-get: python3-venv)" >&2
        exit 1
    fi
fi

# A venv records its own path, so it is built where it will live; a half-built one (no marker)
# is ours to remove.
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "${venv}/bin/python" -m pip install --quiet \
    --no-deps --only-binary=:all: "${pins[@]}"
# The import the test relies on, with the stand-in torch the test uses.
here="$(cd "$(dirname "$0")" && pwd)"
if ! check="$(PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="${here}/../ferry/tests/dynamo/stub" \
    "${venv}/bin/python" -c 'import dynamo.nixl_connect, nixl._api' 2>&1)"; then
    echo "install-dynamo-venv: the venv cannot import dynamo.nixl_connect:" >&2
    echo "$check" >&2
    exit 1
fi
printf '%s\n' "$wanted" >"$marker"
echo "install-dynamo-venv: installed ${pins[*]} into ${venv}"
