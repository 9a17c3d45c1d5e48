"""`python -m flametalk.commands.worker`: the warm inference process the Blender add-on talks to.

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
     runs, fast/plan.py)
  Progressive takes ("progressive": true on generate; "features" in hello lists "progressive"): after each 4-s
  window the frames that became final are sent at once, before that window's progress event:
  <- {"event": "frames", "id": 1, "window": 0, "windows": 3, "start": 0, "stop": 96, "final": false, "t": 1.23,
      "motion": "<base64>"}
     ("motion": frames [start, stop) as little-endian float32, row-major (stop - start, 106), post-processed when
     "postprocess" is; they will not change: with post-processing each window's last 4 frames wait for the next
     window, decode/streaming.py; the last event has "final": true and "stop" = the take's frame count; "t":
     seconds since the job started). The result follows as usual. With "keep_partial": true a cancelled
     progressive job saves the frames sent so far as a shorter take at "out" (its cancelled error event then
     carries "kept": frames); otherwise cancel keeps nothing, as without it.
  -> {"id": 5, "cmd": "spare_cores", "cores": 1}  CPU threads the model leaves to the caller from now on (the
     batch CLI: one while Blender writes a line, none while it waits); applied at once, from the next 4-s window of
     a running job; jobs run on max(1, threads of "hello" - cores). No answer unless it is bad (an error event).
  <- {"event": "error", "id": 1, "message": "one readable line", "kind": "input" | "internal" | "cancelled"}
  -> {"id": 6, "cmd": "retarget", "flame": "FLAME file", "motion": "take.npz", "character": "char.npz",
      "out": "result.npz", "keys": "all" | "arkit" | ["jawOpen", ...] | "jawOpen,eyeBlink_L", "jaw_bone": false,
      "jaw_intensity": 1.0, "fit": null | "fit.npz" (a stored fit: no fitting), "fit_out": null | "fit.npz",
      "init": null | 4x4 nested list (a hand placement of the FLAME head), "flame_version": null | "2020" | "2023",
      "options": {"l2": ..., "l1": ..., "symmetry": ..., "smooth": ..., "sweeps": ...}}
  <- {"event": "progress", "id": 6, "done": 1, "total": 3, "stage": "fit"}   (stages: load, fit, solve, write)
  <- {"event": "result", "id": 6, "out": "result.npz", "frames": 230, "shape_keys": 52,
      "fit": {"rms_mm", "max_mm", "vertices_used", "scale", "mm_per_unit"}, "fit_out": path | null,
      "residual_rms_mm": 0.1, "seconds": {"load", "fit", "transfer", "solve", "write", "total"}}
     The character, fit and result files are flame/characterfile.py's layouts; the result is written atomically.
     Character, motion and model files are read without torch; the solve runs with one BLAS thread (faster for
     its many small systems, and it leaves the other cores to Blender).
  -> {"id": 7, "cmd": "fit", "flame": ..., "character": ..., "fit_out": "fit.npz", "init": null, ...}
  <- {"event": "result", "id": 7, "fit_out": "fit.npz", "fit": {...}, "seconds": {"load", "fit", "total"}}
  Live ("features" lists "live"): motion from an audio input as it is captured (commands/live.py's capture and
  decode/streaming.py's Streamer, the same motion as generate on the captured audio):
  -> {"id": 8, "cmd": "live", "checkpoint": ..., "device": "auto", "mode": "exact", "style": null, "style_start": 0,
      "postprocess": true, "input": null | "3" | "device name" (sounddevice; null: the system's input),
      "wav": null | "speech.wav" (a file played in real time instead of an input: the same path after the capture),
      "speed": 1.0 (wav playback speed; 0: as fast as it is read), "rate": null | Hz (input capture rate),
      "seconds": null | a limit, "audio_out": null | "captured.wav" (the captured audio, 16 kHz 16-bit mono),
      "out": null | "take.npz"}
  <- {"event": "live", "id": 8, "rate": 48000.0, "warmup_s": 0.4}   (the model is warm; capture starts now)
  <- {"event": "frames", "id": 8, "start": 0, "stop": 96, "final": false, "t": 4.9, "latency": [4.6, 0.8],
      "motion": "<base64>"}   (as for progressive takes; "latency": seconds from the capture of the first and the
      last frame's moment to this event)
  -> {"id": 9, "cmd": "stop", "target": 8}     ends the capture (so does the end of "wav" or "seconds"): the held-back
     frames follow, "audio_out" / "out" are written, then
  <- {"event": "result", "id": 8, "frames": 230, "samples": 147200, "audio_out": path | null, "out": path | null,
      "latency": {"min": 0.8, "median": 2.7, "max": 4.6}, "seconds": 12.3}
     A cancel instead ends it with the cancelled error and writes nothing; without sounddevice/PortAudio "input"
     fails with one input error (use "wav").
  -> {"id": 2, "cmd": "cancel", "target": 1}    (answered by the cancelled job's error event)
  -> {"id": 3, "cmd": "ping"}                   <- {"event": "pong", "id": 3, "loaded": "DIR|null"}
  -> {"id": 4, "cmd": "shutdown"}               <- {"event": "bye", "id": 4}

The model stays loaded between requests (same checkpoint, device and mode); a request for another one reloads.
Requests are read on a separate thread so a cancel arrives while a job runs; jobs run one at a time, in the order
they came (a client may queue the next job while one runs).

Limits: every request line is checked before anything runs, and a line that breaks a rule is answered by
{"event": "error", "id": <its id, or null when the id itself is bad>, "kind": "input", "message": "..."}; the worker
keeps serving. The rules:
  - a line is at most MAX_LINE_BYTES (256 KiB) of UTF-8 ending in a newline, holding one JSON object nested at
    most MAX_DEPTH (8) levels deep;
  - "id" (and cancel's "target") is an integer (|id| < 2**63), a string of at most MAX_ID_CHARS (200) characters,
    or null; "cmd" is one of COMMANDS;
  - text fields ("audio", "out", "checkpoint", "device", "style") are strings of at most MAX_TEXT_CHARS (32,768)
    characters without NUL; "mode" is "exact" or "fast"; "style_start" and "cores" are whole numbers >= 0
    (at most 10**9 and 4096); "postprocess", "progressive" and "keep_partial" are true or false; fields a command
    does not use are ignored;
  - after a shutdown request, further jobs are answered "the worker is shutting down" (ping and cancel still work).
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

MAX_LINE_BYTES = 256 * 1024  # one request line, newline excluded
MAX_DEPTH = 8  # JSON nesting of a request ({"style": {"motion_npy": ...}} is 2)
MAX_ID_CHARS = 200
MAX_TEXT_CHARS = 32_768  # a path (Windows long paths are at most 32,767 characters)
MAX_STYLE_START = 10**9
MAX_SPARE_CORES = 4096
EXIT_GRACE_S = 5.0  # after stdin closes: time a running job gets to notice the cancel before the process exits
COMMANDS = ("generate", "load", "retarget", "fit", "live", "cancel", "stop", "spare_cores", "ping", "shutdown")
MAX_LIVE_SPEED = 1000.0
SOLVE_OPTIONS = ("l2", "l1", "symmetry", "smooth")  # flametalk.retarget.SolveOptions' weights (non-negative)
MAX_SWEEPS = 100
MAX_KEY_NAMES = 1_000
MODES = ("exact", "fast")  # flametalk.fast.precision.MODES (not imported here: that module imports torch)


class Cancelled(Exception):
    def __init__(self, kept: int | None = None):
        super().__init__("cancelled")
        self.kept = kept  # frames a progressive job saved as a shorter take (keep_partial)


class BadRequest(Exception):
    """A request line that breaks the protocol's rules: answered by an error event of kind "input"."""

    def __init__(self, message: str, rid: Any = None):
        super().__init__(message)
        self.rid = rid


def _show(value: Any) -> str:
    """A short description of a bad value for an error message (never the whole of a huge one)."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, [] is 1), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:  # deeper ones are refused anyway: no need to walk further
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) < value < 2**63
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS


def _text(req: dict[str, Any], key: str, rid: Any, required: bool = False, default: str | None = None) -> str | None:
    value = req.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{req['cmd']} needs {key!r} (a string)", rid)
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{req['cmd']}: {key!r} must be a{' non-empty' if required else ''} string, "
                         f"got {_show(value)}", rid)
    if len(value) > MAX_TEXT_CHARS or "\x00" in value:
        raise BadRequest(f"{req['cmd']}: {key!r} must be at most {MAX_TEXT_CHARS} characters without NUL", rid)
    return value


def _whole(req: dict[str, Any], key: str, rid: Any, default: int, top: int) -> int:
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise BadRequest(f"{req['cmd']}: {key!r} must be a whole number >= 0 (at most {top}), got {_show(value)}",
                         rid)
    return value


def parse_request(raw: bytes | str) -> dict[str, Any]:
    """One request line -> the request with its fields checked and defaults filled in; raises BadRequest."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRequest(f"bad request line (not UTF-8 text: {err.reason} at byte {err.start})") from None
    try:
        req = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"bad request line (JSON nested deeper than {MAX_DEPTH} levels)") from None
    except ValueError as err:
        raise BadRequest(f"bad request line ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(req, dict):
        raise BadRequest(f"bad request line (not a JSON object but {_show(req)})")
    if _depth(req) > MAX_DEPTH:
        raise BadRequest(f"bad request line (JSON nested deeper than {MAX_DEPTH} levels)")
    rid = req.get("id")
    if not _valid_id(rid):
        raise BadRequest(f"bad request: 'id' must be an integer, a string of at most {MAX_ID_CHARS} characters "
                         f"or null, got {_show(rid)}")
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise BadRequest(f"unknown command {_show(cmd)}; use one of {', '.join(COMMANDS)}", rid)
    out: dict[str, Any] = {"id": rid, "cmd": cmd}
    if cmd in ("generate", "load", "live"):
        out["checkpoint"] = _text(req, "checkpoint", rid)
        out["device"] = _text(req, "device", rid, default="auto")
        out["mode"] = _text(req, "mode", rid, default="exact")
        if out["mode"] not in MODES:
            raise BadRequest(f"{cmd}: 'mode' must be one of {', '.join(MODES)}, got {_show(out['mode'])}", rid)
    if cmd == "live":
        _parse_live(req, out, rid)
    if cmd == "generate":
        out["audio"] = _text(req, "audio", rid, required=True)
        out["out"] = _text(req, "out", rid, required=True)
    if cmd in ("generate", "live"):
        style = req.get("style")
        if isinstance(style, dict):
            if set(style) != {"motion_npy"}:
                raise BadRequest(f"{cmd}: a 'style' object must be {{\"motion_npy\": path}}", rid)
            style = style["motion_npy"]
            out["style"] = _text({"cmd": cmd, "style": style}, "style", rid, required=True)
        else:
            out["style"] = _text(req, "style", rid)
        out["style_start"] = _whole(req, "style_start", rid, 0, MAX_STYLE_START)
        postprocess = req.get("postprocess", True)
        if not isinstance(postprocess, bool):
            raise BadRequest(f"{cmd}: 'postprocess' must be true or false, got {_show(postprocess)}", rid)
        out["postprocess"] = postprocess
    if cmd == "generate":
        for flag in ("progressive", "keep_partial"):  # kept only when given: old requests parse as before
            if flag in req:
                if not isinstance(req[flag], bool):
                    raise BadRequest(f"generate: {flag!r} must be true or false, got {_show(req[flag])}", rid)
                out[flag] = req[flag]
    elif cmd in ("retarget", "fit"):
        _parse_retarget(req, out, rid)
    elif cmd in ("cancel", "stop"):
        target = req.get("target")
        if not _valid_id(target):
            raise BadRequest(f"{cmd}: 'target' must be a request id (an integer, a string or null), got "
                             f"{_show(target)}", rid)
        out["target"] = target
    elif cmd == "spare_cores":
        cores = req.get("cores")
        if isinstance(cores, bool) or not isinstance(cores, int) or not 0 <= cores <= MAX_SPARE_CORES:
            raise BadRequest(f"spare_cores: 'cores' must be a whole number >= 0 (at most {MAX_SPARE_CORES}), "
                             f"got {_show(cores)}", rid)
        out["cores"] = cores
    return out


def _parse_live(req: dict[str, Any], out: dict[str, Any], rid: Any) -> None:
    """The fields of `live` (see the module docstring) besides the model's and the style's."""
    out["input"] = _text(req, "input", rid)
    out["wav"] = _text(req, "wav", rid)
    out["audio_out"] = _text(req, "audio_out", rid)
    out["out"] = _text(req, "out", rid)
    out["speed"] = _number(req.get("speed", 1.0), "live: 'speed'", rid, 0.0, MAX_LIVE_SPEED)
    for key, low, high in (("rate", 1000.0, 768_000.0), ("seconds", 0.0, 1e6)):
        value = req.get(key)
        out[key] = None if value is None else _number(value, f"live: {key!r}", rid, low, high)


def _number(value: Any, what: str, rid: Any, low: float = 0.0, high: float = 1e6) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{what} must be a number from {low:g} to {high:g}, got {_show(value)}", rid)
    return float(value)


def _parse_retarget(req: dict[str, Any], out: dict[str, Any], rid: Any) -> None:
    """The fields of `retarget` and `fit` (see the module docstring)."""
    cmd = req["cmd"]
    out["flame"] = _text(req, "flame", rid, required=True)
    out["character"] = _text(req, "character", rid, required=True)
    out["flame_version"] = _text(req, "flame_version", rid)
    if out["flame_version"] not in (None, "2020", "2023"):
        raise BadRequest(f"{cmd}: 'flame_version' must be \"2020\" or \"2023\"", rid)
    out["fit_out"] = _text(req, "fit_out", rid)
    init = req.get("init")
    if init is not None:
        ok = isinstance(init, list) and len(init) == 4 and all(
            isinstance(row, list) and len(row) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e12 for v in row)
            for row in init)
        if not ok:
            raise BadRequest(f"{cmd}: 'init' must be a 4x4 nested list of numbers", rid)
    out["init"] = init
    if cmd == "fit":
        if not out["fit_out"]:
            raise BadRequest("fit needs 'fit_out' (a path for the fit file)", rid)
        return
    out["motion"] = _text(req, "motion", rid, required=True)
    out["out"] = _text(req, "out", rid, required=True)
    out["fit"] = _text(req, "fit", rid)
    keys = req.get("keys", "all")
    if isinstance(keys, list):
        if not keys or len(keys) > MAX_KEY_NAMES or not all(isinstance(k, str) and 0 < len(k) <= 256 for k in keys):
            raise BadRequest(f"retarget: 'keys' as a list must hold 1 to {MAX_KEY_NAMES} shape key names", rid)
    else:
        keys = _text({"cmd": cmd, "keys": keys}, "keys", rid, required=True)
    out["keys"] = keys
    jaw_bone = req.get("jaw_bone", False)
    if not isinstance(jaw_bone, bool):
        raise BadRequest(f"retarget: 'jaw_bone' must be true or false, got {_show(jaw_bone)}", rid)
    out["jaw_bone"] = jaw_bone
    out["jaw_intensity"] = _number(req.get("jaw_intensity", 1.0), "retarget: 'jaw_intensity'", rid, 0.0, 10.0)
    options = req.get("options") or {}
    if not isinstance(options, dict) or set(options) - {*SOLVE_OPTIONS, "sweeps"}:
        raise BadRequest(f"retarget: 'options' must be an object with some of {', '.join(SOLVE_OPTIONS)}, sweeps",
                         rid)
    parsed: dict[str, Any] = {k: _number(options[k], f"retarget: option {k!r}", rid) for k in SOLVE_OPTIONS
                              if k in options}
    if "sweeps" in options:
        parsed["sweeps"] = _whole({"cmd": cmd, "sweeps": options["sweeps"]}, "sweeps", rid, 2, MAX_SWEEPS)
    out["options"] = parsed


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
