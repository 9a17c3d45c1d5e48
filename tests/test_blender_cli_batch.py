"""The batch CLI: many dialogue lines with one warm worker; a bad line is reported and skipped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("bpy")

from addon_helpers import ROOT  # noqa: E402
from conftest import AUDIO_DIR  # noqa: E402

from blender_addon.flame import synthetic  # noqa: E402


def test_batch_keeps_one_worker_and_skips_a_bad_line(parity_checkpoint_dir, tmp_path):
    flame = synthetic.write_npz(str(tmp_path / "head.npz"), synthetic.make_arrays(n_verts=400, n_faces=700))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not audio")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "blender_addon.cli", "batch", str(AUDIO_DIR / "eng2.wav"), str(bad),
           str(AUDIO_DIR / "cn1.wav"), "--flame", flame, "--checkpoint", str(parity_checkpoint_dir),
           "--out-dir", str(out), "--glb", "--device", "cpu", "--worker-python", sys.executable, "--fps", "30"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-2000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("flametalk: error:")]
    assert len(errors) == 1 and errors[0].startswith("flametalk: error: broken:")
    report = json.loads((out / "batch_report.json").read_text())
    assert [e["status"] for e in report["lines"]] == ["ok", "failed", "ok"] and report["failed"] == 1
    ok = [e for e in report["lines"] if e["status"] == "ok"]
    assert ok[0]["frames"] == 85 and ok[1]["frames"] == 230  # ceil(seconds * 25) of eng2 (3.4 s) and cn1 (9.2 s)
    assert ok[0]["worker_pid"] == ok[1]["worker_pid"] is not None  # the model stayed loaded across lines
    for stem in ("eng2", "cn1"):
        assert (out / f"{stem}.blend").stat().st_size > 100_000 and (out / f"{stem}.glb").stat().st_size > 10_000
    assert not (out / "broken.blend").exists()
