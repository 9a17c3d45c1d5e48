"""`python -m flametalk.commands.worker`: the warm inference process the Blender add-on talks to.

It reads one JSON request per line on stdin and answers with JSON event lines on stdout; the requests, events
and limits are commands/protocol.py's (its docstring is the protocol's reference). The model stays loaded
between requests; jobs run one at a time on the main thread while another thread reads requests, so a cancel
or stop arrives while a job runs.

When its stdin closes (the add-on went away) the worker cancels the job in progress at its next window, drops the
queued ones and exits; if the job has not stopped within EXIT_GRACE_S (5 s) the process exits anyway.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .._version import __version__
from ..errors import FlameTalkError
from ..flame.contract import PROTOCOL_VERSION
from .protocol import MAX_LINE_BYTES, BadRequest, parse_request

EXIT_GRACE_S = 5.0  # after stdin closes: time a running job gets to notice the cancel before the process exits


class Cancelled(Exception):
    def __init__(self, kept: int | None = None):
        super().__init__("cancelled")
        self.kept = kept  # frames a progressive job saved as a shorter take (keep_partial)


class Worker:
    def __init__(self, out: TextIO):
        self.out = out
        self.lock = threading.Lock()
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[Any] = set()
        self.model = None
        self.model_key: tuple | None = None
        self.checkpoint_info: dict[str, str] | None = None  # provenance of the loaded weights
        self.condition_cache = None  # audio conditions of recent clips, for the loaded model only
        self.default_threads = 1  # torch's CPU threads at start-up (physical cores, or OMP_NUM_THREADS)
        self.spare_cores = 0  # threads left to the client (set by its spare_cores command)
        self.shutting_down = False  # a shutdown request was read: later jobs are refused
        self.stdin_closed = threading.Event()
        self.live_stops: dict[Any, threading.Event] = {}  # live job id -> its stop flag (stop, cancel, stdin closed)

    def send(self, **event: Any) -> None:
        with self.lock:
            try:
                self.out.write(json.dumps(event) + "\n")
                self.out.flush()
            except (OSError, ValueError):  # the client closed our stdout: it is gone, stdin closes next
                pass

    # ---- reader thread: requests in, cancels applied at once ----
    def read_requests(self, inp: BinaryIO | TextIO) -> None:
        """Read request lines until `inp` closes (binary: the worker's stdin; text streams work too). No line,
        however malformed, stops this loop; at the end the job loop is told to stop."""
        try:
            while True:
                raw = inp.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                newline = b"\n" if isinstance(raw, bytes) else "\n"
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(newline):
                    while raw and not raw.endswith(newline):  # skip the rest of the line, a bounded block at a time
                        raw = inp.readline(MAX_LINE_BYTES)
                    self.send(event="error", id=None, kind="input",
                              message=f"bad request line (longer than {MAX_LINE_BYTES} bytes)")
                    continue
                if not raw.strip():
                    continue
                try:
                    self.handle_line(raw)
                except BadRequest as err:
                    self.send(event="error", id=err.rid, kind="input", message=str(err))
                except Exception as err:  # a bug: say what, keep reading
                    traceback.print_exc(file=sys.stderr)
                    self.send(event="error", id=None, kind="internal", message=f"{type(err).__name__}: {err}")
        except Exception:  # reading itself failed (a broken pipe): the same as a closed stdin
            traceback.print_exc(file=sys.stderr)
        finally:
            self.close_input()

    def handle_line(self, raw: bytes | str) -> None:
        req = parse_request(raw)
        cmd, rid = req["cmd"], req["id"]
        if cmd == "cancel":
            self.cancelled.add(req["target"])
            self._stop_live(req["target"])
        elif cmd == "stop":
            self._stop_live(req["target"])
        elif cmd == "spare_cores":
            self.spare_cores = req["cores"]
        elif cmd == "ping":
            self.send(event="pong", id=rid, loaded=self.model_key[0] if self.model_key else None)
        elif self.shutting_down:
            self.send(event="error", id=rid, kind="input", message="the worker is shutting down")
        else:
            self.jobs.put(req)
            if cmd == "shutdown":
                self.shutting_down = True

    def _stop_live(self, target: Any) -> None:
        """A stop (or cancel) for a live job, running or still queued: its capture ends at the next block."""
        with self.lock:
            flag = self.live_stops.setdefault(target, threading.Event())
        flag.set()

    def close_input(self) -> None:
        """stdin closed (the add-on went away): cancel the running job, drop the queued ones, stop the job loop."""
        self.stdin_closed.set()
        with self.lock:
            flags = list(self.live_stops.values())
        for flag in flags:
            flag.set()
        self.jobs.put(None)

    # ---- job loop (main thread) ----
    def serve(self) -> None:
        while True:
            req = self.jobs.get()
            if req is None or self.stdin_closed.is_set():
                return
            rid, cmd = req.get("id"), req.get("cmd")
            if cmd == "shutdown":
                self.send(event="bye", id=rid)
                return
            try:
                if cmd == "generate":
                    self.generate(req)
                elif cmd in ("retarget", "fit"):
                    self.retarget(req)
                elif cmd == "live":
                    self.live(req)
                elif cmd == "load":
                    self.ensure_model(req)
                    self.send(event="loaded", id=rid)
                else:
                    raise FlameTalkError(f"unknown command {cmd!r}")
            except Cancelled as err:
                extra = {} if err.kept is None else {"kept": err.kept}
                self.send(event="error", id=rid, kind="cancelled", message="cancelled", **extra)
            except FlameTalkError as err:
                self.send(event="error", id=rid, kind="input", message=str(err))
            except Exception as err:  # a bug or an environment problem: say what, keep serving
                traceback.print_exc(file=sys.stderr)
                self.send(event="error", id=rid, kind="internal", message=f"{type(err).__name__}: {err}")
            finally:
                self.cancelled.discard(rid)
                with self.lock:
                    self.live_stops.pop(rid, None)

    def ensure_model(self, req: dict[str, Any]):
        from ..assets.store import default_checkpoint_dir
        from ..decode.condcache import ConditionCache
        from ..fast.devices import configure_torch_for_parity, resolve_device
        from ..fast.precision import apply_mode
        from ..io.checkpoint import checkpoint_provenance, load_checkpoint

        checkpoint = req.get("checkpoint") or str(default_checkpoint_dir())
        device = resolve_device(req.get("device", "auto"))
        mode = req.get("mode", "exact")
        key = (str(Path(checkpoint).expanduser().resolve()), str(device), mode)
        if self.model is None or self.model_key != key:
            self.model = None  # free the old model before loading a new one
            self.condition_cache = None
            configure_torch_for_parity()
            self.send(event="progress", id=req.get("id"), done=0, total=0, stage="loading model")
            self.model = apply_mode(load_checkpoint(checkpoint, device=device), mode)
            self.model_key = key
            self.checkpoint_info = checkpoint_provenance(checkpoint)
            self.condition_cache = ConditionCache()
        return self.model

    def generate(self, req: dict[str, Any]) -> None:
        from ..decode.pipeline import generate_motion
        from ..decode.postprocess import postprocess_motion
        from ..io.audio import load_audio
        from ..io.motion import save_motion
        from ..io.style import load_style

        rid = req.get("id")
        t0 = time.perf_counter()
        out = req.get("out")
        if not out:
            raise FlameTalkError("generate needs an 'out' path for the motion file")
        audio = load_audio(req["audio"]) if req.get("audio") else None
        if audio is None:
            raise FlameTalkError("generate needs an 'audio' file")
        style, style_name = load_style(req.get("style"), start_frame=int(req.get("style_start", 0)))
        model = self.ensure_model(req)

        def progress(done: int, total: int) -> None:  # before the first window and after each one
            if rid in self.cancelled or self.stdin_closed.is_set():
                raise Cancelled()
            # the client's spare_cores command may have changed since the last window
            self.send(event="progress", id=rid, done=done, total=total, stage="generate", threads=self.use_threads())

        live = _Progressive(self, req, t0, audio.shape[0]) if req.get("progressive") else None
        try:
            motion = generate_motion(model, audio, style, progress=progress, cache=self.condition_cache,
                                     on_window=live.window if live else None)
        except Cancelled:
            raise Cancelled(live.keep(save_motion, style_name) if live else None) from None
        if req.get("postprocess", True):
            motion = postprocess_motion(motion)
        if live:
            live.finish()
        if rid in self.cancelled or self.stdin_closed.is_set():
            raise Cancelled()
        provenance = {
            "checkpoint": self.checkpoint_info,
            "style": style_name,
            "device": self.model_key[1] if self.model_key else None,
            "mode": req.get("mode", "exact"),
            "postprocess": bool(req.get("postprocess", True)),
            "audio": str(req["audio"]),
        }
        save_motion(out, motion, provenance=provenance)
        self.send(event="result", id=rid, out=str(out), frames=int(motion.shape[0]),
                  seconds=round(time.perf_counter() - t0, 3), audio_cached=self.condition_cache.last_hit,
                  plan=model._plan.as_dict())

    def live(self, req: dict[str, Any]) -> None:
        """The `live` command: commands/live.py's capture + Streamer, each batch of final frames sent at once."""
        import base64

        import numpy as np

        from ..io.style import load_style
        from . import live as live_cmd

        rid = req.get("id")
        t0 = time.perf_counter()
        with self.lock:
            stop = self.live_stops.setdefault(rid, threading.Event())
        if rid in self.cancelled or self.stdin_closed.is_set():
            raise Cancelled()
        source: Any = (live_cmd.WavSource(req["wav"], req.get("speed", 1.0)) if req.get("wav")
                       else live_cmd.device_source(req.get("input"), req.get("rate")))
        style, style_name = load_style(req.get("style"), start_frame=int(req.get("style_start", 0)))
        model = self.ensure_model(req)
        self.use_threads()

        def started() -> None:
            self.send(event="live", id=rid, rate=float(source.rate), warmup_s=round(time.perf_counter() - t0, 3))

        def frames(start: int, new: Any, latency: Any, final: bool) -> None:
            data = base64.b64encode(np.ascontiguousarray(new, dtype="<f4").tobytes()).decode("ascii")
            self.send(event="frames", id=rid, start=int(start), stop=int(start + new.shape[0]), final=final,
                      t=round(time.perf_counter() - t0, 3),
                      latency=[round(float(latency[0]), 3), round(float(latency[-1]), 3)], motion=data)

        motion, audio, log = live_cmd.run_live(model, source, style=style, postprocess=req.get("postprocess", True),
                                               seconds=req.get("seconds"), out=None, stop=stop, on_frames=frames,
                                               on_start=started)
        if rid in self.cancelled or self.stdin_closed.is_set():
            raise Cancelled()
        if req.get("audio_out"):
            import soundfile as sf

            sf.write(req["audio_out"], audio, 16_000, subtype="PCM_16")
        if req.get("out"):
            from ..io.motion import save_motion

            save_motion(req["out"], motion, provenance={
                "live": True, "style": style_name, "mode": req.get("mode", "exact"),
                "postprocess": bool(req.get("postprocess", True)), "audio": req.get("audio_out") or req.get("wav")})
        lat = np.asarray(log.frame_latency, dtype=np.float64)
        summary = ({"min": round(float(lat.min()), 3), "median": round(float(np.median(lat)), 3),
                    "max": round(float(lat.max()), 3)} if lat.size else None)
        self.send(event="result", id=rid, frames=int(motion.shape[0]), samples=int(audio.shape[0]),
                  audio_out=req.get("audio_out"), out=req.get("out"), latency=summary,
                  seconds=round(time.perf_counter() - t0, 3))

    def retarget(self, req: dict[str, Any]) -> None:
        """The `retarget` and `fit` commands: flametalk.retarget on files (numpy + scipy; no torch, no model)."""
        import numpy as np

        from ..flame import characterfile
        from ..flame.motionfile import read_motion
        from ..flame.reader import load_flame
        from ..retarget import Character, Fit, SolveOptions, fit, retarget

        rid, cmd = req.get("id"), req["cmd"]
        total = 2 if cmd == "fit" else 4
        t0 = clock = time.perf_counter()
        seconds: dict[str, float] = {}

        def stage(done: int, name: str) -> None:
            nonlocal clock
            if rid in self.cancelled or self.stdin_closed.is_set():
                raise Cancelled()
            now = time.perf_counter()
            if done:
                seconds[name] = round(now - clock, 3)
            clock = now
            self.send(event="progress", id=rid, done=done, total=total, stage=name)

        stage(0, "load")
        try:  # every reader's own error is one line about the user's file
            flame = load_flame(req["flame"], version=req.get("flame_version"), use_torch=False)
            character = Character.load(req["character"])
            motion = None if cmd == "fit" else read_motion(req["motion"]).motion
            fitted = Fit.load(req["fit"]) if req.get("fit") else None
        except (ValueError, OSError) as err:  # FlameFileError, MotionFileError, CharacterFileError
            raise FlameTalkError(" ".join(str(err).split())) from None
        init = np.asarray(req["init"], dtype=np.float64) if req.get("init") is not None else None
        stage(1, "load")
        if fitted is None:
            fitted = fit(flame, character, init=init)
            if req.get("fit_out"):
                fitted.save(req["fit_out"])
        stage(2, "fit")
        if req.get("fit"):
            seconds["fit"] = 0.0  # a stored fit: no fitting
        fit_info = {"rms_mm": round(fitted.rms_mm, 4), "max_mm": round(fitted.max_mm, 4),
                    "vertices_used": int(fitted.n_used), "scale": fitted.scale, "mm_per_unit": fitted.mm_per_unit}
        if cmd == "fit":
            seconds["total"] = round(time.perf_counter() - t0, 3)
            self.send(event="result", id=rid, fit_out=req["fit_out"], fit=fit_info, seconds=seconds)
            return
        options = SolveOptions(**req.get("options", {}))
        with _one_blas_thread():
            result = retarget(flame, character, motion, keys=req.get("keys", "all"), jaw_bone=req["jaw_bone"],
                              fitted=fitted, options=options, jaw_intensity=req.get("jaw_intensity", 1.0))
        stage(3, "solve")
        seconds["transfer"] = round(result.seconds["transfer"], 3)
        seconds["solve"] = round(result.seconds["solve"], 3)
        residual = float(np.sqrt(np.mean(np.square(result.residual_mm, dtype=np.float64))))
        report = {"fit": {k: fit_info[k] for k in ("rms_mm", "max_mm", "vertices_used")},
                  "frames": len(motion), "shape_keys": result.names, "residual_rms_mm": round(residual, 4),
                  "jaw_bone": bool(req["jaw_bone"]), "mm_per_unit": fitted.mm_per_unit}
        write_clock = time.perf_counter()
        characterfile.write_result(req["out"], result.weights, result.names, result.head_rotation,
                                   result.jaw_rotation, result.residual_mm, {**report, "seconds": seconds})
        seconds["write"] = round(time.perf_counter() - write_clock, 3)
        seconds["total"] = round(time.perf_counter() - t0, 3)
        self.send(event="result", id=rid, out=str(req["out"]), frames=len(motion),
                  shape_keys=len(result.names), fit=fit_info, fit_out=req.get("fit_out") if req.get("fit") is None
                  else None, residual_rms_mm=round(residual, 4), seconds=seconds)

    def use_threads(self) -> int:
        """Job loop: run on the start-up threads minus the client's spare cores (torch changes only if needed)."""
        import torch

        threads = max(1, self.default_threads - self.spare_cores)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads


class _Progressive:
    """A progressive generate job: each window's final frames go out in a "frames" event at once."""

    def __init__(self, worker: Worker, req: dict[str, Any], t0: float, samples: int):
        from ..decode.autoregressive import frames_for_samples
        from ..decode.streaming import StreamingSmoother

        self.worker, self.req, self.t0 = worker, req, t0
        self.rid = req.get("id")
        self.smoother = StreamingSmoother() if req.get("postprocess", True) else None
        self.parts: list[Any] = []
        self.frames = 0
        self.windows = -(-frames_for_samples(samples) // 100)  # the take's 4-s windows

    def _emit(self, new: Any, window: int, final: bool) -> None:
        import base64

        import numpy as np

        start = self.frames
        if new.shape[0] or final:
            self.parts.append(new)
            self.frames += new.shape[0]
            data = base64.b64encode(np.ascontiguousarray(new, dtype="<f4").tobytes()).decode("ascii")
            self.worker.send(event="frames", id=self.rid, window=window, windows=self.windows, start=start,
                             stop=self.frames, final=final, t=round(time.perf_counter() - self.t0, 3), motion=data)

    def window(self, w: int, raw: Any) -> None:
        self._emit(self.smoother.feed(raw) if self.smoother else raw, w, final=False)

    def finish(self) -> None:
        import numpy as np

        rest = self.smoother.finish() if self.smoother else np.zeros((0, 106), np.float32)
        self._emit(rest, self.windows - 1, final=True)

    def keep(self, save_motion: Any, style_name: str) -> int | None:
        """Cancelled: with keep_partial, the frames sent so far become a shorter take at "out"."""
        import numpy as np

        kept = None
        if self.req.get("keep_partial") and self.frames:
            motion = np.concatenate(self.parts)
            save_motion(self.req["out"], motion, provenance={
                "checkpoint": self.worker.checkpoint_info, "style": style_name, "mode": self.req.get("mode", "exact"),
                "postprocess": bool(self.req.get("postprocess", True)), "audio": str(self.req["audio"]),
                "partial": True})
            kept = int(motion.shape[0])
        return kept
class _one_blas_thread:
    """BLAS (and torch's intra-op pool) on one thread while the solve runs: its work is many small systems, where
    threads cost more than they give. threadpoolctl when it is installed; otherwise nothing changes."""

    def __enter__(self) -> None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            self.limits = None
            return
        self.limits = threadpool_limits(limits=1, user_api="blas")

    def __exit__(self, *exc: object) -> None:
        if self.limits is not None:
            self.limits.restore_original_limits()


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.insert(0, "mps")
    return devices


def main() -> int:
    # Keep the protocol channel clean: from here on, fd 1 (print, C libraries) goes to stderr.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(proto)
    try:
        import torch
    except ImportError as err:
        worker.send(event="fatal", message=f"torch is not installed in {sys.executable} ({err}); "
                                           "set up the runtime in the add-on preferences or pick a Python with torch")
        return 3
    worker.default_threads = torch.get_num_threads()
    worker.send(event="hello", protocol=PROTOCOL_VERSION, flametalk=__version__, torch=torch.__version__,
                python=sys.executable, devices=available_devices(), pid=os.getpid(), threads=worker.default_threads,
                features=["progressive", "live"])

    def read_then_exit() -> None:
        worker.read_requests(getattr(sys.stdin, "buffer", sys.stdin))  # None (no stdin) reads as closed
        # stdin closed: the job loop stops at the running job's next window; if it is stuck, exit anyway
        time.sleep(EXIT_GRACE_S)
        os._exit(0)

    reader = threading.Thread(target=read_then_exit, daemon=True)
    reader.start()
    worker.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
