#!/usr/bin/env bash
# The whole test suite: sets up .venv/ if needed, then runs pytest (headless Blender through the bpy module).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
