#!/usr/bin/env bash
# Create (or update) the developer environment .venv/ at the repo root:
# Python 3.11 (what bpy 5.0.1 needs), torch (CPU wheel by default), bpy, the project (editable) and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
TORCH_SPEC=${FLAMETALK_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.flametalk-setup
want="$(cat inference/pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q "numpy<2" "bpy==5.0.1" -e "inference[dev,farm,stream]"  # farm: Ray; stream: websockets, sounddevice (their tests)
echo "$want" > "$stamp"
