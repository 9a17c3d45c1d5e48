"""`python -m flametalk.worker`: the warm inference process the Blender add-on talks to.

Protocol (version PROTOCOL_VERSION): one JSON object per line. The worker's stdout carries only protocol lines
(anything else a library prints goes to stderr). The worker speaks first:

  <- {"event": "hello", "protocol": 1, "flametalk": "0.1.0", "torch": "...", "devices": ["cpu", ...], "threads": 2}

Requests (each has an "id" the answers repeat):
  -> {"id": 1, "cmd": "generate", "audio": "speech.wav", "out": "take.npz", "checkpoint": "DIR",
      "device": "auto", "mode": "exact", "style": null | "natural_0" | "clip.npy" | {"motion_npy": path},
      "style_start": 0, "postprocess": true}
  <- {"event": "progress", "id": 1, "done": 1, "total": 3, "stage": "generate", "threads": 2}
  <- {"event": "result", "id": 1, "out": "take.npz", "frames": 230, "seconds": 1.8, "audio_cached": false,
      "plan": {"name": "avx2", "device": "cpu", "mode": "exact", "pack": true, "int8": null, ...}}
     ("audio_cached": the clip's audio conditions were kept from an earlier take on this model, so the audio
     encoder did not run: another style for the same line costs only the decoding; "plan": the kernels the model
     runs, flametalk/plan.py)
  -> {"id": 5, "cmd": "spare_cores", "cores": 1}  CPU threads the model leaves to the caller from now on (the
     batch CLI: one while Blender writes a line, none while it waits); applied at once, from the next 4-s window of
     a running job; jobs run on max(1, threads of "hello" - cores). No answer unless it is bad (an error event).
  <- {"event": "error", "id": 1, "message": "one readable line", "kind": "input" | "internal" | "cancelled"}
  -> {"id": 2, "cmd": "cancel", "target": 1}    (answered by the cancelled job's error event)
  -> {"id": 3, "cmd": "ping"}                   <- {"event": "pong", "id": 3, "loaded": "DIR|null"}
  -> {"id": 4, "cmd": "shutdown"}               <- {"event": "bye", "id": 4}

The model stays loaded between requests (same checkpoint, device and mode); a request for another one reloads.
Requests are read on a separate thread so a cancel arrives while a job runs; jobs run one at a time, in the order
they came (a client may queue the next job while one runs).
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
from typing import Any, TextIO

from . import __version__
from .errors import FlameTalkError

PROTOCOL_VERSION = 1


class Cancelled(Exception):
    pass


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

    def send(self, **event: Any) -> None:
        with self.lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()

    # ---- reader thread: requests in, cancels applied at once ----
    def read_requests(self, inp: TextIO) -> None:
        for line in inp:
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as err:
                self.send(event="error", id=None, kind="input", message=f"bad request line ({err})")
                continue
            cmd = req.get("cmd")
            if cmd == "cancel":
                self.cancelled.add(req.get("target"))
            elif cmd == "spare_cores":
                self.set_spare_cores(req)
            elif cmd == "ping":
                self.send(event="pong", id=req.get("id"), loaded=self.model_key[0] if self.model_key else None)
            else:
                self.jobs.put(req)
                if cmd == "shutdown":
                    return
        self.jobs.put(None)  # stdin closed: the add-on went away

    # ---- job loop (main thread) ----
    def serve(self) -> None:
        while True:
            req = self.jobs.get()
            if req is None:
                return
            rid, cmd = req.get("id"), req.get("cmd")
            if cmd == "shutdown":
                self.send(event="bye", id=rid)
                return
            try:
                if cmd == "generate":
                    self.generate(req)
                elif cmd == "load":
                    self.ensure_model(req)
                    self.send(event="loaded", id=rid)
                else:
                    raise FlameTalkError(f"unknown command {cmd!r}")
            except Cancelled:
                self.send(event="error", id=rid, kind="cancelled", message="cancelled")
            except FlameTalkError as err:
                self.send(event="error", id=rid, kind="input", message=str(err))
            except Exception as err:  # a bug or an environment problem: say what, keep serving
                traceback.print_exc(file=sys.stderr)
                self.send(event="error", id=rid, kind="internal", message=f"{type(err).__name__}: {err}")
            finally:
                self.cancelled.discard(rid)

    def ensure_model(self, req: dict[str, Any]):
        from .assets import default_checkpoint_dir
        from .checkpoint import checkpoint_provenance, load_checkpoint
        from .devices import configure_torch_for_parity, resolve_device
        from .model.condcache import ConditionCache
        from .precision import apply_mode

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
        from .audio import load_audio
        from .motion_io import save_motion
        from .pipeline import generate_motion
        from .postprocess import postprocess_motion
        from .style import load_style

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
            if rid in self.cancelled:
                raise Cancelled()
            # the client's spare_cores command may have changed since the last window
            self.send(event="progress", id=rid, done=done, total=total, stage="generate", threads=self.use_threads())

        motion = generate_motion(model, audio, style, progress=progress, cache=self.condition_cache)
        if req.get("postprocess", True):
            motion = postprocess_motion(motion)
        if rid in self.cancelled:
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

    def set_spare_cores(self, req: dict[str, Any]) -> None:
        """Reader thread: remember how many threads the client keeps; the job loop applies it between windows."""
        cores = req.get("cores")
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 0:
            self.send(event="error", id=req.get("id"), kind="input",
                      message=f"spare_cores: 'cores' must be a whole number >= 0, got {cores!r}")
            return
        self.spare_cores = cores

    def use_threads(self) -> int:
        """Job loop: run on the start-up threads minus the client's spare cores (torch changes only if needed)."""
        import torch

        threads = max(1, self.default_threads - self.spare_cores)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads


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
                python=sys.executable, devices=available_devices(), pid=os.getpid(), threads=worker.default_threads)
    reader = threading.Thread(target=worker.read_requests, args=(sys.stdin,), daemon=True)
    reader.start()
    worker.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
