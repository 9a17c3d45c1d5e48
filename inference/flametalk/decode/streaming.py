"""Streaming generation: motion while the audio is still arriving, the same bits as one-shot generation.

    streamer = Streamer(model, style="natural_0", rate=48000)   # postprocess=True: flametalk.generate's output
    for chunk in microphone_chunks():                            # any sizes: 10 ms ... minutes
        frames = streamer.feed(chunk)                            # (n, 106) float32, n >= 0
    frames = streamer.finish()                                   # the rest (last window zero-padded, cut)

Why it is exact: the model decodes fixed 4-s windows (100 frames, 64,000 samples at 16 kHz), and the only things
that cross a window boundary are the previous window's code bits and context tokens (autoregressive.WindowLoop,
the loop one-shot generation runs too). The audio encoder sees each window on its own. So a window can be decoded
as soon as its 64,000 samples are in, with the same numbers as in the one-shot run; the final partial window is
zero-padded at finish(), as one-shot pads it, and cut to frames_for_samples(samples) frames in all (the
release's ceil(samples / 16000 * 25) in float arithmetic: for some lengths one more than ceil(samples / 640), e.g.
71,680 samples -> 113 frames).

Latency floor: a window's frames exist only once its 4 s of audio are in and it is decoded; with
post-processing on, StreamingSmoother holds back the last SMOOTH_DELAY_FRAMES (4, 160 ms) frames of each window
until the next window (or finish) arrives, because the head-rotation filter (9 frames) needs 4 frames of future.

Exactness, by part:
  - 16 kHz input: bit for bit what `generate_motion` / `flametalk.generate` give for the same samples, in the
    model's mode (exact: the release's fp32 numbers; fast: the same int8/bf16 kernels one-shot fast runs), when the
    one-shot run encodes one window per audio-encoder call: the CPU default. On a GPU one-shot encodes 8 windows
    per call (autoregressive.GPU_AUDIO_BATCH) and the streamer one at a time; their encoder kernels may then round
    differently: compare with Generator(model, audio_batch=1) there.
  - other rates: the samples go through soxr's stream resampler (the HQ preset io/audio.py uses) chunk by chunk;
    its output does not depend on how the input is cut (tests/flametalk/decode/test_streaming.py checks it against
    io.audio.load_audio_array), so the motion equals one-shot generation on load_audio_array's output.
  - post-processing: StreamingSmoother equals decode/postprocess.py's postprocess_motion on the whole take.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import FlameTalkError
from ..flame.contract import MOTION_DIM, SAMPLE_RATE, STYLE_FRAMES
from ..model.artalk import ARTalkModel
from ..model.audio_encoder import encode_audio_windows
from .autoregressive import Generator, WindowLoop, frames_for_samples
from .postprocess import HEAD_WINDOW, SMOOTH_WINDOW, postprocess_motion

SMOOTH_DELAY_FRAMES = (max(HEAD_WINDOW, SMOOTH_WINDOW) - 1) // 2  # 4 frames (160 ms at 25 fps)
SMOOTH_MIN_FRAMES = max(HEAD_WINDOW, SMOOTH_WINDOW)  # below 9 frames in all, postprocess shrinks its windows

__all__ = ["SMOOTH_DELAY_FRAMES", "Streamer", "StreamingSmoother"]


def _empty() -> np.ndarray:
    return np.zeros((0, MOTION_DIM), dtype=np.float32)


class StreamingSmoother:
    """postprocess_motion (Savitzky-Golay 5/2 on all channels, 9/3 on the head rotation, jaw roll/yaw zeroed) one
    chunk of raw frames at a time, equal to it on the whole take, bit for bit.

    Frame i is emitted as soon as it is final: when frame i + SMOOTH_DELAY_FRAMES (4) has been fed and at least
    SMOOTH_MIN_FRAMES (9) frames have been fed in all (a shorter take is filtered with shorter windows, see
    postprocess.py, so before 9 frames nothing is final); finish() emits the rest (the last 4 frames use the
    filter's fit to the take's last 9 frames). Each feed filters only the new frames plus 8 frames of context:
    the filter is local (scipy's savgol_filter, mode 'interp': a fixed convolution inside, a polynomial fit to the
    first / last window at the edges), so the same frames give the same numbers. Memory: the last 9 frames.
    """

    delay_frames = SMOOTH_DELAY_FRAMES

    def __init__(self) -> None:
        self._tail = _empty()  # raw frames [_tail_start, seen)
        self._tail_start = 0
        self.seen = 0  # raw frames fed
        self.emitted = 0  # smoothed frames returned
        self.finished = False

    def _smoothed(self, start: int, stop: int, final: bool) -> np.ndarray:
        """Smoothed frames [start, stop) from a slice of the kept frames that holds all they depend on."""
        lo = max(0, start - SMOOTH_DELAY_FRAMES)
        if final:  # the right-edge frames fit a polynomial to the last 9 frames: the slice must hold them
            lo = max(0, min(lo, self.seen - SMOOTH_MIN_FRAMES))
        hi = self.seen if final else min(self.seen, stop + SMOOTH_DELAY_FRAMES)
        part = self._tail[lo - self._tail_start : hi - self._tail_start]
        return postprocess_motion(part)[start - lo : stop - lo]

    def feed(self, raw: np.ndarray) -> np.ndarray:
        """Raw frames (n, 106) -> the smoothed frames that became final, (m, 106) float32 (m may be 0)."""
        if self.finished:
            raise FlameTalkError("StreamingSmoother.feed after finish(); start a new smoother for a new take")
        raw = np.asarray(raw)
        if raw.ndim != 2 or raw.shape[1] != MOTION_DIM:
            raise ValueError(f"motion must have shape (n, {MOTION_DIM}), got {tuple(raw.shape)}")
        if raw.shape[0] == 0:
            return _empty()
        self._tail = np.concatenate([self._tail, raw.astype(np.float32, copy=False)])
        self.seen += raw.shape[0]
        stop = self.seen - SMOOTH_DELAY_FRAMES
        if self.seen < SMOOTH_MIN_FRAMES or stop <= self.emitted:
            return _empty()
        out = self._smoothed(self.emitted, stop, final=False)
        self.emitted = stop
        keep_from = max(self._tail_start, self.seen - SMOOTH_MIN_FRAMES)  # next feed needs from emitted - 4 on
        self._tail = self._tail[keep_from - self._tail_start :]
        self._tail_start = keep_from
        return out

    def finish(self) -> np.ndarray:
        """The frames still held back (the take's last ones), smoothed as the end of the whole take."""
        if self.finished:
            return _empty()
        self.finished = True
        if self.emitted >= self.seen:
            return _empty()
        out = self._smoothed(self.emitted, self.seen, final=True)
        self.emitted = self.seen
        self._tail = _empty()
        return out


class Streamer:
    """Audio in chunks -> motion frames as each 4-s window is decoded; see the module docstring.

    `style`: None, a release style name, a clip path or a (frames, 106) array (io/style.py's load_style, from
    `style_start`). `rate`: the sample rate of what feed() gets (soxr resamples to 16 kHz as it arrives).
    `postprocess`: True (default) returns flametalk.generate's smoothed motion, SMOOTH_DELAY_FRAMES late;
    False the raw model motion, as soon as its window is decoded. `recompute`: the release's decoding order
    (autoregressive.py), for checks.

    feed() takes float samples in [-1, 1] or integer PCM (int16 ...), mono (n,) or interleaved (n, channels) (the
    channels are averaged, as io/audio.py does). Not thread-safe: one thread feeds one streamer.
    """

    def __init__(self, model: ARTalkModel, style: str | os.PathLike[str] | np.ndarray | None = None,
                 style_start: int = 0, rate: float = SAMPLE_RATE, postprocess: bool = True, recompute: bool = False):
        from ..io.audio import RESAMPLE_QUALITY, _check_rate
        from ..io.style import load_style
        from .pipeline import model_device, prepare_for_inference

        self.rate = _check_rate(rate, "streamed audio")
        style_motion, self.style_name = load_style(style, style_start)
        self.model = prepare_for_inference(model)  # one-shot generation runs the prepared model: so does this
        self.device = model_device(model)
        self.gen = Generator(model, audio_batch=1)
        self.window_samples = self.gen.window_samples
        self.window_frames = self.gen.cfg.window_frames
        self.postprocess = postprocess
        self.smoother = StreamingSmoother() if postprocess else None
        self.delay_frames = SMOOTH_DELAY_FRAMES if postprocess else 0
        self._resampler: Any = None
        if self.rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32",
                                                  quality=RESAMPLE_QUALITY)
        style_t = None
        if style_motion is not None:
            if style_motion.shape != (STYLE_FRAMES, MOTION_DIM):
                raise FlameTalkError(f"style clip must be ({STYLE_FRAMES}, {MOTION_DIM}), got {style_motion.shape}")
            style_t = torch.from_numpy(np.ascontiguousarray(style_motion, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode():
            self.loop = WindowLoop(self.gen, model.style_condition(style_t, batch=1), recompute=recompute)
        self._window = np.zeros(self.window_samples, dtype=np.float32)  # 16 kHz samples of the window being filled
        self._fill = 0  # samples in _window
        self.samples_in = 0  # 16 kHz samples received so far
        self.frames_out = 0  # frames returned so far
        self.raw_frames = 0  # raw model frames decoded so far
        self.finished = False

    @property
    def windows(self) -> int:
        """Windows decoded so far."""
        return self.loop.windows

    def _to_16k(self, samples: np.ndarray, last: bool) -> np.ndarray:
        from ..io.audio import _as_float_frames, _mono

        arr = np.asarray(samples)
        empty = arr.size == 0 and arr.ndim <= 1
        mono = np.zeros(0, dtype=np.float32) if empty else _mono(_as_float_frames(arr, -1))
        if not np.isfinite(mono).all():
            raise FlameTalkError("streamed audio holds NaN or infinite samples")
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last)

    def _decode(self, windows_16k: list[np.ndarray]) -> np.ndarray:
        """Whole windows of 16 kHz samples (window_samples,) each -> raw motion (k * 100, 106)."""
        out = []
        with torch.inference_mode():
            for w in windows_16k:
                audio_1N = torch.from_numpy(np.ascontiguousarray(w))[None].to(self.device)
                cond = self.model.audio_condition(encode_audio_windows(self.model.audio_encoder, audio_1N))
                out.append(self.loop.step(cond)[0].float().cpu().numpy())
        return np.concatenate(out) if out else _empty()

    def _emit(self, raw: np.ndarray) -> np.ndarray:
        self.raw_frames += raw.shape[0]
        out = self.smoother.feed(raw) if self.smoother is not None else raw
        self.frames_out += out.shape[0]
        return out

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Samples at `rate` -> the motion frames that became final, (n, 106) float32 (n is often 0)."""
        if self.finished:
            raise FlameTalkError("Streamer.feed after finish(); start a new Streamer for a new take")
        audio = self._to_16k(samples, last=False)
        if audio.size == 0:
            return _empty()
        self.samples_in += audio.size
        full = self._collect(audio)
        return self._emit(self._decode(full)) if full else _empty()

    def _collect(self, audio: np.ndarray) -> list[np.ndarray]:
        """Append 16 kHz samples to the window being filled; return the windows that filled up."""
        full, pos, n = [], 0, self.window_samples
        while pos < audio.size:
            take = min(n - self._fill, audio.size - pos)
            self._window[self._fill : self._fill + take] = audio[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == n:
                full.append(self._window.copy())
                self._fill = 0
        return full

    def finish(self) -> np.ndarray:
        """The end of the take: flushes the resampler, decodes the zero-padded last window, cut to
        frames_for_samples(samples) frames in all, and the smoother's held-back frames."""
        if self.finished:
            return _empty()
        tail = self._to_16k(np.zeros(0, dtype=np.float32), last=True)
        self.finished = True
        self.samples_in += tail.size
        windows = self._collect(tail)
        if self._fill:  # the last, partial window: zero-padded as one-shot pads it
            self._window[self._fill :] = 0.0
            windows.append(self._window.copy())
            self._fill = 0
        raw = self._decode(windows)[: max(0, frames_for_samples(self.samples_in) - self.raw_frames)]
        out = self._emit(raw) if raw.shape[0] else _empty()
        if self.smoother is not None:
            rest_out = self.smoother.finish()
            self.frames_out += rest_out.shape[0]
            out = np.concatenate([out, rest_out])
        return out
