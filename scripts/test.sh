#!/usr/bin/env bash
# The whole check: sets up .venv/ if needed, lints (ruff), type-checks (mypy: mypy.ini's files), then runs pytest
# (headless Blender through the bpy module). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
