"""The worker's `live` command (what the add-on's Live button runs): a WAV file played in real time stands in for
the microphone (commands/live.py's path after the capture); frames stream out with their latency, a `stop`
request ends the capture early, the captured audio is written for Record, and the motion is one-shot's."""

from __future__ import annotations

import base64
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from fixtures import report
from flametalk.commands.protocol import BadRequest, parse_request
from flametalk.decode.autoregressive import frames_for_samples
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.io.audio import load_audio
from flametalk.io.checkpoint import load_checkpoint

from blender_addon.worker.client import WorkerClient, WorkerError


@pytest.fixture(scope="module")
def client():
    c = WorkerClient(sys.executable)
    hello = c.start()
    assert "live" in hello["features"] and "progressive" in hello["features"]
    yield c
    c.stop()


@pytest.fixture(scope="module")
def speech(parity_vector, tmp_path_factory):
    """The parity speech (9.2 s: three windows, the last partial) as a 16-kHz WAV."""
    path = tmp_path_factory.mktemp("live") / "speech.wav"
    sf.write(path, parity_vector["inputs"]["audio_16k"][0].float().numpy(), 16_000, subtype="FLOAT")
    return path


def _collect(client: WorkerClient, rid: int, stop_after_frames: bool = False, timeout: float = 300):
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        state, event = client.poll(rid, on_event=lambda e: events.append({**e, "_at": time.perf_counter()}))
        if state == "result":
            return events, event
        if stop_after_frames and any(e["event"] == "frames" for e in events):
            client.stop_live(rid)
            stop_after_frames = False
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _motion(frames: list[dict]) -> np.ndarray:
    return np.concatenate([np.frombuffer(base64.b64decode(f["motion"]), "<f4").reshape(f["stop"] - f["start"], 106)
                           for f in frames])


def test_live_from_a_wav_streams_one_shot_motion_with_latency(client, parity_checkpoint_dir, speech, tmp_path):
    audio_out = tmp_path / "captured.wav"
    rid = client.submit("live", checkpoint=str(parity_checkpoint_dir), device="cpu", wav=str(speech), speed=1.0,
                        audio_out=str(audio_out))
    events, result = _collect(client, rid)
    assert next(e["event"] for e in events if e["event"] != "progress") == "live"  # capture starts after warm-up
    frames = [e for e in events if e["event"] == "frames"]
    assert [(f["start"], f["stop"]) for f in frames] == [(0, 96), (96, 196), (196, 230)] and frames[-1]["final"]
    expected = postprocess_motion(generate_motion(load_checkpoint(parity_checkpoint_dir), load_audio(speech)))
    np.testing.assert_array_equal(_motion(frames), expected)
    # the first window's first frame waited for the whole window (3.84 s more than its last frame)
    first, last = frames[0]["latency"]
    assert 3.8 - 0.03 < first - last < 3.8 + 0.03 and last > 0
    assert result["frames"] == 230 and result["samples"] == load_audio(speech).shape[0]
    captured, rate = sf.read(audio_out, dtype="float32")
    assert rate == 16_000 and captured.shape[0] == result["samples"]
    np.testing.assert_allclose(captured, load_audio(speech), atol=1 / 32767)  # 16-bit PCM
    assert result["latency"]["min"] <= result["latency"]["median"] <= result["latency"]["max"]
    report.record("live through the worker (reduced model, WAV in real time)", "per-frame latency",
                  f"min {result['latency']['min']:.2f} s, median {result['latency']['median']:.2f} s, "
                  f"max {result['latency']['max']:.2f} s")


def test_stop_ends_the_capture_and_keeps_what_was_captured(client, parity_checkpoint_dir, speech, tmp_path):
    audio_out = tmp_path / "captured.wav"
    rid = client.submit("live", checkpoint=str(parity_checkpoint_dir), device="cpu", wav=str(speech), speed=1.0,
                        audio_out=str(audio_out))
    events, result = _collect(client, rid, stop_after_frames=True)
    samples = result["samples"]
    assert 4 * 16_000 <= samples < load_audio(speech).shape[0]  # stopped after the first window, before the end
    frames = [e for e in events if e["event"] == "frames"]
    # the release's float count (ceil(samples / 16000 * 25)): one more than ceil(samples / 640) for some lengths
    assert frames[-1]["stop"] == result["frames"] == frames_for_samples(samples)
    head = load_audio(speech)[:samples]
    expected = postprocess_motion(generate_motion(load_checkpoint(parity_checkpoint_dir), head))
    np.testing.assert_array_equal(_motion(frames), expected)
    assert sf.read(audio_out)[0].shape[0] == samples


def test_cancel_ends_live_with_nothing_written(client, parity_checkpoint_dir, speech, tmp_path):
    audio_out = tmp_path / "captured.wav"
    rid = client.submit("live", checkpoint=str(parity_checkpoint_dir), device="cpu", wav=str(speech), speed=1.0,
                        audio_out=str(audio_out))
    time.sleep(0.5)
    client.cancel(rid)
    with pytest.raises(WorkerError) as err:
        client.wait(rid, timeout=120)
    assert err.value.kind == "cancelled" and not audio_out.exists()


def test_live_requests_are_checked():
    with pytest.raises(BadRequest, match="'speed' must be a number"):
        parse_request('{"id":1,"cmd":"live","wav":"a.wav","speed":-1}')
    with pytest.raises(BadRequest, match="'wav' must be a string"):
        parse_request('{"id":1,"cmd":"live","wav":3}')
    with pytest.raises(BadRequest, match="stop: 'target' must be a request id"):
        parse_request('{"id":1,"cmd":"stop","target":[1]}')
    req = parse_request('{"id":1,"cmd":"live"}')
    assert (req["input"], req["wav"], req["speed"], req["audio_out"], req["postprocess"]) == (None, None, 1.0, None,
                                                                                              True)
