"""`python -m flametalk live`: a WAV file played in real time stands in for the microphone (the same path after the
capture); the take equals one-shot generation and every batch of frames comes with its latency."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
from fixtures import report
from fixtures.common import run_flametalk
from flametalk.commands.live import WavSource, import_sounddevice, run_live
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.errors import FlameTalkError
from flametalk.io.audio import load_audio, load_audio_array
from flametalk.io.checkpoint import load_checkpoint
from flametalk.io.motion import load_motion


@pytest.fixture(scope="module")
def wav44(parity_vector, tmp_path_factory):
    """6 s of the parity speech at 44.1 kHz (two windows, the second partial)."""
    speech = parity_vector["inputs"]["audio_16k"][0].float().numpy()[: 6 * 16_000]
    import soxr

    path = tmp_path_factory.mktemp("live") / "mic.wav"
    sf.write(path, soxr.resample(speech, 16_000, 44_100), 44_100, subtype="FLOAT")
    return path


def test_live_from_a_wav_in_real_time_equals_one_shot_and_measures_latency(parity_checkpoint_dir, wav44):
    model = load_checkpoint(parity_checkpoint_dir)
    out = io.StringIO()
    motion, audio, log = run_live(model, WavSource(str(wav44), speed=1.0), as_json=True, out=out)
    expected = postprocess_motion(generate_motion(model, load_audio(wav44)))
    np.testing.assert_array_equal(motion, expected)
    np.testing.assert_array_equal(audio, load_audio(wav44))  # the captured audio, for the take's sound strip
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["start"], x["stop"]) for x in lines] == [(0, 96), (96, 150)] and lines[-1]["final"]
    first = lines[0]
    # frames 0 and 95 come out together: frame 0's moment was captured 95 / 25 = 3.8 s before frame 95's (to a
    # 20-ms block), so its latency is 3.8 s longer; frame 95's is the window's compute (machine-dependent)
    assert 3.8 - 0.03 < first["latency_first_s"] - first["latency_last_s"] < 3.8 + 0.03
    assert first["latency_last_s"] > 0
    lat = np.asarray(log.frame_latency)
    report.record("live (reduced model, WAV in real time)", "per-frame latency",
                  f"window 1: first frame {first['latency_first_s']:.2f} s, last {first['latency_last_s']:.2f} s; "
                  f"median {np.median(lat):.2f} s")


def test_live_cli_with_a_wav_saves_the_take_and_prints_latency(parity_checkpoint_dir, wav44, tmp_path):
    out = tmp_path / "take.npz"
    proc = run_flametalk("live", "--wav", str(wav44), "--speed", "0", "--checkpoint", str(parity_checkpoint_dir),
                         "--compute-device", "cpu", "--out", str(out), "--save-audio", str(tmp_path / "a.wav"))
    assert proc.returncode == 0, proc.stderr
    assert "latency" in proc.stdout and "latency per frame: min" in proc.stderr
    model = load_checkpoint(parity_checkpoint_dir)
    np.testing.assert_array_equal(load_motion(out)[0], postprocess_motion(generate_motion(model, load_audio(wav44))))
    assert sf.read(tmp_path / "a.wav")[0].shape[0] == load_audio(wav44).shape[0]


def test_without_sounddevice_one_clear_line(tmp_path):
    blocker = tmp_path / "sounddevice.py"
    blocker.write_text("raise OSError('PortAudio library not found')\n")
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = run_flametalk("live", "--device", "0", env={"PYTHONPATH": path})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'flametalk[stream]'" in lines[0] and "--wav" in lines[0]


def test_import_sounddevice_error_is_a_flametalk_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import raises ImportError
    with pytest.raises(FlameTalkError, match="needs sounddevice"):
        import_sounddevice()


def test_int_pcm_resampling_helper_is_what_load_audio_array_gives():
    pcm = (np.random.default_rng(1).standard_normal(4410) * 3000).astype(np.int16)
    assert load_audio_array(pcm, 44_100).shape == (1600,)
