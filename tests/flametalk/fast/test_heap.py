"""heap.py: with the settings applied, the buffers one window allocates and frees are not re-faulted next time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings: Linux only")

BUFFERS, BUFFER_FLOATS = 8, 1024 * 1024  # a window's temporaries in miniature: 8 x 4 MiB, freed together
WINDOW_PAGES = BUFFERS * BUFFER_FLOATS * 4 // 4096
# Runs in a fresh process (the settings are process-wide): 3 windows to settle, then 10 counted.
PROBE = f"""
import json, resource, torch
from flametalk.fast.heap import keep_activation_memory
applied = keep_activation_memory()
def window():
    bufs = [torch.empty({BUFFER_FLOATS}).fill_(float(i)) for i in range({BUFFERS})]
    return float(sum(b[-1] for b in bufs))
for _ in range(3):
    window()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
values = [window() for _ in range(10)]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"applied": applied, "faults": faults, "value": values[-1]}}))
"""


def _probe(switch: str) -> dict:
    env = dict(os.environ, FLAMETALK_HEAP_TUNE=switch)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_without_page_faults():
    tuned = _probe("1")
    if not tuned["applied"]:
        pytest.skip("not glibc: nothing to tune")
    assert tuned["value"] == sum(range(BUFFERS))  # the buffers hold what was written
    # measured 0-1,024 over 10 windows (a buffer may land in fresh heap once more while glibc's bins settle)
    assert tuned["faults"] < WINDOW_PAGES


def test_switch_off_keeps_glibc_defaults():
    default = _probe("0")
    assert default["applied"] is False
    # glibc's defaults unmap (or trim) the 32 MiB after each window and fault it in again: ~8,160 pages a window
    assert default["faults"] > 5 * WINDOW_PAGES
