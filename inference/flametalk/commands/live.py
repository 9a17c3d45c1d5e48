"""`python -m flametalk live [--device N] [--wav FILE] [--out take.npz]`: motion from a microphone as you speak.

Audio comes from an input device through sounddevice (PortAudio; `pip install 'flametalk[stream]'`), or from a
WAV file played in real time (`--wav`: the same path after the capture, for tests and for machines without audio
hardware). It goes through decode/streaming.py's Streamer (the same motion as `generate` on the recording), and
each batch of final frames is printed with its latency: for frame i (i / 25 s into the take), the time from
when that moment's audio was captured to when the frame was out. The floor is one 4-s window (a window is decoded
once its audio is complete) + the window's compute + the smoother's 4 frames; the first frame of a window waits
the whole window, its last frames least. Ctrl+C (or the end of --wav / --seconds) finishes the take; --out saves it
(with --save-audio, the captured 16-kHz audio beside it, for a sound strip in sync).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import FlameTalkError
from ..flame.contract import MOTION_FPS

BLOCK_S = 0.02  # seconds of audio per captured block

__all__ = ["LatencyLog", "WavSource", "add_arguments", "command", "device_source", "run_live", "warm_up"]


class WavSource:
    """A WAV file standing in for a microphone: blocks of BLOCK_S at the file's rate, each released when a live
    input would have captured it (`speed` x real time; 0: as fast as they are read)."""

    def __init__(self, path: str, speed: float = 1.0):
        import soundfile as sf

        try:
            self.data, self.rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise FlameTalkError(f"--wav '{path}' is not a readable audio file ({err})") from err
        self.speed = speed

    def blocks(self, stop: threading.Event) -> Iterator[tuple[np.ndarray, float]]:
        step = max(1, int(self.rate * BLOCK_S))
        t0 = time.perf_counter()
        for i in range(0, self.data.shape[0], step):
            if stop.is_set():
                return
            block = self.data[i : i + step]
            if self.speed > 0:  # a live input delivers a block when its last sample has been captured
                due = t0 + (i + block.shape[0]) / self.rate / self.speed
                time.sleep(max(0.0, due - time.perf_counter()))
                # its capture time is when it was due, even if the consumer was busy decoding then (a microphone
                # keeps recording meanwhile; PortAudio's callback stamps its blocks likewise)
                yield block, due
            else:
                yield block, time.perf_counter()


class DeviceSource:
    """An audio input device through sounddevice: blocks of BLOCK_S from PortAudio's callback thread."""

    def __init__(self, device: str | int | None, rate: float | None):
        self.sd = import_sounddevice()
        dev: Any = device
        if isinstance(device, str) and device.isdigit():
            dev = int(device)
        try:
            info = self.sd.query_devices(dev, "input")
        except (ValueError, self.sd.PortAudioError) as err:
            raise FlameTalkError(f"no audio input device {device!r} ({err}); list them with "
                                 "`python -m sounddevice`") from err
        self.device = dev
        self.rate = float(rate or info["default_samplerate"])

    def blocks(self, stop: threading.Event) -> Iterator[tuple[np.ndarray, float]]:
        q: queue.Queue[tuple[np.ndarray, float]] = queue.Queue()

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            q.put((indata.copy(), time.perf_counter()))

        with self.sd.InputStream(device=self.device, channels=1, samplerate=self.rate, dtype="float32",
                                 blocksize=int(self.rate * BLOCK_S), callback=callback):
            while not stop.is_set():
                try:
                    yield q.get(timeout=0.1)
                except queue.Empty:
                    continue


def import_sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as err:  # OSError: the package is there but the PortAudio library is not
        raise FlameTalkError(f"live audio input needs sounddevice and PortAudio ({err}): "
                             "`pip install 'flametalk[stream]'` (on Linux also `apt install libportaudio2`); "
                             "or play a file instead (--wav; in Blender: Live Input > File)") from err
    return sounddevice


def device_source(device: str | None, rate: float | None) -> DeviceSource:
    return DeviceSource(device, rate)


class LatencyLog:
    """When each moment of the take was captured, and how late each frame came out."""

    def __init__(self, rate: float):
        self.rate = rate
        self.ends: list[int] = []  # cumulative samples at the end of each block
        self.times: list[float] = []  # when each block was captured
        self.frame_latency: list[float] = []

    def captured(self, samples: int, when: float) -> None:
        self.ends.append((self.ends[-1] if self.ends else 0) + samples)
        self.times.append(when)

    def emitted(self, start: int, stop: int, when: float) -> np.ndarray:
        """Latency of frames [start, stop) out at `when`: `when` - capture time of the block holding frame i's
        moment (i / 25 s)."""
        pos = np.minimum(np.arange(start, stop) / MOTION_FPS * self.rate, max(0, self.ends[-1] - 1) if self.ends
                         else 0)
        idx = np.searchsorted(np.asarray(self.ends), pos, side="right")
        idx = np.minimum(idx, len(self.times) - 1)
        lat = when - np.asarray(self.times)[idx]
        self.frame_latency.extend(lat.tolist())
        return lat


def warm_up(model: Any) -> float:
    """Decode one silent window before capture starts: the first run of a model pays one-time set-up (kernel
    selection, weight packing) that would otherwise land on the first window's latency. Returns its seconds."""
    from ..decode.streaming import Streamer

    t0 = time.perf_counter()
    probe = Streamer(model, postprocess=False)
    probe.feed(np.zeros(probe.window_samples, np.float32))
    return time.perf_counter() - t0


def run_live(model: Any, source: Any, style: Any = None, postprocess: bool = True, seconds: float | None = None,
             as_json: bool = False, out: Any = sys.stdout, stop: threading.Event | None = None,
             on_frames: Callable[[int, np.ndarray, np.ndarray, bool], Any] | None = None,
             on_start: Callable[[], Any] | None = None) -> tuple[np.ndarray, np.ndarray, LatencyLog]:
    """Capture -> Streamer -> a line per batch of frames (`out`; None: no lines). Returns (motion, captured 16-kHz
    audio, latency log). `stop` (set from another thread) ends the capture like Ctrl+C; `on_frames(start, frames,
    latency per frame, final)` gets every non-empty batch (the worker's `live` command sends them to the add-on);
    `on_start()` runs once the model is warm, just before capture starts."""
    from ..decode.streaming import Streamer
    from ..io.audio import load_audio_array

    warm_up(model)
    streamer = Streamer(model, style=style, rate=source.rate, postprocess=postprocess)
    log = LatencyLog(source.rate)
    stop = stop if stop is not None else threading.Event()
    if on_start is not None:
        on_start()
    captured: list[np.ndarray] = []
    motion: list[np.ndarray] = []
    t_start = time.perf_counter()

    def show(frames: np.ndarray, final: bool) -> None:
        start = sum(m.shape[0] for m in motion)
        motion.append(frames)
        if not frames.shape[0]:
            return
        lat = log.emitted(start, start + frames.shape[0], time.perf_counter())
        if on_frames is not None:
            on_frames(start, frames, lat, final)
        if out is None:
            return
        if as_json:
            print(json.dumps({"start": start, "stop": start + frames.shape[0], "latency_first_s": round(lat[0], 3),
                              "latency_last_s": round(lat[-1], 3), "final": final,
                              "jaw_open": round(float(frames[:, 103].mean()), 4)}), file=out, flush=True)
        else:
            print(f"frames {start:6d}-{start + frames.shape[0] - 1:6d}  latency {lat[0]:5.2f} s (first) .. "
                  f"{lat[-1]:5.2f} s (last)  jaw {float(frames[:, 103].mean()):+.3f}", file=out, flush=True)

    try:
        for block, when in source.blocks(stop):
            captured.append(block)
            log.captured(block.shape[0], when)
            show(streamer.feed(block), final=False)
            if seconds is not None and time.perf_counter() - t_start >= seconds:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
    show(streamer.finish(), final=True)
    audio = np.concatenate(captured) if captured else np.zeros((0, 1), np.float32)
    audio_16k = load_audio_array(audio, source.rate) if audio.shape[0] else np.zeros(0, np.float32)
    return (np.concatenate(motion) if motion else np.zeros((0, 106), np.float32)), audio_16k, log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="N", help="audio input device (index or name; default: the system's input)")
    p.add_argument("--wav", metavar="FILE", help="play this file in real time instead of a microphone")
    p.add_argument("--speed", type=float, default=1.0, help="--wav playback speed (default 1: real time; 0: no wait)")
    p.add_argument("--rate", type=float, help="capture rate in Hz (default: the device's)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl+C or the end of --wav)")
    p.add_argument("--style", default=None, help="style: a release name like natural_0, a clip, or none")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="raw model frames (no smoothing: 4 frames less delay)")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the asset cache)")
    p.add_argument("--compute-device", default="auto", help="torch device: auto (default), cuda, mps, cpu")
    p.add_argument("--mode", choices=("exact", "fast"), default="exact", help="numeric mode (default exact)")
    p.add_argument("--out", metavar="FILE", help="save the take (.npz, as generate writes)")
    p.add_argument("--save-audio", metavar="WAV", help="save the captured audio (16 kHz) for the take's sound")
    p.add_argument("--json", action="store_true", help="one JSON line per batch of frames")


def command(args: argparse.Namespace) -> int:
    from ..decode.pipeline import load_model, prepare_for_inference
    from ..io.style import load_style

    source: Any = WavSource(args.wav, args.speed) if args.wav else device_source(args.device, args.rate)
    style, style_name = load_style(args.style)
    model = prepare_for_inference(load_model(args.checkpoint, device=args.compute_device, mode=args.mode))
    print(f"flametalk live: {args.mode} mode, {model._plan.summary()}; "
          f"{'playing ' + args.wav if args.wav else 'listening'} at {source.rate:g} Hz; Ctrl+C stops",
          file=sys.stderr, flush=True)
    motion, audio, log = run_live(model, source, style=style, postprocess=args.postprocess, seconds=args.seconds,
                                  as_json=args.json)
    lat = np.asarray(log.frame_latency)
    if lat.size:
        print(f"{motion.shape[0]} frames; latency per frame: min {lat.min():.2f} s, median {np.median(lat):.2f} s, "
              f"max {lat.max():.2f} s", file=sys.stderr, flush=True)
    if args.out:
        from ..io.motion import save_motion

        save_motion(args.out, motion, provenance={"live": True, "style": style_name, "mode": args.mode,
                                                  "postprocess": bool(args.postprocess), "audio": args.wav})
    if args.save_audio:
        import soundfile as sf

        sf.write(args.save_audio, audio, 16_000, subtype="FLOAT")
    return 0
