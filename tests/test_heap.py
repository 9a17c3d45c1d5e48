"""heap.py: with the settings applied, the buffers one window allocates and frees are not re-faulted next time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings: Linux only")

# A fast-mode window in miniature: an encoder layer's activation (199 x 4096 bf16), its fp32 copy for quantisation,
# another fp32 temporary and the feature extractor's im2col matrix (6399 x 1536 bf16), all freed at the end.
# Runs in a fresh process (the settings are process-wide).
PROBE = """
import json, resource, torch
from flametalk.heap import keep_activation_memory
applied = keep_activation_memory()
def window():
    act = torch.empty(199, 4096, dtype=torch.bfloat16).fill_(1.5)
    xf = act.to(torch.float32, copy=True)
    mag = xf.abs()
    cols = torch.empty(6399, 1536, dtype=torch.bfloat16).fill_(0.5)
    return float((xf + mag).sum() + cols[-1, -1])
for _ in range(3):
    window()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
values = [window() for _ in range(10)]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults, "value": values[-1]}))
"""
PAGES_PER_WINDOW = (199 * 4096 * (2 + 4 + 4 + 4) + 6399 * 1536 * 2) // 4096


def _probe(switch: str) -> dict:
    env = dict(os.environ, FLAMETALK_HEAP_TUNE=switch)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_without_page_faults():
    tuned = _probe("1")
    if not tuned["applied"]:
        pytest.skip("not glibc: nothing to tune")
    assert tuned["value"] == 199 * 4096 * 3.0 + 0.5  # the buffers hold what was written, not stale pages
    # 10 windows touch ~76,000 pages; glibc's defaults often re-fault ~19,000 of them (one fp32 buffer's first
    # use, ~800, may still fault once)
    assert tuned["faults"] < PAGES_PER_WINDOW // 4


def test_switch_off_keeps_glibc_defaults():
    assert _probe("0")["applied"] is False
