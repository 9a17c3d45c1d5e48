"""Ctrl-C / SIGTERM in `python -m blender_addon.cli batch` and `animate` (issue 19, item 2).

The first signal stops the run after cleaning up the line in progress (no partial outputs), batch_report.json
lists the lines finished, the worker is stopped, exit status 130; a second signal exits at once. Before, a Ctrl-C
while waiting for the worker printed a traceback (exit -2, no report), and one during a glTF export became an
operator error: the line was marked failed with its .blend but no .glb, and the batch went on.

The worker here is a stand-in speaking the worker protocol (hello, generate -> result after a set delay, cancel,
shutdown), so that the timing of the signal is under the test's control and no model is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from fixtures.addon import ROOT, write_wav
from flametalk.testing import synthetic_flame as synthetic

from blender_addon.cli import main as cli
from blender_addon.scene import export

FAKE_WORKER = r'''
import json, os, select, sys, time
import numpy as np
delays = [float(x) for x in os.environ.get("FAKE_DELAYS", "0").split(",")]
marks = os.environ["FAKE_MARKS"]
with open(os.path.join(marks, "worker.pid"), "w") as fh:
    fh.write(str(os.getpid()))
def send(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
send({"event": "hello", "protocol": 1, "pid": os.getpid()})
pending, count, buf = [], 0, b""
while True:
    timeout = max(0.0, min(p[0] for p in pending) - time.monotonic()) if pending else None
    ready, _, _ = select.select([0], [], [], timeout)
    if ready:
        chunk = os.read(0, 65536)
        if not chunk:
            break  # stdin closed: the client is gone
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "shutdown" and not os.environ.get("FAKE_IGNORE_SHUTDOWN"):
                sys.exit(0)
            if cmd == "generate":
                delay = delays[count] if count < len(delays) else 0.0
                count += 1
                open(os.path.join(marks, f"generate{count}"), "w").close()
                start = max([p[0] for p in pending] + [time.monotonic()])  # one job after the other
                pending.append((start + delay, req["id"], req["out"]))
            elif cmd == "cancel":
                for item in [p for p in pending if p[1] == req.get("target")]:
                    pending.remove(item)
                    send({"id": item[1], "event": "error", "kind": "cancelled", "message": "cancelled"})
    now = time.monotonic()
    for item in [p for p in pending if p[0] <= now]:
        pending.remove(item)
        np.savez(item[2], motion=np.zeros((30, 106), np.float32), fps=np.float32(25))
        send({"id": item[1], "event": "result", "seconds": 0.01})
'''


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    python = tmp_path / "fake_python"  # called as `fake_python -m flametalk.commands.worker`
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    python.chmod(0o755)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(b"not used by the stand-in worker")
    (checkpoint / "config.json").write_text("{}")
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, stem in enumerate(("a", "b", "c")):
        write_wav(audio / f"{stem}.wav", 1.0, seed=i)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    flame = synthetic.write_npz(str(tmp_path / "head.npz"), synthetic.make_arrays(n_verts=300, n_faces=500, seed=2))
    return {"python": python, "checkpoint": checkpoint, "audio": audio, "marks": marks, "out": out,
            "flame": Path(flame)}


def _start(setup: dict[str, Path], command: list[str], **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "FAKE_MARKS": str(setup["marks"]), **env}
    return subprocess.Popen([sys.executable, "-m", "blender_addon.cli", *command, "--flame", str(setup["flame"]),
                             "--checkpoint", str(setup["checkpoint"]), "--worker-python", str(setup["python"]),
                             "--device", "cpu"], cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_batch_interrupted_while_waiting_for_the_worker(sig, setup) -> None:
    """Line a is written, line b's motion is still being computed when the signal comes: a stays, b leaves
    nothing, c never starts; the report lists a and names b and c as not written; the worker is stopped."""
    out = setup["out"]
    audio = [str(setup["audio"] / f"{s}.wav") for s in ("a", "b", "c")]
    proc = _start(setup, ["batch", *audio, "--out-dir", str(out), "--glb"], FAKE_DELAYS="0,300,0")
    _wait_for(out / "a.glb", proc)
    _wait_for(setup["marks"] / "generate2", proc)  # b is with the worker
    time.sleep(0.5)
    proc.send_signal(sig)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr and len([ln for ln in lines if ln.startswith("flametalk:")]) == 1, stderr
    assert lines[-1].startswith("flametalk: interrupted: 1 of 3 lines written"), stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.blend", "a.glb", "batch_report.json"]
    report = json.loads((out / "batch_report.json").read_text())
    assert [(e["audio"], e["status"]) for e in report["lines"]] == [(audio[0], "ok")]
    assert report["interrupted"] is True and report["not_written"] == audio[1:]
    assert _gone(int((setup["marks"] / "worker.pid").read_text()))


@pytest.mark.perf
@pytest.mark.parametrize("times", [1, 2])
def test_animate_interrupted_while_waiting_and_a_second_signal(times: int, setup) -> None:
    """One signal: the take is dropped, the worker stopped (this one ignores `shutdown`, so after the client's
    5-s grace it is killed), exit 130. A second signal during that cleanup exits at once."""
    out = setup["out"] / "t.blend"
    proc = _start(setup, ["animate", "--audio", str(setup["audio"] / "a.wav"), "--out", str(out), "--glb",
                          str(setup["out"] / "t.glb")], FAKE_DELAYS="300", FAKE_IGNORE_SHUTDOWN="1")
    _wait_for(setup["marks"] / "generate1", proc)
    time.sleep(1.0)  # the head is built and Blender waits for the motion
    proc.send_signal(signal.SIGINT)
    if times == 2:
        time.sleep(1.0)
        assert proc.poll() is None  # still cleaning up: stopping the worker takes its 5-s grace
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    flametalk = [ln for ln in stderr.splitlines() if ln.startswith("flametalk:")]
    if times == 2:
        assert time.monotonic() - second < 2.0
        assert flametalk[-1] == "flametalk: interrupted again: exiting now"
    else:
        assert flametalk == ["flametalk: interrupted: the take in progress was discarded, finished files are kept"]
        assert _gone(int((setup["marks"] / "worker.pid").read_text()))
    assert list(setup["out"].iterdir()) == []


def test_signal_during_a_real_gltf_export_discards_the_take(setup, monkeypatch, capsys) -> None:
    """SIGINT arrives while Blender's glTF exporter runs: it is held until the operator returns (raised inside,
    Blender reports it as an operator error and the old batch went on), then the take is dropped: the previous
    files stay, no temporaries remain, exit 130."""
    folder = setup["out"]
    previous = {"t.blend": b"old blend", "t.glb": b"old glb"}
    for name, data in previous.items():
        (folder / name).write_bytes(data)
    motion = folder.parent / "motion.npz"
    np.savez(motion, motion=synthetic.random_motion(40, seed=4), fps=np.float32(25))
    real_export = export.export_gltf
    seen = {}

    def export_with_signal(rig, filepath, take=None, atomic=True):
        threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()
        real_export(rig, filepath, take, atomic)
        seen["exported"] = Path(filepath).stat().st_size  # the export itself completed, into its temporary
        deadline = time.monotonic() + 5
        while not cli.interrupted() and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(export, "export_gltf", export_with_signal)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest itself was started in the background
    code = cli.main(["animate", "--flame", str(setup["flame"]), "--motion", str(motion), "--out",
                     str(folder / "t.blend"), "--glb", str(folder / "t.glb")])
    assert code == 130 and seen["exported"] > 10_000
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("flametalk:")]
    assert err == ["flametalk: interrupted: the take in progress was discarded, finished files are kept"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == previous
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers put back after the run
