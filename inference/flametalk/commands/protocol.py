"""The worker protocol: what `python -m flametalk.commands.worker` (commands/worker.py) reads and writes, and
the checks every request line passes before anything runs (`parse_request`). No torch here.

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
"""

from __future__ import annotations

import json
from typing import Any

MAX_LINE_BYTES = 256 * 1024  # one request line, newline excluded
MAX_DEPTH = 8  # JSON nesting of a request ({"style": {"motion_npy": ...}} is 2)
MAX_ID_CHARS = 200
MAX_TEXT_CHARS = 32_768  # a path (Windows long paths are at most 32,767 characters)
MAX_STYLE_START = 10**9
MAX_SPARE_CORES = 4096
COMMANDS = ("generate", "load", "retarget", "fit", "live", "cancel", "stop", "spare_cores", "ping", "shutdown")
MAX_LIVE_SPEED = 1000.0
SOLVE_OPTIONS = ("l2", "l1", "symmetry", "smooth")  # flametalk.retarget.SolveOptions' weights (non-negative)
MAX_SWEEPS = 100
MAX_KEY_NAMES = 1_000
MODES = ("exact", "fast")  # flametalk.fast.precision.MODES (not imported here: that module imports torch)


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
