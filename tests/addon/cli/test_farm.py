"""The farm CLI on a two-node local Ray cluster (ray.cluster_utils.Cluster) with the reduced parity model: every line
written once and equal to what `batch` writes (the same motion bits, the same keyed values), a killed Blender writer's
line retried by Ray (attempts 2, no temporary left), an interrupted farm resumed (only unfinished or changed lines
run), and one clear line for a bad row, a missing audio file, an unwritable output folder, a missing manifest and a
missing Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")
pytest.importorskip("ray")

from fixtures.addon import ROOT
from fixtures.common import AUDIO_DIR
from fixtures.report import record
from flametalk.testing import synthetic_flame as synthetic

# (audio stem, source clip, start s, end s): short real speech keeps the model's share small
CLIPS = [("c1", "eng2", 0.0, 1.2), ("c2", "eng2", 1.0, 2.0), ("c3", "cn1", 0.5, 1.6), ("c4", "eng2", 2.0, 3.3),
         ("c5", "cn1", 3.0, 4.0), ("c6", "cn1", 5.0, 6.4)]
NAMES = {stem: f"l{stem[1:]}" for stem, *_ in CLIPS}  # the farm's output name of each clip: c1 -> l1
TMP_MARK = ".flametalk-tmp-"
DUMP = r"""
import json, sys
import bpy
from blender_addon.scene import compat
out = {}
for path in sys.argv[2:]:
    bpy.ops.wm.open_mainfile(filepath=path)
    curves = {}
    for action in bpy.data.actions:
        for fc in compat.iter_action_fcurves(action):
            co = [0.0] * (2 * len(fc.keyframe_points))
            fc.keyframe_points.foreach_get("co", co)
            curves[f"{action.name}|{fc.data_path}|{fc.array_index}"] = co
    scene = bpy.context.scene
    out[path] = {"curves": curves, "range": [scene.frame_start, scene.frame_end],
                 "fps": [scene.render.fps, scene.render.fps_base]}
with open(sys.argv[1], "w") as handle:
    json.dump(out, handle)
"""


def _env(**extra: str) -> dict[str, str]:
    paths = [str(ROOT / "inference"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The six clips, a synthetic FLAME head."""
    import soundfile

    folder = tmp_path_factory.mktemp("farm_inputs")
    for stem, source, start, end in CLIPS:
        audio, rate = soundfile.read(str(AUDIO_DIR / f"{source}.wav"))
        soundfile.write(str(folder / f"{stem}.wav"), audio[int(start * rate):int(end * rate)], rate)
    head = synthetic.write_npz(str(folder / "head.npz"), synthetic.make_arrays(n_verts=400, n_faces=700))
    return folder, head


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine (2 CPUs each, small object stores, no dashboard)."""
    from ray.cluster_utils import Cluster

    store = 80 * 1024 * 1024
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": store,
                                                          "include_dashboard": False})
    nodes.add_node(num_cpus=2, object_store_memory=store)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


def _common(head: str, checkpoint: Path) -> list[str]:
    return ["--flame", head, "--checkpoint", str(checkpoint), "--device", "cpu", "--worker-python", sys.executable,
            "--fps", "30", "--glb"]


def _farm(manifest: Path, out: Path, address: str | None, head: str, checkpoint: Path, **env: str) -> list[str]:
    cmd = [sys.executable, "-m", "blender_addon.cli", "farm", str(manifest), "--out-dir", str(out)]
    return cmd + (["--ray", address] if address else []) + _common(head, checkpoint)


def _dump(blends: list[Path], tmp: Path) -> dict[str, dict]:
    out = tmp / "dump.json"
    run = subprocess.run([sys.executable, "-c", DUMP, str(out), *map(str, blends)], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


def _temporaries(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.iterdir() if TMP_MARK in p.name or p.name.endswith("@")]


def _attempts(out: Path, name: str) -> list[dict]:
    path = out / ".flametalk-farm" / "attempts" / f"{name}.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def batch_reference(inputs, parity_checkpoint_dir, tmp_path_factory):
    """What `batch` writes for the six clips (one warm worker, one Blender)."""
    folder, head = inputs
    out = tmp_path_factory.mktemp("farm_batch")
    cmd = [sys.executable, "-m", "blender_addon.cli", "batch", *(str(folder / f"{s}.wav") for s, *_ in CLIPS),
           "--out-dir", str(out), *_common(head, parity_checkpoint_dir)]
    run = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def killed_run(inputs, cluster, parity_checkpoint_dir, tmp_path_factory):
    """Six good rows, a malformed row and a missing audio file on the two nodes; the Blender writer of l3 is
    killed (SIGKILL) while its files are written, before they are renamed into place."""
    folder, head = inputs
    manifest = folder / "lines.csv"
    rows = [f"{stem}.wav,{NAMES[stem]},," for stem, *_ in CLIPS]
    rows[3:3] = ["c1.wav,broken,slow,", "nowhere/gone.wav,missing,,"]
    manifest.write_text("audio,name,mode,fps\n" + "\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("farm_out")
    t0 = time.perf_counter()
    proc = subprocess.Popen(_farm(manifest, out, cluster.address, head, parity_checkpoint_dir), cwd=ROOT,
                            env=_env(FLAMETALK_FARM_TEST_HOLD="l3=60"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 400
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        writers = [a for a in _attempts(out, "l3") if a["role"] == "writer"]
        temps = [p for p in out.glob(f".l3.blend{TMP_MARK}*") if writers and str(writers[0]["pid"]) in p.name]
        if temps:  # the .blend (and .glb) are written to temporaries and held: kill the writer now
            killed = writers[0]["pid"]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout, stderr, out, killed, time.perf_counter() - t0


def test_every_line_is_written_once_and_equals_the_batch(killed_run, batch_reference, tmp_path):
    rc, _, stderr, out, _, seconds = killed_run
    assert rc == 1, stderr[-3000:]  # two bad rows
    report = json.loads((out / "farm_report.json").read_text())
    by_name = {e["name"]: e for e in report["lines"]}
    assert [e["name"] for e in report["lines"]] == ["l1", "l2", "l3", "broken", "missing", "l4", "l5", "l6"]
    assert report["ok"] == 6 and report["failed"] == 2 and report["skipped"] == 0
    good = [by_name[n] for n in NAMES.values()]
    assert all(e["status"] == "ok" for e in good)
    assert len({e["node"] for e in good}) == 2  # both nodes wrote lines
    expected = {f"{n}{ext}" for n in NAMES.values() for ext in (".blend", ".glb")} | {"farm_report.json",
                                                                                         ".flametalk-farm"}
    assert {p.name for p in out.iterdir()} == expected  # exactly one set of outputs, nothing else
    assert _temporaries(out, out / ".flametalk-farm" / "motion") == []
    batch_lines = {Path(e["audio"]).stem: e for e in json.loads((batch_reference / "batch_report.json").read_text())
                   ["lines"]}
    farm_blends = [out / f"{NAMES[s]}.blend" for s, *_ in CLIPS]
    batch_blends = [batch_reference / f"{s}.blend" for s, *_ in CLIPS]
    dumped = _dump(farm_blends + batch_blends, tmp_path)
    for (stem, *_), farm, batch in zip(CLIPS, farm_blends, batch_blends):
        entry, reference = by_name[NAMES[stem]], batch_lines[stem]
        for field in ("take", "frames", "keys"):
            assert entry[field] == reference[field], (stem, field)
        a, b = dumped[str(farm)], dumped[str(batch)]
        assert a["range"] == b["range"] and a["fps"] == b["fps"] == [30, 1.0]
        assert sorted(a["curves"]) == sorted(b["curves"]) and len(a["curves"]) > 100
        for curve, values in b["curves"].items():  # every key's frame and value, bit for bit
            assert a["curves"][curve] == values, (stem, curve)
        assert (out / f"{NAMES[stem]}.glb").stat().st_size > 10_000
    keyed = np.array(dumped[str(farm_blends[0])]["curves"][next(iter(sorted(dumped[str(farm_blends[0])]["curves"])))])
    assert np.ptp(keyed[1::2]) > 0 or len(keyed) > 2  # real keys, not an empty curve
    record("farm", "6 lines (+2 bad rows) on 2 local Ray nodes, 1 writer killed", f"{seconds:.1f} s")


def test_the_farm_motion_is_the_batch_motion_bit_for_bit(killed_run, batch_reference, tmp_path):
    """The motion .npz the farm's model worker wrote is, bit for bit, what the batch keyed: its expression channels
    equal the batch .blend's shape-key values (default controls: no scaling, no smoothing, a key per frame)."""
    from flametalk.flame.contract import EXPR, MOTION_FPS

    _, _, _, out, _, _ = killed_run
    report = {e["name"]: e for e in json.loads((out / "farm_report.json").read_text())["lines"]}
    blends = [batch_reference / f"{stem}.blend" for stem in ("c1", "c4")]
    dumped = _dump(blends, tmp_path)
    for stem, blend in zip(("c1", "c4"), blends):
        with np.load(report[NAMES[stem]]["motion"]) as data:
            motion, fps = data["motion"], float(data["fps"])
        assert motion.dtype == np.float32 and motion.shape == (report[NAMES[stem]]["frames"], 106)
        assert fps == MOTION_FPS
        shapes = [v for k, v in dumped[str(blend)]["curves"].items()
                  if k.split("|")[0].endswith("shapes") and k.split("|")[1].startswith("key_blocks")]
        assert len(shapes) == EXPR.stop - EXPR.start
        for e, co in enumerate(shapes):
            values = np.array(co[1::2], dtype=np.float64)
            assert np.array_equal(values, motion[:, EXPR.start + e].astype(np.float64)), (stem, e)
            frames = np.array(co[0::2])
            assert np.allclose(frames, 1 + np.arange(len(motion)) * 30 / MOTION_FPS)  # --fps 30, start frame 1


def test_a_killed_writer_line_is_retried_once_and_leaves_nothing(killed_run):
    _, _, stderr, out, killed, _ = killed_run
    assert killed is not None, stderr[-3000:]
    report = {e["name"]: e for e in json.loads((out / "farm_report.json").read_text())["lines"]}
    assert report["l3"]["status"] == "ok" and report["l3"]["attempts"] == 2
    assert all(report[n]["attempts"] == 1 for n in NAMES.values() if n != "l3")
    writers = [a for a in _attempts(out, "l3") if a["role"] == "writer"]
    assert len(writers) == 2 and writers[0]["pid"] == killed and writers[1]["pid"] != killed  # Ray restarted the actor
    assert len([a for a in _attempts(out, "l3") if a["role"] == "model"]) == 1  # the motion was not recomputed
    marker = json.loads((out / ".flametalk-farm" / "done" / "l3.json").read_text())
    assert marker["outputs"] == [str(out / "l3.blend"), str(out / "l3.glb")] and len(marker["key"]) == 64
    assert not list(out.glob(".l3*"))


def test_a_bad_row_and_a_missing_audio_file_are_one_line_each(killed_run, inputs):
    _, _, stderr, out, _, _ = killed_run
    folder, _ = inputs
    errors = [ln for ln in stderr.splitlines() if ln.startswith("flametalk: error:")]
    assert errors == [
        "flametalk: error: manifest row 4 (broken): mode must be exact or fast, got 'slow'",
        f"flametalk: error: missing: audio file not found: {folder / 'nowhere' / 'gone.wav'}"]
    report = {e["name"]: e for e in json.loads((out / "farm_report.json").read_text())["lines"]}
    assert report["broken"]["status"] == report["missing"]["status"] == "failed"
    assert report["missing"]["error"] == f"audio file not found: {folder / 'nowhere' / 'gone.wav'}"
    progress = [ln for ln in stderr.splitlines() if ln.startswith("flametalk: farm: ")]
    assert progress and progress[-1].startswith("flametalk: farm: 8/8 lines (6 ok, 2 failed, 0 skipped), ")
    assert "lines/min, ETA 0:00:00" in progress[-1]


def test_an_interrupted_farm_resumes_only_the_unfinished_lines(inputs, cluster, parity_checkpoint_dir, tmp_path):
    folder, head = inputs
    own = tmp_path / "audio"
    own.mkdir()
    for stem in ("c1", "c2", "c3", "c5"):
        (own / f"{stem}.wav").write_bytes((folder / f"{stem}.wav").read_bytes())
    manifest = own / "lines.jsonl"
    manifest.write_text("".join(json.dumps({"audio": f"{s}.wav", "name": NAMES[s]}) + "\n"
                                for s in ("c1", "c2", "c3", "c5")))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [*_farm(manifest, out, cluster.address, head, parity_checkpoint_dir), "--model-workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(FLAMETALK_FARM_TEST_HOLD="l3=120"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    done = out / ".flametalk-farm" / "done"
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:  # two lines done and l3 held mid-write
        if len(list(done.glob("*.json"))) >= 2 and list(out.glob(f".l3.blend{TMP_MARK}*")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "flametalk: interrupted:" in stderr
    first = json.loads((out / "farm_report.json").read_text())
    ok_first = {e["name"] for e in first["lines"] if e["status"] == "ok"}
    finished = {p.stem for p in done.glob("*.json")}  # complete lines (a marker may beat the driver's report)
    assert first["interrupted"] is True and "l3" in first["not_written"] and "l3" not in finished
    assert finished >= ok_first and len(ok_first) >= 2
    assert not (out / "l3.blend").exists()
    stamps = {n: (out / f"{n}.blend").stat().st_mtime_ns for n in finished}
    changed = sorted(ok_first)[0]  # its scene frame rate changes: the rerun redoes it (with the same motion)
    manifest.write_text("".join(json.dumps({"audio": f"{s}.wav", "name": NAMES[s],
                                            **({"fps": 24} if NAMES[s] == changed else {})}) + "\n"
                                for s in ("c1", "c2", "c3", "c5")))
    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    second = {e["name"]: e for e in json.loads((out / "farm_report.json").read_text())["lines"]}
    skipped = {n for n, e in second.items() if e["status"] == "skipped"}
    assert skipped == finished - {changed}
    assert {n for n, e in second.items() if e["status"] == "ok"} == {"l1", "l2", "l3", "l5"} - skipped
    for name in skipped:  # not rewritten, no attempt recorded
        assert (out / f"{name}.blend").stat().st_mtime_ns == stamps[name] and second[name]["attempts"] == 0
    assert (out / f"{changed}.blend").stat().st_mtime_ns != stamps[changed]
    assert second[changed]["attempts"] == 1 and [a["role"] for a in _attempts(out, changed)] == ["writer"]
    assert [a["role"] for a in _attempts(out, "l3")] == ["writer"]  # its motion was computed before the interrupt
    dumped = _dump([out / f"{changed}.blend"], tmp_path)[str(out / f"{changed}.blend")]
    assert dumped["fps"] == [24, 1.0]
    for name in ("l1", "l2", "l3", "l5"):
        assert (out / f"{name}.blend").stat().st_size > 100_000 and (out / f"{name}.glb").stat().st_size > 10_000
    assert _temporaries(out, out / ".flametalk-farm" / "motion") == []
    assert "interrupted" not in json.loads((out / "farm_report.json").read_text())


def _one_error(run: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flametalk: error: "), run.stderr[-2000:]
    return lines[0]


def test_bad_invocations_are_one_line_and_exit_2(inputs, parity_checkpoint_dir, tmp_path):
    folder, head = inputs
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,name\n" + str(folder / "c1.wav") + ",x\n")
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(_farm(tmp_path / "none.csv", out, None, head, parity_checkpoint_dir), cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and _one_error(run) == f"flametalk: error: manifest not found: {tmp_path / 'none.csv'}"
    run = subprocess.run(_farm(manifest, Path("/sys"), None, head, parity_checkpoint_dir), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert _one_error(run) == ("flametalk: error: --out-dir: cannot write in /sys (Permission denied): choose a "
                               "writable folder")
    code = ("import sys; sys.modules['ray'] = None; from blender_addon.cli.main import main; "
            f"sys.exit(main({_farm(manifest, out, None, head, parity_checkpoint_dir)[3:]!r}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert _one_error(run) == ("flametalk: error: the farm needs Ray: pip install 'flametalk[farm]' (into the "
                               "Python that has bpy)")
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written by a bad invocation


def test_a_model_actor_whose_worker_died_exits_for_ray_to_retry(tmp_path, monkeypatch):
    """The worker process of a model actor died mid-line: the actor process exits too, so Ray restarts it and
    retries the line (max_task_retries); a line's own worker error is returned as that line's failure."""
    from blender_addon.cli import farm
    from blender_addon.worker.client import WorkerError

    class Client:
        kind = "crash"

        def __init__(self):
            self.hello = {"pid": 4242}

        def start(self):
            return self.hello

        def submit(self, cmd, **fields):
            assert cmd == "generate" and fields["out"] != line["motion"]  # written to a temporary
            return 1

        def wait(self, rid, timeout=None):
            raise WorkerError("the worker stopped unexpectedly", self.kind)

    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(farm, "_node", lambda: {"node": "n1", "host": "h"})
    monkeypatch.setattr(farm.os, "_exit", exit_)
    line = {"motion": str(tmp_path / "l1.0123456789abcdef.npz"), "attempts": str(tmp_path / "l1.jsonl"),
            "fields": {"audio": "a.wav"}, "timeout": None}
    actor = farm.ModelActor.__new__(farm.ModelActor)
    actor.client = Client()
    with pytest.raises(Exited):
        actor.generate(line)
    assert [a["worker_pid"] for a in _attempts_file(tmp_path / "l1.jsonl")] == [4242]
    Client.kind = "input"
    assert actor.generate(line) == {"error": "the worker stopped unexpectedly"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l1.jsonl"]  # no motion, no temporary


def _attempts_file(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]
