"""Audio headers that lie or are extreme: sample rate 1 kHz-768 kHz and a duration cap, checked from the header before
anything is decoded or allocated; each is one FlameTalkError line, exit code 2 in the CLI (issue 19, item 6)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf
from fixtures.common import one_error_line, run_flametalk
from flametalk.errors import FlameTalkError
from flametalk.io import audio as audio_mod
from flametalk.io.audio import MAX_RATE, MAX_SECONDS, MIN_RATE, load_audio, load_audio_array


def wav(path, rate: int, frames: int = 100, channels: int = 1, subtype: str = "PCM_16"):
    sf.write(str(path), np.zeros((frames, channels), np.float32), rate, subtype=subtype)
    return path


def test_the_limits_are_the_documented_ones():
    assert (MIN_RATE, MAX_RATE, MAX_SECONDS) == (1_000, 768_000, 4 * 3600)


@pytest.mark.parametrize("rate", [1, 8, 999, 768_001, 2**31 - 1])
def test_a_rate_outside_1k_768k_is_refused_before_decoding(tmp_path, monkeypatch, rate):
    path = wav(tmp_path / "odd.wav", rate, frames=1_000)

    def no_allocation(*args, **kwargs):
        raise AssertionError("the resampler was built for a refused file")

    monkeypatch.setattr(audio_mod, "_StreamResampler", no_allocation)
    with pytest.raises(FlameTalkError) as info:
        load_audio(path)
    assert str(info.value) == (
        f"audio file '{path}': sample rate {rate:g} Hz is outside the supported 1,000-768,000 Hz (a damaged header "
        "or an unusual recording); resample it (e.g. `ffmpeg -i INPUT -ar 16000 out.wav`)"
    )
    assert info.value.exit_code == 2


@pytest.mark.parametrize("rate", [1_000, 768_000])
def test_the_edge_rates_load(tmp_path, rate):
    assert load_audio(wav(tmp_path / "edge.wav", rate, frames=rate // 10)).shape == (1_600,)  # 0.1 s


def test_load_audio_array_has_the_same_rate_limits():
    with pytest.raises(FlameTalkError, match="sample rate 500 Hz is outside the supported 1,000-768,000 Hz"):
        load_audio_array(np.zeros(100, np.float32), 500)
    with pytest.raises(FlameTalkError, match="sample rate 1e\\+06 Hz is outside"):
        load_audio_array(np.zeros(100, np.float32), 1_000_000)


def test_a_file_over_the_duration_cap_is_refused_from_its_header(tmp_path):
    """4 h and 1 s of 8-bit audio at 1 kHz: a 14 MB file whose 16 kHz output would be 920 MB."""
    path = tmp_path / "long.wav"
    frames = (MAX_SECONDS + 1) * 1_000
    with sf.SoundFile(str(path), "w", 1_000, 1, "PCM_U8") as fh:
        fh.write(np.zeros(frames, np.int16))
    assert sf.info(str(path)).frames == frames
    with pytest.raises(FlameTalkError) as info:
        load_audio(path)
    assert str(info.value) == (
        f"audio file '{path}' is 14,401 s (4.0 h) long; FlameTalk takes at most 14,400 s (4 h) of audio per file: "
        "split it into shorter "
        "parts (e.g. `ffmpeg -i INPUT -f segment -segment_time 3600 part%03d.wav`)"
    )


def test_the_duration_cap_is_checked_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_mod, "MAX_SECONDS", 2)
    path = wav(tmp_path / "three.wav", 16_000, frames=3 * 16_000)
    monkeypatch.setattr(audio_mod, "_StreamResampler", lambda *a, **k: pytest.fail("allocated for a refused file"))
    with pytest.raises(FlameTalkError, match=r"is 3 s \(0\.0 h\) long; FlameTalk takes at most 2 s \("):
        load_audio(path)
    with pytest.raises(FlameTalkError, match="audio samples is 3 s"):
        load_audio_array(np.zeros(3 * 16_000, np.float32), 16_000)


def test_a_header_that_understates_the_length_is_stopped_while_reading(monkeypatch):
    """MP3/OGG headers may give too few frames: the streaming buffer stops at the same cap instead of growing."""
    monkeypatch.setattr(audio_mod, "MAX_SECONDS", 1)
    resampler = audio_mod._StreamResampler(16_000, 100, "audio file 'x.mp3'")
    resampler.feed(np.zeros(30_000, np.float32))
    with pytest.raises(FlameTalkError, match=r"audio file 'x\.mp3' is 2 s .* at most 1 s"):
        resampler.feed(np.zeros(3_000, np.float32))


def test_many_channels_are_read_in_shorter_blocks(tmp_path, monkeypatch):
    path = wav(tmp_path / "wide.wav", 16_000, frames=5_000, channels=64, subtype="FLOAT")
    seen = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        seen.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    assert load_audio(path).shape == (5_000,)
    assert set(seen) == {2 * audio_mod.READ_BLOCK_FRAMES // 64}  # 8,192 frames x 64 channels per block


@pytest.mark.skipif(sys.platform == "win32", reason="one CLI run is enough on the CI platforms")
def test_cli_refuses_a_1_hz_wav_with_one_line(tmp_path):
    """The issue's case: a WAV header claiming 1 Hz used to ask for 59.6 GiB and end in 'unexpected MemoryError'."""
    path = wav(tmp_path / "one_hz.wav", 1, frames=1_000_000, subtype="PCM_U8")
    proc = run_flametalk("generate", str(path), "--checkpoint", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "sample rate 1 Hz is outside the supported 1,000-768,000 Hz" in one_error_line(proc.stderr)
