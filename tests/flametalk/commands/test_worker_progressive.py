"""Progressive takes through the worker process: each window's final frames arrive (a "frames" event) before the
next window is computed, and together they are the one-shot take."""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures import report
from flametalk.commands.protocol import BadRequest, parse_request
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.io.audio import load_audio
from flametalk.io.checkpoint import load_checkpoint
from flametalk.io.motion import load_motion


class RawWorker:
    """The worker as a subprocess; every stdout line is kept with the time it was read."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "flametalk.commands.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ))
        self.lines: queue.Queue[tuple[float, dict]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self.next(60)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), json.loads(line)))

    def next(self, timeout: float = 300) -> dict:
        t, event = self.lines.get(timeout=timeout)
        event["_received"] = t
        return event

    def send(self, **req) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()

    def until_done(self, rid) -> list[dict]:
        events = []
        while True:
            event = self.next()
            if event.get("id") == rid:
                events.append(event)
                if event["event"] in ("result", "error"):
                    return events

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def worker():
    w = RawWorker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def speech_wav(parity_vector, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("progressive") / "speech.wav"
    sf.write(path, parity_vector["inputs"]["audio_16k"][0].float().numpy(), 16_000, subtype="FLOAT")
    return path


def test_hello_lists_the_progressive_feature(worker):
    assert worker.hello["protocol"] == 1 and "progressive" in worker.hello["features"]


@pytest.mark.parametrize("postprocess", [True, False])
def test_each_window_s_frames_arrive_before_the_next_window_is_computed(worker, parity_checkpoint_dir, speech_wav,
                                                                        tmp_path, postprocess):
    out = tmp_path / "take.npz"
    rid = f"p{postprocess}"
    worker.send(id=rid, cmd="generate", audio=str(speech_wav), out=str(out), checkpoint=str(parity_checkpoint_dir),
                device="cpu", progressive=True, postprocess=postprocess)
    seen = []
    while True:
        event = worker.next()
        if event.get("id") != rid:
            continue
        seen.append(event)
        if event["event"] in ("result", "error"):
            break
    assert seen[-1]["event"] == "result", seen[-1]
    expected = generate_motion(load_checkpoint(parity_checkpoint_dir), load_audio(speech_wav))
    if postprocess:
        expected = postprocess_motion(expected)
    np.testing.assert_array_equal(load_motion(out)[0], expected)

    # order: window k's frames, then its progress event, then window k + 1's frames
    order = [(e["event"], e.get("window", e.get("done"))) for e in seen if e["event"] in ("frames", "progress")
             and e.get("stage", "generate") == "generate"]
    frames = [e for e in seen if e["event"] == "frames"]
    if postprocess:
        assert order == [("progress", 0), ("frames", 0), ("progress", 1), ("frames", 1), ("progress", 2),
                         ("frames", 2), ("progress", 3), ("frames", 2)]
        assert [(f["start"], f["stop"], f["final"]) for f in frames] == [(0, 96, False), (96, 196, False),
                                                                         (196, 226, False), (226, 230, True)]
    else:
        assert order[:6] == [("progress", 0), ("frames", 0), ("progress", 1), ("frames", 1), ("progress", 2),
                             ("frames", 2)]
        assert [(f["start"], f["stop"]) for f in frames] == [(0, 100), (100, 200), (200, 230), (230, 230)]
    assert all(f["windows"] == 3 for f in frames)
    # the frames together are the take, each range once, in order
    parts = [np.frombuffer(base64.b64decode(f["motion"]), "<f4").reshape(f["stop"] - f["start"], 106)
             for f in frames]
    assert [f["start"] for f in frames[1:]] == [f["stop"] for f in frames[:-1]]
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    # timestamps: window k's event was read before window k + 1 was done (the gap is the next window's compute)
    for a, b in itertools.pairwise(frames[:3]):
        assert a["_received"] < b["_received"] and a["t"] < b["t"]
        assert b["_received"] - a["_received"] > 0.5 * (b["t"] - a["t"]) - 0.1  # 0.1 s: pipe and thread jitter
    report.record("progressive worker takes (reduced model)", f"first window's frames (postprocess={postprocess})",
                  f"{frames[0]['t']:.2f} s after the request, of {seen[-1]['seconds']:.2f} s in all")


def test_cancel_keeps_the_finished_windows_as_a_shorter_take_when_asked(worker, parity_checkpoint_dir, tmp_path):
    audio = (0.1 * np.random.default_rng(4).standard_normal(600 * 16_000)).astype(np.float32)  # 10 min, 150 windows
    wav = tmp_path / "long.wav"
    sf.write(wav, audio, 16_000, subtype="FLOAT")
    out = tmp_path / "long.npz"
    worker.send(id="c", cmd="generate", audio=str(wav), out=str(out), checkpoint=str(parity_checkpoint_dir),
                device="cpu", progressive=True, keep_partial=True)
    first = None
    while True:
        event = worker.next()
        if event.get("id") == "c" and event["event"] == "frames" and first is None:
            first = event
            worker.send(id="x", cmd="cancel", target="c")
        if event.get("id") == "c" and event["event"] in ("result", "error"):
            break
    assert event["event"] == "error" and event["kind"] == "cancelled", event
    kept = event["kept"]
    assert kept >= first["stop"] and (kept + 4) % 100 == 0
    motion, _, prov = load_motion(out)
    assert motion.shape[0] == kept and prov["partial"] is True
    windows = (kept + 4) // 100
    head = postprocess_motion(generate_motion(load_checkpoint(parity_checkpoint_dir), audio[: windows * 64_000]))
    np.testing.assert_array_equal(motion, head[:kept])


def test_progressive_flags_must_be_booleans():
    with pytest.raises(BadRequest, match="'progressive' must be true or false"):
        parse_request('{"id":1,"cmd":"generate","audio":"a.wav","out":"x.npz","progressive":1}')
    with pytest.raises(BadRequest, match="'keep_partial' must be true or false"):
        parse_request('{"id":1,"cmd":"generate","audio":"a.wav","out":"x.npz","keep_partial":"yes"}')
    req = parse_request('{"id":1,"cmd":"generate","audio":"a.wav","out":"x.npz"}')
    assert "progressive" not in req and "keep_partial" not in req  # old requests parse as before
    assert parse_request('{"id":1,"cmd":"generate","audio":"a","out":"x","progressive":true}')["progressive"] is True
