"""Live: the FLAME head driven by the worker's `live` command (microphone, or a file played in real time), and
Record: what was shown kept as a take with the captured audio as its sound strip.

    start() -> the worker captures and streams frames -> poll() (a timer) applies the frame due now -> stop()
    -> the worker's result (captured audio written) -> record() keys a take, or close() puts the head back

While Live runs the head's active actions are set aside and its controls (expression shape-key values, root and jaw
bone rotations) are set directly, one frame at a time; close() restores the actions and the values. Frames come in
batches (a 4-s window at a time): poll() plays them back at 25 fps from the moment the first batch arrived, holding
the last frame when the next batch is late, so the head moves smoothly with a steady delay. The latency shown is,
for the frame on the head now, the time from the capture of that moment's audio to now: the worker's latency at
emission (capture -> frame out) plus the time since the batch arrived here.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from ..core import paths
from ..core.controls import Controls, apply_controls
from ..flame import axis_angle_to_quaternion
from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT, MOTION_DIM, MOTION_FPS
from ..worker.client import WorkerError, get_client
from . import compat, takes
from .job import DEVICES, GenerateError, GenerateRequest, GenerateResult, StyleSpec, apply_motion, style_field
from .rig import EXPR_KEY, FlameRig, find_rig

POLL_S = 1.0 / 30.0  # timer interval while Live runs
LIVE_TAKE_STEM = "live"


class LiveError(GenerateError):
    """One readable line (kinds as GenerateError's)."""


@dataclass
class LiveRequest:
    rig: FlameRig | None
    checkpoint: str
    worker_python: str
    device: str = "auto"
    mode: str = "exact"
    input: str | None = None  # sounddevice input (index or name); None: the system's default input
    wav: str | None = None  # a file played in real time instead of an input
    speed: float = 1.0  # wav playback speed (0: as fast as read)
    style: StyleSpec = field(default_factory=StyleSpec)
    controls: Controls = field(default_factory=Controls)  # smoothing is not applied live (it needs the future)
    start_frame: int = 1  # where a recorded take and its sound start
    worker_env: dict[str, str] | None = None
    scene: bpy.types.Scene | None = None


def live_controls(controls: Controls) -> Controls:
    """The controls Live shows (and Record keys): the intensities; no smoothing (a look-ahead filter)."""
    return replace(controls, smoothing=0.0)


class _Pose:
    """The head's active actions and control values before Live, to put back."""

    def __init__(self, rig: FlameRig):
        self.rig = rig
        self.actions = [(o, o.animation_data.action if o.animation_data else None) for o in (rig.armature, rig.key)]
        self.values = {name: rig.key.key_blocks[name].value for name in _expr_names(rig)}
        self.bones = {b: tuple(rig.armature.pose.bones[b].rotation_quaternion) for b in ("root", "jaw")}

    def set_aside(self) -> None:
        for owner, _ in self.actions:
            if owner.animation_data is not None:
                owner.animation_data.action = None

    def restore(self) -> None:
        for owner, action in self.actions:
            if action is not None:
                compat.assign_action(owner, action)
        for name, value in self.values.items():
            self.rig.key.key_blocks[name].value = value
        for bone, quat in self.bones.items():
            self.rig.armature.pose.bones[bone].rotation_quaternion = quat


def _expr_names(rig: FlameRig) -> list[str]:
    return [EXPR_KEY.format(e) for e in range(min(rig.n_expr, EXPR.stop - EXPR.start))]


def apply_frame(rig: FlameRig, frame: np.ndarray) -> None:
    """Set the head's controls to one motion frame (106 values, controls already applied)."""
    blocks = rig.key.key_blocks
    for e, name in enumerate(_expr_names(rig)):
        blocks[name].value = float(frame[EXPR.start + e])  # Blender clamps to the slider range (+-10)
    quats = axis_angle_to_quaternion(np.asarray([frame[HEAD_ROT], frame[JAW_ROT]], dtype=np.float64))
    rig.armature.pose.bones["root"].rotation_quaternion = quats[0]
    rig.armature.pose.bones["jaw"].rotation_quaternion = quats[1]


class LiveSession:
    """One Live run: start(), poll() from a timer, stop(), then record() or close()."""

    def __init__(self, req: LiveRequest):
        if req.rig is None:
            raise LiveError("no FLAME head: select one (or build it with Build FLAME Head) and try again")
        problem = paths.checkpoint_problem(req.checkpoint)
        if problem:
            raise LiveError(problem)
        if not req.worker_python or not Path(req.worker_python).is_file():
            raise LiveError(f"worker Python not found: {req.worker_python or '(none set)'}; set up the runtime or "
                            "choose a Python with torch in the FlameTalk preferences", "setup")
        if req.device not in DEVICES and not req.device.startswith("cuda:"):
            raise LiveError(f"unknown device '{req.device}' (use one of {', '.join(DEVICES)})")
        if req.wav:
            problem = paths.file_problem(req.wav, "live audio file")
            if problem:
                raise LiveError(problem)
        try:
            req.controls.check()
        except ValueError as err:
            raise LiveError(str(err)) from None
        self.req = req
        self.scene = req.scene or bpy.context.scene
        self.rig_name = req.rig.armature.name
        self.controls = live_controls(req.controls)
        self.temp_dir = tempfile.mkdtemp(prefix="flametalk_live_")
        self.audio_out = str(Path(self.temp_dir) / "captured.wav")
        self.client: Any = None
        self.rid: int | None = None
        self.started = time.perf_counter()
        self.capturing: float | None = None  # perf_counter when the worker started capturing
        self.parts: list[np.ndarray] = []  # controlled frames, in order
        self.frames = 0
        self.batches: list[tuple[int, int, float, float, float]] = []  # start, stop, latency first/last, received
        self.anchor: float | None = None  # perf_counter at which frame 0 was (or would have been) shown
        self.shown = -1  # index of the frame on the head now
        self.latency = -1.0  # of the frame shown, seconds
        self.result: dict[str, Any] | None = None
        self.error: LiveError | None = None
        self.stop_requested = False
        self.record_requested = False
        self._pose: _Pose | None = None
        self._starter: threading.Thread | None = None
        self._start_error: LiveError | None = None

    # ---- running ----
    def start(self, background: bool = False) -> None:
        """Send the live request. background=True starts the worker process on a thread (importing torch takes
        seconds; the UI stays responsive) and poll() reports its failure; the thread touches no Blender data."""
        style_req = GenerateRequest(rig=None, audio="", checkpoint=self.req.checkpoint, worker_python="",
                                    style=self.req.style)
        style, style_start = style_field(style_req, self.temp_dir, self.scene)  # reads bpy data: main thread
        self.client = get_client(self.req.worker_python, self.req.worker_env)
        fields = {"checkpoint": self.req.checkpoint, "device": self.req.device, "mode": self.req.mode,
                  "style": style, "style_start": style_start, "postprocess": True, "input": self.req.input,
                  "wav": paths.absolute(self.req.wav) if self.req.wav else None, "speed": float(self.req.speed),
                  "audio_out": self.audio_out}
        if background:
            self._starter = threading.Thread(target=self._submit, args=(fields,), daemon=True)
            self._starter.start()
        else:
            self._submit(fields)
            if self._start_error is not None:
                raise self._start_error
        self._pose = _Pose(self.rig())
        self._pose.set_aside()

    def _submit(self, fields: dict[str, Any]) -> None:
        try:
            self.client.start()
            if "live" not in self.client.features():
                raise LiveError("the worker runtime has no Live command; update it (Preferences > FlameTalk > Set "
                                "Up Runtime)", "setup")
            self.rid = self.client.submit("live", **fields)
            if self.stop_requested:  # stopped while the worker was starting
                self.client.cancel(self.rid)
        except WorkerError as err:
            self._start_error = LiveError(str(err), err.kind)
        except LiveError as err:
            self._start_error = err

    def rig(self) -> FlameRig:
        rig = find_rig(bpy.data.objects.get(self.rig_name))
        if rig is None:
            raise LiveError("the FLAME head was deleted during Live")
        return rig

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    @property
    def motion(self) -> np.ndarray:
        """The frames received so far, controls applied: what was (or will be) shown."""
        return np.concatenate(self.parts) if self.parts else np.zeros((0, MOTION_DIM), np.float32)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "live":
            self.capturing = time.perf_counter()
        elif kind == "frames":
            start, stop = int(event["start"]), int(event["stop"])
            data = base64.b64decode(str(event["motion"]))
            if start != self.frames or len(data) != (stop - start) * MOTION_DIM * 4:
                raise LiveError(f"the worker sent frames {start}..{stop} after {self.frames}", "internal")
            raw = np.frombuffer(data, dtype="<f4").reshape(stop - start, MOTION_DIM)
            self.parts.append(apply_controls(raw, self.controls))
            latency = event.get("latency") or [0.0, 0.0]
            now = time.perf_counter()
            self.batches.append((start, stop, float(latency[0]), float(latency[-1]), now))
            self.frames = stop
            if self.anchor is None:
                self.anchor = now - start / MOTION_FPS

    def poll(self, now: float | None = None) -> bool:
        """Take in the worker's events and put the frame due now on the head. False once Live is over (the
        result came or it failed: see `result` / `error`)."""
        if self.done:
            return False
        if self._starter is not None:
            if self._starter.is_alive():
                if self.stop_requested:  # nothing was sent yet: Live ends here
                    self.error = LiveError("cancelled", "cancelled")
                    self.close()
                    return False
                return True
            self._starter = None
            if self._start_error is not None:
                self.error, self._start_error = self._start_error, None
                self.close()
                return False
        assert self.client is not None and self.rid is not None, "start() first"
        try:
            state, event = self.client.poll(self.rid, on_event=self._event)
        except WorkerError as err:
            self.error = LiveError("cancelled" if err.kind == "cancelled" else str(err), err.kind)
        except LiveError as err:
            self.error = err
            self.client.cancel(self.rid)
        else:
            if state == "result":
                self.result = event
        if self.error is not None:
            self.close()
            return False
        self._show(time.perf_counter() if now is None else now)
        return self.result is None

    def _show(self, now: float) -> None:
        if self.anchor is None or not self.frames:
            return
        due = int(np.floor((now - self.anchor) * MOTION_FPS + 1e-9))
        if due > self.frames - 1:  # the next batch is late: hold the last frame, go on from it when it comes
            due = self.frames - 1
            self.anchor = now - due / MOTION_FPS
        due = max(due, 0)
        if due != self.shown:
            apply_frame(self.rig(), self.motion_frame(due))
            self.shown = due
        for start, stop, first, last, received in self.batches:
            if start <= due < stop:
                step = (last - first) / max(1, stop - start - 1)
                self.latency = first + step * (due - start) + (now - received)
                break

    def motion_frame(self, index: int) -> np.ndarray:
        for part_start, part in zip((b[0] for b in self.batches), self.parts):
            if part_start <= index < part_start + part.shape[0]:
                return part[index - part_start]
        raise IndexError(index)

    def stop(self, record: bool = False) -> None:
        """End the capture; the worker sends the held-back frames and its result (poll() goes on until then)."""
        self.stop_requested = True
        self.record_requested = self.record_requested or record
        if self.client is not None and self.rid is not None and not self.done:
            self.client.stop_live(self.rid)

    def cancel(self) -> None:
        if self.client is not None and self.rid is not None and not self.done:
            self.client.cancel(self.rid)

    def wait(self, timeout: float = 120.0) -> None:
        """Poll until the result (tests, scripts)."""
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                self.cancel()
                raise LiveError(f"Live did not end within {timeout:.0f} s", "timeout")
            time.sleep(0.02)
        if self.error is not None:
            raise self.error

    # ---- the end ----
    def record(self) -> GenerateResult:
        """Key what was shown as a take at the start frame, with the captured audio (16 kHz WAV, in a folder beside
        the .blend, or packed into an unsaved file) as its sound strip. Call after the result came."""
        if self.result is None:
            raise LiveError("Live has not ended yet: stop it first", "internal")
        motion = self.motion
        if not len(motion):
            self.close()
            raise LiveError("nothing was captured: no take was made")
        rig = self.rig()
        if self._pose is not None:
            self._pose.restore()
            self._pose = None
        name = takes.take_name_for(LIVE_TAKE_STEM)
        wav = _audio_home(name)
        shutil.copyfile(self.audio_out, wav)
        req = GenerateRequest(rig=rig, audio=str(wav), checkpoint="", worker_python="", scene=self.scene,
                              start_frame=self.req.start_frame, controls=Controls(), take_name=name)
        try:
            result = apply_motion(rig, motion, MOTION_FPS, audio=str(wav), req=req, scene=self.scene)
        except BaseException:
            wav.unlink(missing_ok=True)
            self.close()
            raise
        if not bpy.data.filepath and result.sound_strip is not None and result.sound_strip.sound.packed_file is None:
            result.sound_strip.sound.pack()  # an unsaved file: the WAV sits in a temporary folder
        result.generate_seconds = time.perf_counter() - self.started
        result.provenance = {"live": True, "latency": (self.result or {}).get("latency"),
                             "samples": (self.result or {}).get("samples")}
        self.close()
        return result

    def close(self) -> None:
        """Put the head back as it was (unless record() made a take) and remove the temporary files."""
        self.stop_requested = True  # a request still being sent by the start-up thread is cancelled once it is out
        if self.client is not None and self.rid is not None:
            if not self.done:
                self.client.cancel(self.rid)
            self.client.forget(self.rid)
        if self._pose is not None:
            with contextlib.suppress(ReferenceError, KeyError):  # the head was deleted meanwhile
                self._pose.restore()
            self._pose = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _audio_home(name: str) -> Path:
    """Where a recorded take's WAV goes: `<blend name>_flametalk/` beside a saved .blend, else a temporary folder
    (the sound is then packed into the file)."""
    if bpy.data.filepath:
        blend = Path(bpy.data.filepath)
        folder = blend.parent / f"{blend.stem}_flametalk"
    else:
        folder = Path(tempfile.mkdtemp(prefix="flametalk_live_take_"))
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{name}.wav", 1
    while path.exists():
        n += 1
        path = folder / f"{name}_{n}.wav"
    return path

