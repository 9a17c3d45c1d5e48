#!/usr/bin/env bash
# The main job on a fresh Linux machine: set up .venv/ (scripts/setup_env.sh), fetch the ARTalk release weights where
# the network allows, speak a demo line with espeak-ng and animate a FLAME head with it:
#   demo/demo.blend + demo/demo.glb + demo/demo.png (preview) + demo/demo.wav
# Missing weights or FLAME file: it says exactly what to download and where, and exits 3. See scripts/demo.py for
# the overrides (FLAMETALK_CHECKPOINT, FLAMETALK_FLAME, FLAMETALK_DEMO_AUDIO, FLAMETALK_DEMO_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
