"""Audio in: formats, rates, channels -> mono float32 16 kHz; short, silent and hour-long clips; clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import soxr
from fixtures.common import AUDIO_DIR, one_error_line, run_flametalk
from flametalk.errors import FlameTalkError
from flametalk.io import audio as audio_mod
from flametalk.io.audio import load_audio, load_audio_array

SR = 16_000
TONE_HZ = 440.0
FORMATS = [  # (format, subtype, suffix)
    ("WAV", "PCM_16", "wav"),
    ("FLAC", "PCM_16", "flac"),
    ("OGG", "VORBIS", "ogg"),
    ("OGG", "OPUS", "opus"),
    ("MP3", "MPEG_LAYER_III", "mp3"),
]


def tone(rate: int, seconds: float, channels: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * TONE_HZ * t)
    # Stereo: the tone on the left, silence on the right -> the mono mix has half the amplitude.
    return np.stack([x, np.zeros_like(x)], axis=1) if channels == 2 else x


def peak_hz(x: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def write(path, data, rate, fmt="WAV", subtype="PCM_16"):
    try:
        sf.write(str(path), data, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as err:  # an older libsndfile without MP3/Opus encoding
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}: {err}")
    return path


@pytest.mark.parametrize("rate,channels", [(48_000, 2), (8_000, 1)])
@pytest.mark.parametrize("fmt,subtype,suffix", FORMATS)
def test_formats_rates_and_channels_become_mono_16k_and_keep_pitch(tmp_path, fmt, subtype, suffix, rate, channels):
    seconds = 1.5
    path = write(tmp_path / f"tone.{suffix}", tone(rate, seconds, channels), rate, fmt, subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.shape[0] - round(seconds * SR)) <= 1
    assert abs(peak_hz(out) - TONE_HZ) <= 1.0  # FFT bin spacing is 0.67 Hz
    expected_amp = 0.25 if channels == 2 else 0.5  # channel mean
    lossy = fmt in ("OGG", "MP3")
    assert np.percentile(np.abs(out), 99.9) == pytest.approx(expected_amp, rel=0.15 if lossy else 0.01)


def test_block_streaming_equals_one_shot_soxr(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rate = 44_100
    data = (rng.standard_normal((rate * 3 + 17, 2)) * 0.1).astype(np.float32)
    path = write(tmp_path / "noise.wav", data, rate, "WAV", "FLOAT")
    monkeypatch.setattr(audio_mod, "READ_BLOCK_FRAMES", 1000)  # many blocks
    streamed = load_audio(path)
    one_shot = soxr.resample(data.mean(axis=1, dtype=np.float32), rate, SR, quality="HQ")
    assert streamed.shape == one_shot.shape
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)


def test_16k_float_audio_passes_through_bit_exact(tmp_path):
    x = (np.random.default_rng(2).standard_normal(12_345) * 0.2).astype(np.float32)
    path = write(tmp_path / "x.wav", x, SR, "WAV", "FLOAT")
    np.testing.assert_array_equal(load_audio(path), x)


def test_real_speech_48k_stereo_loads_to_the_right_length():
    path = AUDIO_DIR / "eng2.wav"
    info = sf.info(str(path))
    assert (info.samplerate, info.channels) == (48_000, 2)
    out = load_audio(path)
    assert abs(out.shape[0] - round(info.frames * SR / info.samplerate)) <= 1
    assert 3.3 < out.shape[0] / SR < 3.5
    assert np.isfinite(out).all() and 0.05 < np.abs(out).max() <= 1.0


def test_silence_and_very_short_clips(tmp_path):
    silent = load_audio(write(tmp_path / "silence.wav", np.zeros((48_000 * 2, 2)), 48_000))
    assert silent.shape == (32_000,) and not silent.any()
    short = load_audio(write(tmp_path / "short.wav", tone(44_100, 0.2, 1), 44_100))
    assert short.shape == (3_200,)
    one_frame = load_audio(write(tmp_path / "tiny.wav", np.full(3, 0.1), 48_000))  # 3 samples at 48 kHz
    assert one_frame.shape == (1,)


def test_load_audio_array_accepts_int_float_and_either_channel_layout():
    x = tone(44_100, 1.0, 2)
    as_int16 = (x * 32767).astype(np.int16)
    a = load_audio_array(as_int16, 44_100)
    b = load_audio_array(np.ascontiguousarray(x.T), 44_100, channel_axis=0)
    c = load_audio_array(x.astype(np.float64), 44_100.0)
    for out in (a, b, c):
        assert out.dtype == np.float32 and out.shape == (16_000,)
        assert abs(peak_hz(out) - TONE_HZ) <= 1.0
    np.testing.assert_allclose(a, c, atol=1e-4)
    np.testing.assert_array_equal(b, c)
    u8 = load_audio_array(np.full(800, 128, dtype=np.uint8), 8_000)  # unsigned PCM: 128 is silence
    assert u8.shape == (1_600,) and np.abs(u8).max() < 1e-6


@pytest.mark.parametrize(
    "samples,rate,message",
    [
        (np.zeros(0, np.float32), 16_000, "zero-length"),
        (np.zeros((2, 2, 2), np.float32), 16_000, "must be 1-D"),
        (np.zeros(100, np.float32), 0, "positive number of Hz"),
        (np.zeros(100, np.float32), float("nan"), "positive number of Hz"),
        (np.array(["a", "b"]), 16_000, "integer PCM or floating point"),
        (np.array([0.0, np.nan, 0.0], np.float32), 16_000, "NaN or infinite"),
    ],
)
def test_load_audio_array_errors(samples, rate, message):
    with pytest.raises(FlameTalkError, match=message):
        load_audio_array(samples, rate)


def _bad_files(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all " * 40)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    zero_len = tmp_path / "zero.wav"
    sf.write(str(zero_len), np.zeros((0, 1)), 16_000)
    return {
        "missing": (tmp_path / "nope.wav", "does not exist; check the path"),
        "empty": (empty, "is empty (0 bytes)"),
        "garbage": (garbage, "is not a readable audio file"),
        "zero-length": (zero_len, "contains no audio samples (zero length)"),
        "folder": (tmp_path, "is a folder, not an audio file"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "zero-length", "folder"])
def test_bad_files_raise_clear_errors(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    with pytest.raises(FlameTalkError) as info:
        load_audio(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "zero-length"])
def test_cli_exits_2_with_one_line_for_bad_audio(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    proc = run_flametalk("generate", str(path), "--checkpoint", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert message in one_error_line(proc.stderr)


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS via resource.ru_maxrss in KiB is Linux-specific")
def test_one_hour_clip_streams_with_bounded_memory(tmp_path):
    """1 h of 44.1 kHz stereo 16-bit noise (635 MB on disk; 1.27 GB if decoded to float32 at once)."""
    rate, seconds = 44_100, 3600
    path = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", rate, 2, "PCM_16") as fh:
        for _ in range(seconds // 60):
            fh.write(rng.integers(-3000, 3000, size=(rate * 60, 2), dtype=np.int16))
    code = textwrap.dedent(f"""
        import resource
        from flametalk.io.audio import load_audio
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = load_audio({str(path)!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(out.shape[0], str(out.dtype), before // 1024, after // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    n, dtype, before_mb, after_mb = proc.stdout.split()
    assert int(n) == seconds * SR and dtype == "float32"
    # The 16 kHz output alone is 230 MB; decoding the whole file first would add >= 1.27 GB.
    assert int(after_mb) - int(before_mb) < 350, proc.stdout
