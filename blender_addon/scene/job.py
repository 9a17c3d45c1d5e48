"""Generate a take: the one code path behind the Generate operator (modal and blocking) and the batch CLI.

    check inputs -> worker writes a motion .npz -> load it -> controls -> keys -> sound strip -> frame range

The scene is touched only after the motion file is complete, and `apply_motion` undoes its own changes if any step
fails, so an error or a cancel leaves the scene as it was. Every failure is a GenerateError with one line.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from ..core import paths
from ..core.controls import Controls, apply_controls, quaternion_tolerance
from ..core.style_channels import style_frames
from ..flame.contract import STYLE_FRAMES
from ..flame.motionfile import read_motion
from ..worker.client import WorkerError, get_client
from . import compat, keyframes, takes
from .keyframes import MotionFileError, Take
from .rig import FlameRig, find_rig

STYLE_KINDS = ("NONE", "RELEASE", "FILE", "ACTION")
DEVICES = ("auto", "cuda", "mps", "cpu")


class GenerateError(Exception):
    """One readable line; kind: input / setup / crash / internal / cancelled / timeout."""

    def __init__(self, message: str, kind: str = "input"):
        super().__init__(" ".join(str(message).split()))
        self.kind = kind


@dataclass
class StyleSpec:
    kind: str = "NONE"  # NONE | RELEASE (a clip name in the checkpoint's style folder) | FILE | ACTION
    name: str = ""
    path: str = ""
    start: int = 0  # FILE: first motion frame of the 50 used from a longer clip
    action: bpy.types.Action | None = None
    frame: float = 1.0  # ACTION: first scene frame of the 2 s sampled


@dataclass
class GenerateRequest:
    rig: FlameRig | None
    audio: str
    checkpoint: str
    worker_python: str
    device: str = "auto"
    mode: str = "exact"
    style: StyleSpec = field(default_factory=StyleSpec)
    start_frame: int = 1
    controls: Controls = field(default_factory=Controls)
    push_to_nla: bool = False
    add_sound_strip: bool = True
    range_mode: str = "EXTEND"  # EXTEND (never shrink the scene range) | FIT (exactly the take)
    take_name: str = ""  # "" = <audio stem>_take<N>
    worker_env: dict[str, str] | None = None
    scene: bpy.types.Scene | None = None
    temp_dir: str | None = None  # removed with the job (e.g. a packed sound written out)


@dataclass
class GenerateResult:
    take: Take
    motion: np.ndarray  # as keyed (after the controls)
    sound_strip: Any
    keying_seconds: float
    generate_seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_request(req: GenerateRequest) -> None:
    """Everything that can be checked before starting the worker; raises GenerateError."""
    if req.rig is None:
        raise GenerateError("no FLAME head: select one (or build it with Build FLAME Head) and try again")
    try:
        req.rig.armature.name, req.rig.key.name  # noqa: B018 - touch the datablocks: deleted ones raise
    except (ReferenceError, AttributeError):
        raise GenerateError("the FLAME head was deleted; select another one") from None
    check_inputs(req)


def check_inputs(req: GenerateRequest) -> None:
    """The checks that need no rig: audio, checkpoint, worker Python, device, controls, style."""
    problem = audio_problem(req.audio)
    if problem:
        raise GenerateError(problem)
    problem = paths.checkpoint_problem(req.checkpoint)
    if problem:
        raise GenerateError(problem)
    if not req.worker_python:
        raise GenerateError("no worker Python is set: set up the runtime or choose a Python with torch in the "
                            "FlameTalk preferences", "setup")
    if not Path(req.worker_python).is_file():
        raise GenerateError(f"worker Python not found: {req.worker_python}; fix it in the FlameTalk preferences",
                            "setup")
    if req.device not in DEVICES and not req.device.startswith("cuda:"):
        raise GenerateError(f"unknown device '{req.device}' (use one of {', '.join(DEVICES)})")
    try:
        req.controls.check()
    except ValueError as err:
        raise GenerateError(str(err)) from None
    style = req.style
    if style.kind == "RELEASE":
        if not (paths.style_dir(req.checkpoint) / f"{style.name}.pt").is_file():
            names = ", ".join(paths.release_styles(req.checkpoint)) or "none downloaded"
            raise GenerateError(f"style clip '{style.name}' not found in {paths.style_dir(req.checkpoint)} "
                                f"(available: {names})")
    elif style.kind == "FILE":
        problem = paths.file_problem(style.path, "style file")
        if problem:
            raise GenerateError(problem)
    elif style.kind == "ACTION" and style.action is None:
        raise GenerateError("choose the action to take the style from")
    elif style.kind not in STYLE_KINDS:
        raise GenerateError(f"unknown style source '{style.kind}'")


def audio_problem(path: str) -> str | None:
    """None if the audio file exists and Blender's own reader (aud, which plays the sound strip) opens it."""
    problem = paths.file_problem(path, "audio file")
    if problem:
        return problem
    try:
        import aud
    except ImportError:  # not inside Blender (plain tests): the worker still checks the file
        return None
    try:
        aud.Sound(path).specs  # noqa: B018 - opening is the check
    except Exception as err:  # aud raises plain Exceptions
        return f"audio file is not readable ({' '.join(str(err).split())}): {path}"
    return None


def _style_field(req: GenerateRequest, temp_dir: str, scene: bpy.types.Scene) -> tuple[str | None, int]:
    """The worker's `style` / `style_start` for the request (an ACTION is sampled into a .npy first)."""
    style = req.style
    if style.kind == "RELEASE":
        return str(paths.style_dir(req.checkpoint) / f"{style.name}.pt"), 0
    if style.kind == "FILE":
        return paths.absolute(bpy.path.abspath(style.path)), int(style.start)
    if style.kind == "ACTION":
        frames = style_frames(style.frame, keyframes.scene_fps(scene), STYLE_FRAMES)
        try:
            motion = takes.sample_action_motion(style.action, frames)
        except ValueError as err:
            raise GenerateError(str(err)) from None
        path = str(Path(temp_dir) / "style_from_action.npy")
        np.save(path, motion)
        return path, 0
    return None, 0


class GenerateJob:
    """One generation: start() submits to the warm worker, poll() from a timer (UI) or wait() (blocking),
    cancel() at any time, finish() keys the result. close() removes temporary files.

    `rig_required=False` (the batch CLI) submits before the head exists: the next line's motion is computed while
    Blender writes the current one; finish() then gets the rig and scene it keys."""

    def __init__(self, req: GenerateRequest, rig_required: bool = True):
        try:
            if rig_required or req.rig is not None:
                check_request(req)
            else:
                check_inputs(req)
        except GenerateError:
            if req.temp_dir:  # e.g. a packed sound written out for this request
                shutil.rmtree(req.temp_dir, ignore_errors=True)
            raise
        self.req = req
        self.scene = req.scene or bpy.context.scene
        self.rig_name = req.rig.armature.name if req.rig is not None else None
        self.temp_dir = tempfile.mkdtemp(prefix="flametalk_job_")
        self.out = str(Path(self.temp_dir) / "motion.npz")
        self.rid: int | None = None
        self.client = None
        self.fraction = 0.0
        self.stage = "starting"
        self.started = time.perf_counter()
        self.result_event: dict[str, Any] | None = None
        self.cancel_requested = False
        self._starter: threading.Thread | None = None
        self._start_error: WorkerError | None = None

    def start(self, background: bool = False) -> None:
        """Submit the request. background=True starts the worker process on a thread (importing torch takes
        seconds; the UI stays responsive) and poll() reports its failure; the thread touches no Blender data."""
        style, style_start = _style_field(self.req, self.temp_dir, self.scene)  # reads bpy data: main thread
        self.client = get_client(self.req.worker_python, self.req.worker_env)
        fields = {"audio": paths.absolute(self.req.audio), "out": self.out, "checkpoint": self.req.checkpoint,
                  "device": self.req.device, "mode": self.req.mode, "style": style, "style_start": style_start,
                  "postprocess": True}
        self.stage = "starting the worker"
        if not background:
            self._submit(fields)
            self._raise_start_error()
            return
        self._starter = threading.Thread(target=self._submit, args=(fields,), daemon=True)
        self._starter.start()

    def _submit(self, fields: dict[str, Any]) -> None:
        try:
            self.rid = self.client.submit("generate", **fields)
            self.stage = "waiting for the worker"
            if self.cancel_requested:  # cancelled while the worker was starting
                self.client.cancel(self.rid)
        except WorkerError as err:
            self._start_error = err

    def _raise_start_error(self) -> None:
        if self._start_error is not None:
            err, self._start_error = self._start_error, None
            raise GenerateError(str(err), err.kind)

    def _progress(self, event: dict[str, Any]) -> None:
        total, done = event.get("total") or 0, event.get("done") or 0
        self.stage = str(event.get("stage", ""))
        self.fraction = float(done) / float(total) if total else 0.0

    def poll(self) -> bool:
        """True once the motion file is complete; raises GenerateError on failure or cancel."""
        if self.result_event is not None:
            return True
        if self._starter is not None:
            if self._starter.is_alive():
                if self.cancel_requested:  # nothing submitted yet: the job ends here
                    raise GenerateError("cancelled", "cancelled")
                return False
            self._starter = None
            self._raise_start_error()
            if self.cancel_requested:
                self.cancel()
        assert self.client is not None and self.rid is not None, "start() first"
        try:
            state, event = self.client.poll(self.rid)
        except WorkerError as err:
            raise GenerateError("cancelled" if err.kind == "cancelled" else str(err), err.kind) from None
        if state == "progress" and event:
            self._progress(event)
        elif state == "result":
            self.result_event, self.fraction, self.stage = event, 1.0, "keying"
            return True
        return False

    def wait(self, timeout: float | None = None, on_progress: Any = None) -> None:
        """Block until the motion is ready. on_progress(job) returning False cancels."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if on_progress is not None and on_progress(self) is False and not self.cancel_requested:
                self.cancel()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise GenerateError(f"the worker did not finish within {timeout:.0f} s", "timeout")
            time.sleep(0.02)

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.client is not None and self.rid is not None:
            self.client.cancel(self.rid)

    def finish(self, rig: FlameRig | None = None, scene: bpy.types.Scene | None = None) -> GenerateResult:
        """Key the finished motion (scene changes happen only here): onto `rig` in `scene` if given, else onto
        the head and scene of the request."""
        if self.result_event is None:
            raise GenerateError("the motion is not ready yet", "internal")
        try:
            read = read_motion(self.out)
        except MotionFileError as err:
            raise GenerateError(f"the worker wrote a bad motion file ({err})", "internal") from None
        if rig is None:
            rig = find_rig(bpy.data.objects.get(self.rig_name)) if self.rig_name else None
        if rig is None:
            raise GenerateError("the FLAME head was deleted while generating; nothing was keyed")
        result = apply_motion(rig, read.motion, read.fps, audio=self.req.audio, req=self.req,
                              scene=scene or self.scene)
        result.generate_seconds = time.perf_counter() - self.started
        result.provenance = read.provenance
        return result

    def close(self) -> None:
        if self.client is not None and self.rid is not None:
            self.client.forget(self.rid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.req.temp_dir:
            shutil.rmtree(self.req.temp_dir, ignore_errors=True)


class _Snapshot:
    """What apply_motion may change, to put back on failure."""

    def __init__(self, scene: bpy.types.Scene, rig: FlameRig):
        self.scene, self.rig = scene, rig
        self.frame_range = (scene.frame_start, scene.frame_end)
        self.sync_mode = scene.sync_mode
        self.actions = {a.name for a in bpy.data.actions}
        self.active = [(o, o.animation_data.action if o.animation_data else None) for o in (rig.armature, rig.key)]
        self.tracks = [(o, len(o.animation_data.nla_tracks) if o.animation_data else 0) for o in
                       (rig.armature, rig.key)]
        self.strip: Any = None

    def restore(self) -> None:
        scene = self.scene
        if self.strip is not None:
            takes.remove_strip(scene, self.strip)
        for owner, count in self.tracks:
            adt = owner.animation_data
            while adt is not None and len(adt.nla_tracks) > count:
                adt.nla_tracks.remove(adt.nla_tracks[-1])
        for action in [a for a in bpy.data.actions if a.name not in self.actions]:
            bpy.data.actions.remove(action)
        for owner, action in self.active:
            if action is not None:
                compat.assign_action(owner, action)
            elif owner.animation_data is not None:
                owner.animation_data.action = None
        scene.frame_start, scene.frame_end = self.frame_range
        scene.sync_mode = self.sync_mode


def apply_motion(rig: FlameRig, motion: np.ndarray, motion_fps: float, *, audio: str | None,
                 req: GenerateRequest, scene: bpy.types.Scene | None = None) -> GenerateResult:
    """Controls -> keys -> sound strip -> NLA -> frame range, all or nothing. Also the CLI's --motion path."""
    scene = scene or req.scene or bpy.context.scene
    t0 = time.perf_counter()
    try:  # the motion-file rules, and a take that ends within Blender's frames: refused before anything is keyed
        motion, motion_fps = keyframes.validate_motion(motion, motion_fps)
        keyframes.check_scene_length(len(motion), motion_fps, scene, req.start_frame)
        controlled = apply_controls(motion, req.controls)
    except ValueError as err:
        raise GenerateError(str(err)) from None
    name = req.take_name or takes.take_name_for(audio or "take")
    simplify = None
    if req.controls.simplify:
        simplify = (req.controls.expression_tolerance, quaternion_tolerance(req.controls.rotation_tolerance_deg))
    snapshot = _Snapshot(scene, rig)
    try:
        take = keyframes.write_take(rig, controlled, motion_fps, name=name, scene=scene,
                                    start_frame=req.start_frame, simplify=simplify)
        strip = None
        last = take.frame_range[1]
        if audio and req.add_sound_strip:
            strip_name = Path(audio).stem or take.name
            strip, created = takes.add_sound_strip(scene, audio, req.start_frame, strip_name)
            snapshot.strip = strip if created else None
            last = max(last, strip.frame_final_end - 1)
        if audio:
            scene.sync_mode = "AUDIO_SYNC"
        if req.push_to_nla:
            takes.push_take_to_nla(rig, take.bone_action, take.shape_action, req.start_frame, take.name)
        (takes.fit_range if req.range_mode == "FIT" else takes.extend_range)(scene, take.frame_range[0], last)
    except (ValueError, RuntimeError) as err:  # bad motion values, Blender refusing an edit
        snapshot.restore()
        raise GenerateError(f"keying failed: {err}", "internal") from err
    except BaseException:
        snapshot.restore()
        raise
    return GenerateResult(take, controlled, strip, time.perf_counter() - t0, warnings=list(take.warnings))


def run_blocking(req: GenerateRequest, timeout: float | None = None, on_progress: Any = None) -> GenerateResult:
    """The whole take without an event loop (operator execute(), the CLI, tests)."""
    job = GenerateJob(req)
    try:
        job.start()
        job.wait(timeout, on_progress)
        return job.finish()
    finally:
        job.close()
