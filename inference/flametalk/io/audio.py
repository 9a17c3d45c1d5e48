"""Audio in: any file libsndfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) -> mono float32 at 16 kHz.

Files are read in blocks and resampled with a streaming soxr resampler, so an hour-long recording needs only the
memory of its 16 kHz output (about 230 MB per hour) plus one block, never the whole decoded file at its own rate.
Channels are averaged (mean) into mono. Resampling uses soxr's high-quality (HQ) preset; nothing here is
hand-written DSP.

Limits, checked from the file's header before anything is decoded or allocated: the sample rate must be
MIN_RATE..MAX_RATE (1 kHz to 768 kHz) and the audio at most MAX_SECONDS (4 hours: about 920 MB at 16 kHz) long; a
file whose header under-states its length is stopped at the same limit while it is read. A file with many channels
is read in proportionally shorter blocks (at most about READ_BLOCK_FRAMES * 2 samples per block).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import FlameTalkError
from ..flame.contract import SAMPLE_RATE

READ_BLOCK_FRAMES = 1 << 18  # source frames decoded per block (~5.5 s at 48 kHz; ~2 MB per channel as float32)
RESAMPLE_QUALITY = "HQ"  # soxr preset: high quality, linear phase
MIN_RATE = 1_000  # Hz; below it a header is broken (a 1-Hz WAV would ask for 16,000 output samples per input one)
MAX_RATE = 768_000  # Hz; the highest rate audio interfaces record at
MAX_SECONDS = 4 * 3600  # longest audio per file (the 16 kHz output of 4 h is 920 MB of float32)
SPLIT_HINT = "split it into shorter parts (e.g. `ffmpeg -i INPUT -f segment -segment_time 3600 part%03d.wav`)"
CONVERT_HINT = "convert it to WAV, FLAC, OGG or MP3 (e.g. `ffmpeg -i INPUT -ac 1 -ar 16000 out.wav`)"

__all__ = ["MAX_RATE", "MAX_SECONDS", "MIN_RATE", "READ_BLOCK_FRAMES", "RESAMPLE_QUALITY", "load_audio",
           "load_audio_array", "resampled_length"]


def resampled_length(n_frames: int, rate: float) -> int:
    """Number of 16 kHz samples soxr returns for `n_frames` at `rate` (round to nearest, ties up)."""
    if rate == SAMPLE_RATE:
        return n_frames
    return math.floor(n_frames * SAMPLE_RATE / rate + 0.5)


def _check_rate(rate: float, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise FlameTalkError(f"{what}: sample rate must be a number, got {type(rate).__name__}")
    rate = float(rate)
    if not math.isfinite(rate) or rate <= 0:
        raise FlameTalkError(f"{what}: sample rate must be a positive number of Hz, got {rate}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise FlameTalkError(
            f"{what}: sample rate {rate:g} Hz is outside the supported {MIN_RATE:,}-{MAX_RATE:,} Hz (a damaged header "
            "or an unusual recording); resample it (e.g. `ffmpeg -i INPUT -ar 16000 out.wav`)"
        )
    return rate


def _too_long(what: str, seconds: float) -> FlameTalkError:
    return FlameTalkError(f"{what} is {seconds:,.0f} s ({seconds / 3600:.1f} h) long; FlameTalk takes at most "
                          f"{MAX_SECONDS:,} s ({MAX_SECONDS / 3600:g} h) of audio per file: {SPLIT_HINT}")


def _check_duration(n_frames: int, rate: float, what: str) -> None:
    """Refuse audio over MAX_SECONDS from its frame count, before anything is allocated."""
    if n_frames / rate > MAX_SECONDS:
        raise _too_long(what, n_frames / rate)


def _block_frames(channels: int) -> int:
    """Frames per decoded block: READ_BLOCK_FRAMES for mono and stereo, fewer for many channels."""
    return max(1024, min(READ_BLOCK_FRAMES, 2 * READ_BLOCK_FRAMES // max(1, channels)))


def _int_scale(dtype: np.dtype) -> tuple[float, float]:
    """(offset, scale) that map integer PCM of `dtype` to [-1, 1)."""
    info = np.iinfo(dtype)
    if info.min == 0:  # unsigned (8-bit WAV convention: silence at the midpoint)
        mid = (int(info.max) + 1) / 2.0
        return mid, 1.0 / mid
    return 0.0, 1.0 / (-float(info.min))


def _as_float_frames(samples: np.ndarray, channel_axis: int) -> np.ndarray:
    """(frames, channels) float32 from a 1-D or 2-D int/float array."""
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim == 2:
        if channel_axis in (0, -2):
            arr = arr.T
        elif channel_axis not in (1, -1):
            raise FlameTalkError(f"audio samples: channel_axis must be 0 or 1 (or -1), got {channel_axis}")
    else:
        raise FlameTalkError(
            f"audio samples must be 1-D (frames,) or 2-D (frames, channels), got shape {tuple(arr.shape)}"
        )
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise FlameTalkError(f"audio samples must be integer PCM or floating point, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        offset, scale = _int_scale(arr.dtype)
        return ((arr.astype(np.float64) - offset) * scale).astype(np.float32)
    return arr.astype(np.float32, copy=False)


def _mono(frames: np.ndarray) -> np.ndarray:
    """Mean over channels of a (frames, channels) block, float32."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    return frames.mean(axis=1, dtype=np.float32)


class _StreamResampler:
    """Feeds mono float32 blocks through soxr and writes the 16 kHz output into one preallocated buffer."""

    def __init__(self, rate: float, n_frames_hint: int, what: str = "audio"):
        import soxr

        self.rate = rate
        self.what = what
        self.max_samples = MAX_SECONDS * SAMPLE_RATE + SAMPLE_RATE  # the cap plus soxr's rounding and delay
        self._stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
            rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )
        self._out = np.empty(resampled_length(n_frames_hint, rate) + 16, dtype=np.float32)
        self._n = 0

    def _append(self, block: np.ndarray) -> None:
        need = self._n + block.shape[0]
        if need > self.max_samples:  # the header under-stated the length (MP3/OGG): stop at the same limit
            raise _too_long(self.what, need / SAMPLE_RATE)
        if need > self._out.shape[0]:  # the frame count in the header was low (happens with some MP3/OGG)
            grown = np.empty(min(self.max_samples, max(need, int(self._out.shape[0] * 1.25) + 16)), dtype=np.float32)
            grown[: self._n] = self._out[: self._n]
            self._out = grown
        self._out[self._n : need] = block
        self._n = need

    def feed(self, mono: np.ndarray, last: bool = False) -> None:
        if self._stream is None:
            self._append(mono)
        else:
            self._append(self._stream.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last))

    def result(self) -> np.ndarray:
        out = self._out[: self._n]
        # Trim the spare room without a second full-size copy when it is small (it always is, unless grown).
        return out if self._out.shape[0] - self._n <= 4096 else out.copy()


def _finish(audio: np.ndarray, what: str) -> np.ndarray:
    if audio.shape[0] == 0:
        raise FlameTalkError(f"{what}: the audio is shorter than one sample at 16 kHz; use a longer recording")
    if not np.isfinite(audio).all():
        raise FlameTalkError(f"{what}: the audio contains NaN or infinite samples; re-export it as 16-bit PCM WAV")
    return audio


def load_audio_array(samples: np.ndarray, rate: float, channel_axis: int = -1) -> np.ndarray:
    """Samples already in memory -> mono float32 16 kHz.

    `samples`: (frames,) or (frames, channels) (use `channel_axis=0` for (channels, frames)); float in [-1, 1] or
    integer PCM (int16/int32 scaled by their full range, uint8 centred at 128). `rate`: Hz, any positive value.
    """
    what = "audio samples"
    rate = _check_rate(rate, what)
    frames = _as_float_frames(samples, channel_axis)
    if frames.shape[0] == 0:
        raise FlameTalkError(f"{what}: no samples were given (zero-length audio); pass a non-empty recording")
    _check_duration(frames.shape[0], rate, what)
    resampler = _StreamResampler(rate, frames.shape[0], what)
    n = frames.shape[0]
    for start in range(0, n, READ_BLOCK_FRAMES):
        stop = min(n, start + READ_BLOCK_FRAMES)
        resampler.feed(_mono(frames[start:stop]), last=stop == n)
    return _finish(resampler.result(), what)


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an audio file and return mono float32 samples at 16 kHz (`constants.SAMPLE_RATE`).

    Raises FlameTalkError (one line: what is wrong, what to do) for missing, empty, unreadable or zero-length files.
    """
    import soundfile as sf

    p = Path(path)
    what = f"audio file '{p}'"
    if not p.exists():
        raise FlameTalkError(f"{what} does not exist; check the path")
    if p.is_dir():
        raise FlameTalkError(f"{what} is a folder, not an audio file; pass the path of a WAV/FLAC/OGG/MP3 file")
    try:
        size = p.stat().st_size
    except OSError as err:
        raise FlameTalkError(f"{what} cannot be accessed ({err.strerror}); check its permissions") from err
    if size == 0:
        raise FlameTalkError(f"{what} is empty (0 bytes); re-export or re-copy the recording")

    try:
        snd = sf.SoundFile(str(p))
    except PermissionError as err:
        raise FlameTalkError(f"{what} cannot be read (permission denied); check its permissions") from err
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
        reason = _short_reason(err)
        raise FlameTalkError(f"{what} is not a readable audio file ({reason}); {CONVERT_HINT}") from err

    with snd:
        rate = _check_rate(snd.samplerate, what)
        if snd.frames == 0:
            raise FlameTalkError(f"{what} contains no audio samples (zero length); use a recording with sound in it")
        _check_duration(int(snd.frames), rate, what)
        resampler = _StreamResampler(rate, max(int(snd.frames), 0), what)
        block_frames = _block_frames(int(snd.channels))
        try:
            pending: np.ndarray | None = None
            while True:
                block = snd.read(block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                # Keep one block back so the final one can be flagged `last` (flushes soxr's delay line).
                if pending is not None:
                    resampler.feed(pending)
                pending = _mono(block)
            if pending is None:
                raise FlameTalkError(f"{what} contains no audio samples (zero length); use a recording with sound")
            resampler.feed(pending, last=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise FlameTalkError(f"{what} could not be decoded ({_short_reason(err)}); {CONVERT_HINT}") from err
    return _finish(resampler.result(), what)


def _short_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    # libsndfile messages repeat the path ("Error opening '...': Format not recognised."); keep the reason.
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    return text.rstrip(".")[:200]
