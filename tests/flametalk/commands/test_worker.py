"""The warm worker process and the add-on's stdlib client: results, progress, cancel, crashes, missing torch."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.common import AUDIO_DIR, REPO
from flametalk.decode.autoregressive import frames_for_samples
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.io.audio import load_audio
from flametalk.io.checkpoint import load_checkpoint
from flametalk.io.motion import load_motion

from blender_addon.worker.client import WorkerClient, WorkerError


@pytest.fixture(scope="module")
def client():
    c = WorkerClient(sys.executable)
    hello = c.start()
    assert hello["protocol"] == 1 and "cpu" in hello["devices"]
    yield c
    c.stop()


def test_generate_writes_the_same_motion_as_the_library(client, parity_checkpoint_dir, tmp_path):
    out = tmp_path / "take.npz"
    seen = []
    rid = client.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(out),
                        checkpoint=str(parity_checkpoint_dir), device="cpu")
    result = client.wait(rid, on_progress=seen.append, timeout=300)
    motion, fps, prov = load_motion(out)
    audio = load_audio(AUDIO_DIR / "eng2.wav")
    expected = postprocess_motion(generate_motion(load_checkpoint(parity_checkpoint_dir), audio))
    assert fps == 25 and result["frames"] == motion.shape[0] == frames_for_samples(audio.size)
    np.testing.assert_array_equal(motion, expected)
    assert [e["done"] for e in seen if e.get("stage") == "generate"][-1] == 1
    assert len(prov["checkpoint"]["sha256"]) == 64


def test_another_style_for_the_same_line_reuses_its_audio(client, parity_checkpoint_dir, tmp_path):
    """The worker keeps a clip's audio conditions: the retake reports it and gives the library's motion."""
    samples = load_audio(AUDIO_DIR / "eng2.wav")[: 3 * 16000]  # a clip no other test sends
    first_wav, again_wav = tmp_path / "line.wav", tmp_path / "line_copy.wav"
    sf.write(first_wav, samples, 16000, subtype="FLOAT")
    sf.write(again_wav, samples, 16000, subtype="FLOAT")
    style = (0.1 * np.random.default_rng(3).standard_normal((50, 106))).astype(np.float32)
    np.save(tmp_path / "style.npy", style)
    results = []
    for wav, style_spec, out in ((first_wav, None, "a.npz"), (again_wav, str(tmp_path / "style.npy"), "b.npz")):
        rid = client.submit("generate", audio=str(wav), out=str(tmp_path / out), style=style_spec,
                            checkpoint=str(parity_checkpoint_dir), device="cpu")
        results.append(client.wait(rid, timeout=300))
    assert [r["audio_cached"] for r in results] == [False, True]
    model = load_checkpoint(parity_checkpoint_dir)
    expected = postprocess_motion(generate_motion(model, load_audio(again_wav), style))
    np.testing.assert_array_equal(load_motion(tmp_path / "b.npz")[0], expected)
    # another mode is another model (other conditions): its cache starts empty
    rid = client.submit("generate", audio=str(first_wav), out=str(tmp_path / "c.npz"), mode="fast",
                        checkpoint=str(parity_checkpoint_dir), device="cpu")
    assert client.wait(rid, timeout=300)["audio_cached"] is False


@pytest.mark.perf
def test_a_second_take_starts_computing_within_a_second(client, parity_checkpoint_dir, tmp_path):
    client.wait(client.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(tmp_path / "a.npz"),
                              checkpoint=str(parity_checkpoint_dir), device="cpu"), timeout=300)
    t0 = time.perf_counter()
    rid = client.submit("generate", audio=str(AUDIO_DIR / "cn1.wav"), out=str(tmp_path / "b.npz"),
                        checkpoint=str(parity_checkpoint_dir), device="cpu")
    first = []
    client.wait(rid, on_progress=lambda e: first.append(time.perf_counter() - t0) if not first else None)
    assert first and first[0] < 1.0, first


def test_bad_input_is_one_message_and_the_worker_survives(client, parity_checkpoint_dir, tmp_path):
    rid = client.submit("generate", audio=str(tmp_path / "missing.wav"), out=str(tmp_path / "x.npz"),
                        checkpoint=str(parity_checkpoint_dir))
    with pytest.raises(WorkerError) as info:
        client.wait(rid, timeout=60)
    assert info.value.kind == "input" and "missing.wav" in str(info.value)
    assert "\n" not in str(info.value)
    rid = client.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(tmp_path / "x.npz"),
                        checkpoint=str(tmp_path / "no_checkpoint"))
    with pytest.raises(WorkerError, match="checkpoint not found"):
        client.wait(rid, timeout=60)
    assert client.alive and not (tmp_path / "x.npz").exists()


def long_silence(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.01 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    return path


def test_cancel_stops_the_job_and_writes_nothing(client, parity_checkpoint_dir, tmp_path):
    out = tmp_path / "cancelled.npz"
    rid = client.submit("generate", audio=str(long_silence(tmp_path, 600)), out=str(out),
                        checkpoint=str(parity_checkpoint_dir), device="cpu")
    with pytest.raises(WorkerError) as info:
        client.wait(rid, on_progress=lambda e: False if e.get("done", 0) >= 1 else None, timeout=300)
    assert info.value.kind == "cancelled"
    assert not out.exists() and client.alive


def test_a_killed_worker_becomes_a_readable_error(parity_checkpoint_dir, tmp_path):
    c = WorkerClient(sys.executable)
    c.start()
    rid = c.submit("generate", audio=str(long_silence(tmp_path, 600)), out=str(tmp_path / "k.npz"),
                   checkpoint=str(parity_checkpoint_dir), device="cpu")

    def kill(event):
        if event.get("done", 0) >= 1:
            c.proc.kill()

    with pytest.raises(WorkerError) as info:
        c.wait(rid, on_progress=kill, timeout=300)
    assert info.value.kind == "crash" and "stopped unexpectedly" in str(info.value)
    assert not (tmp_path / "k.npz").exists()


def test_a_python_without_torch_is_reported(tmp_path):
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    c = WorkerClient(str(python), env={"PYTHONPATH": str(REPO / "inference")})
    with pytest.raises(WorkerError) as info:
        c.start(timeout=60)
    assert info.value.kind == "setup" and "torch is not installed" in str(info.value)
    with pytest.raises(WorkerError, match="worker Python not found"):
        WorkerClient(str(tmp_path / "nope" / "python")).start()


def test_queued_jobs_each_get_their_own_answers(client, parity_checkpoint_dir, tmp_path):
    """The batch CLI queues the next line while one runs: waiting for the later job must not swallow the earlier
    job's events."""
    common = {"checkpoint": str(parity_checkpoint_dir), "device": "cpu"}
    first = client.submit("generate", audio=str(AUDIO_DIR / "cn1.wav"), out=str(tmp_path / "a.npz"), **common)
    second = client.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(tmp_path / "b.npz"), **common)
    late = client.wait(second, timeout=300)  # the first job's progress and result arrive meanwhile
    early = client.wait(first, timeout=60)
    assert (early["frames"], late["frames"]) == (230, 85)
    assert load_motion(tmp_path / "a.npz")[0].shape == (230, 106)
    with pytest.raises(WorkerError, match="not pending"):
        client.poll(first)


def test_spare_cores_changes_threads_between_windows(client, parity_checkpoint_dir, tmp_path):
    """While Blender writes a line the worker leaves it a core; once Blender waits, the running job takes the
    core back from its next 4-s window."""
    default = client.hello["threads"]
    client.spare_cores(1)
    rid = client.submit("generate", audio=str(long_silence(tmp_path, 600)), out=str(tmp_path / "s.npz"),
                        checkpoint=str(parity_checkpoint_dir), device="cpu")
    seen = []

    def until_switched(event):
        seen.append(event["threads"])
        if len(seen) == 2:
            client.spare_cores(0)
        return False if default in seen[2:] else None  # then cancel: the rest of the 10 minutes is not needed

    with pytest.raises(WorkerError, match="cancelled"):
        client.wait(rid, on_progress=until_switched, timeout=300)
    assert seen[0] == max(1, default - 1) and seen[-1] == default
    bad = client.submit("spare_cores", cores=-1)
    with pytest.raises(WorkerError, match="'cores' must be a whole number") as info:
        client.wait(bad, timeout=60)
    assert info.value.kind == "input" and client.alive


def test_a_job_queued_behind_a_crash_is_reported_not_waited_for(parity_checkpoint_dir, tmp_path):
    c = WorkerClient(sys.executable)
    c.start()
    common = {"checkpoint": str(parity_checkpoint_dir), "device": "cpu"}
    running = c.submit("generate", audio=str(long_silence(tmp_path, 600)), out=str(tmp_path / "k.npz"), **common)
    queued = c.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(tmp_path / "q.npz"), **common)
    with pytest.raises(WorkerError):
        c.wait(running, on_progress=lambda e: c.proc.kill() if e.get("done", 0) >= 1 else None, timeout=300)
    again = c.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(tmp_path / "r.npz"), **common)
    with pytest.raises(WorkerError) as info:  # its worker is gone; a new one runs `again`
        c.wait(queued, timeout=60)
    assert info.value.kind == "crash" and "stopped unexpectedly" in str(info.value)
    assert c.wait(again, timeout=300)["frames"] == 85
    c.stop()
