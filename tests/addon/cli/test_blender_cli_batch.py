"""The batch CLI: many dialogue lines with one warm worker; a bad line is reported and skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("bpy")

from fixtures.addon import ROOT
from fixtures.common import AUDIO_DIR
from fixtures.report import record
from flametalk.testing import synthetic_flame as synthetic


@pytest.fixture(scope="module", params=[True, False], ids=["overlapped", "no-overlap"])
def batch_run(request, parity_checkpoint_dir, tmp_path_factory):
    """Three lines (the middle one unreadable) through one `batch` process: (the run, its output folder, wall time)."""
    overlap = request.param
    tmp_path = tmp_path_factory.mktemp("batch")
    flame = synthetic.write_npz(str(tmp_path / "head.npz"), synthetic.make_arrays(n_verts=400, n_faces=700))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not audio")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "blender_addon.cli", "batch", str(AUDIO_DIR / "eng2.wav"), str(bad),
           str(AUDIO_DIR / "cn1.wav"), "--flame", flame, "--checkpoint", str(parity_checkpoint_dir),
           "--out-dir", str(out), "--glb", "--device", "cpu", "--worker-python", sys.executable, "--fps", "30"]
    cmd += [] if overlap else ["--no-overlap"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return run, out, time.perf_counter() - t0


def test_batch_keeps_one_worker_and_skips_a_bad_line(batch_run):
    run, out, _ = batch_run
    assert run.returncode == 1, run.stderr[-2000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("flametalk: error:")]
    assert len(errors) == 1 and errors[0].startswith("flametalk: error: broken:")
    report = json.loads((out / "batch_report.json").read_text())
    assert [e["status"] for e in report["lines"]] == ["ok", "failed", "ok"] and report["failed"] == 1
    ok = [e for e in report["lines"] if e["status"] == "ok"]
    assert ok[0]["frames"] == 85 and ok[1]["frames"] == 230  # ceil(seconds * 25) of eng2 (3.4 s) and cn1 (9.2 s)
    assert ok[0]["worker_pid"] == ok[1]["worker_pid"] is not None  # the model stayed loaded across lines
    assert all(0 < e["generate_seconds"] < e["seconds"] + 60 for e in ok)
    assert [e["audio_reused"] for e in ok] == [False, False]  # two different lines: both encoded
    for stem in ("eng2", "cn1"):
        assert (out / f"{stem}.blend").stat().st_size > 100_000 and (out / f"{stem}.glb").stat().st_size > 10_000
    assert not (out / "broken.blend").exists()


@pytest.mark.perf
def test_batch_line_seconds_add_up_to_the_wall_time(batch_run, request):
    """Each line's `seconds` is the wall time it added: together they are the run's, less the process start and
    exit (a few seconds; more on a loaded machine)."""
    run, out, run_seconds = batch_run
    assert run.returncode == 1, run.stderr[-2000:]
    lines = json.loads((out / "batch_report.json").read_text())["lines"]
    record("batch command line", f"{request.node.callspec.id}: process start + exit (not in any line)",
           f"{run_seconds - sum(e['seconds'] for e in lines):.1f} s of {run_seconds:.1f} s")
    assert abs(sum(e["seconds"] for e in lines) - run_seconds) < 5


def test_a_line_queued_behind_a_worker_crash_runs_again(monkeypatch):
    """The next line is submitted before the current one is written; when the worker dies meanwhile, that line
    is generated once more on a fresh worker instead of failing (as if the lines had run one after the other)."""
    import argparse

    from blender_addon.cli import batch

    class Crash(Exception):
        kind = "crash"

    spare_calls = []

    class Client:
        def spare_cores(self, cores):
            spare_calls.append(cores)

    class Job:
        closed = 0
        client = Client()

        def close(self):
            Job.closed += 1

    started, written, crash_next = [], [], [True]

    def start_generation(prep):
        started.append(prep)
        return Job()

    def write_take(prep, job, busy):
        written.append(job)
        busy(False)  # what the real one does around its wait for the worker
        busy(True)
        if crash_next.pop() if crash_next else False:
            raise Crash("the worker stopped unexpectedly")
        return {"frames": 85}

    monkeypatch.setattr(batch, "start_generation", start_generation)
    monkeypatch.setattr(batch, "write_take", write_take)
    line = batch._Line("a.wav", "a", argparse.Namespace(), prep=object(), job=Job())
    assert batch._write(line, 1) == {"frames": 85}
    assert len(started) == 1 and written[1] is line.job and Job.closed == 1
    assert spare_calls == [0, 1, 0, 1]  # waiting: the model takes every core; writing: it leaves one to Blender
    written.clear()
    spare_calls.clear()
    assert batch._write(batch._Line("c.wav", "c", argparse.Namespace(), prep=object(), job=Job()), 0)
    assert spare_calls == []  # --no-overlap / --spare-cores 0: the worker keeps all its threads
    monkeypatch.setattr(batch, "write_take", lambda prep, job, busy: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):  # other failures are the line's own: no second try
        batch._write(batch._Line("b.wav", "b", argparse.Namespace(), prep=object(), job=Job()), 1)
    assert len(started) == 1
