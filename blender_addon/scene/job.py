"""Generate a take: the one code path behind the Generate operator (modal and blocking) and the batch CLI.

    check inputs -> worker writes a motion .npz -> load it -> controls -> keys -> sound strip -> frame range

The take is keyed only from the complete motion file, and `apply_motion` undoes its own changes if any step
fails, so an error or a cancel leaves the scene as it was. Every failure is a GenerateError with one line.

Progressive takes (`GenerateRequest.progressive`, when the worker's hello lists "progressive"): the worker sends
each finished 4-s window's final frames at once, and `poll()` keys everything received so far into the take's
actions (keyframes.write_take, the one F-curve writer), so the take can be scrubbed while the rest computes. These
preview keys are undone (a _Snapshot of the scene from before the first of them) before the final keys are written
from the motion file by `apply_motion`, exactly as without progressive mode, so the finished take is the same,
key for key. A cancel removes them too, or, with `keep_partial`, the worker saves the finished windows and
`finish()` keys them as a shorter take (GenerateResult.partial).
"""

from __future__ import annotations

import base64
import contextlib
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
from ..flame.contract import MOTION_DIM, MOTION_FPS, STYLE_FRAMES
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
    progressive: bool = False  # key each finished window at once (if the worker offers it; needs the rig)
    keep_partial: bool = False  # progressive: a cancel keeps the finished windows as a shorter take


@dataclass
class GenerateResult:
    take: Take
    motion: np.ndarray  # as keyed (after the controls)
    sound_strip: Any
    keying_seconds: float
    generate_seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    first_keys_seconds: float | None = None  # progressive: from the job's start to the first window keyed
    partial: bool = False  # cancelled with keep_partial: the finished windows only


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


def style_field(req: GenerateRequest, temp_dir: str, scene: bpy.types.Scene) -> tuple[str | None, int]:
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
        self.keys_the_head = rig_required  # progressive preview keys only when this job keys the request's head
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
        # progressive takes
        self.progressive = False  # requested, and the worker offers it
        self.submitted: float | None = None  # perf_counter when the request was sent (before the worker's t = 0)
        self.parts: list[np.ndarray] = []  # final frames received, in order
        self.frames_received = 0
        self.frame_events: list[dict[str, Any]] = []  # per "frames" event: window, start, stop, t (worker), received
        self.keyed_log: list[dict[str, Any]] = []  # per preview keying: window, frames, keys, seconds (since start)
        self.first_keys_seconds: float | None = None
        self.kept: int | None = None  # cancelled with keep_partial: frames the worker saved
        self.on_keyed: Any = None  # called with the job after each preview keying (UI redraw, tests)
        self._keyed_frames = 0
        self._preview: _Snapshot | None = None
        self._preview_take: Take | None = None
        self._preview_name = ""

    def start(self, background: bool = False) -> None:
        """Submit the request. background=True starts the worker process on a thread (importing torch takes
        seconds; the UI stays responsive) and poll() reports its failure; the thread touches no Blender data."""
        style, style_start = style_field(self.req, self.temp_dir, self.scene)  # reads bpy data: main thread
        self.client = get_client(self.req.worker_python, self.req.worker_env)
        fields: dict[str, Any] = {
            "audio": paths.absolute(self.req.audio), "out": self.out, "checkpoint": self.req.checkpoint,
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
            if self.req.progressive and self.keys_the_head and self.rig_name is not None:
                self.client.start()  # the hello says whether the worker offers progressive takes
                self.progressive = "progressive" in self.client.features()
            if self.progressive:  # an older worker (no "progressive" in its hello): the take appears at the end
                fields = {**fields, "progressive": True, "keep_partial": bool(self.req.keep_partial)}
            self.submitted = time.perf_counter()
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

    def _event(self, event: dict[str, Any]) -> None:
        """Every event of the request, in order (client.poll's on_event)."""
        if event.get("event") == "frames":
            self._frames(event)
        elif event.get("event") == "progress":
            self._progress(event)

    def _frames(self, event: dict[str, Any]) -> None:
        start, stop = int(event.get("start", -1)), int(event.get("stop", -1))
        if start != self.frames_received or stop < start:
            raise GenerateError(f"the worker sent frames {start}..{stop} after {self.frames_received}", "internal")
        data = base64.b64decode(str(event.get("motion", "")))
        if len(data) != (stop - start) * MOTION_DIM * 4:
            raise GenerateError("the worker sent a frames event of the wrong size", "internal")
        self.parts.append(np.frombuffer(data, dtype="<f4").reshape(stop - start, MOTION_DIM).astype(np.float32))
        self.frames_received = stop
        self.frame_events.append({"window": event.get("window"), "start": start, "stop": stop,
                                  "t": float(event.get("t", 0.0)), "received": time.perf_counter()})

    def _key_preview(self) -> None:
        """Key every frame received so far into the take's actions (replacing the previous preview keys)."""
        if self.frames_received == self._keyed_frames or not self.frames_received:
            return
        rig = find_rig(bpy.data.objects.get(self.rig_name)) if self.rig_name else None
        if rig is None:  # the head went away: finish() says so; no preview
            return
        motion = np.concatenate(self.parts)
        req, scene = self.req, self.scene
        try:
            controlled = apply_controls(motion, req.controls)
            if self._preview is None:
                self._preview = _Snapshot(scene, rig)
                self._preview_name = req.take_name or takes.take_name_for(req.audio or "take")
            else:
                self._drop_preview_actions()
            simplify = None
            if req.controls.simplify:
                simplify = (req.controls.expression_tolerance,
                            quaternion_tolerance(req.controls.rotation_tolerance_deg))
            take = keyframes.write_take(rig, controlled, MOTION_FPS, name=self._preview_name, scene=scene,
                                        start_frame=req.start_frame, simplify=simplify)
        except (ValueError, RuntimeError):  # e.g. a take past Blender's last frame: the final keying reports it
            self._discard_preview()
            self.progressive = False
            return
        self._preview_take = take
        takes.extend_range(scene, take.frame_range[0], take.frame_range[1])
        self._keyed_frames = self.frames_received
        now = time.perf_counter() - self.started
        if self.first_keys_seconds is None:
            self.first_keys_seconds = now
        self.keyed_log.append({"window": self.frame_events[-1]["window"], "frames": self.frames_received,
                               "keys": take.n_keys, "seconds": now})
        if self.on_keyed is not None:
            self.on_keyed(self)

    def _drop_preview_actions(self) -> None:
        take, self._preview_take = self._preview_take, None
        if take is None:
            return
        for action in (take.bone_action, take.shape_action):
            with contextlib.suppress(ReferenceError):  # already gone (e.g. the user deleted it)
                bpy.data.actions.remove(action)

    def _discard_preview(self) -> None:
        """Undo the preview keys: the scene as it was before the first of them."""
        snapshot, self._preview = self._preview, None
        self._drop_preview_actions()
        if snapshot is not None:
            with contextlib.suppress(ReferenceError):  # the scene or the head was removed meanwhile
                snapshot.restore()
        self._keyed_frames = 0

    @property
    def preview_take(self) -> Take | None:
        """The take keyed so far from the finished windows (progressive mode), until finish()."""
        return self._preview_take

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
            state, event = self.client.poll(self.rid, on_event=self._event)
            if state != "result":
                self._key_preview()
        except WorkerError as err:
            kept = err.event.get("kept") if err.kind == "cancelled" else None
            if isinstance(kept, int) and kept > 0 and self.req.keep_partial and Path(self.out).is_file():
                self.kept, self.result_event, self.fraction, self.stage = kept, err.event, 1.0, "keying"
                return True
            self._discard_preview()
            raise GenerateError("cancelled" if err.kind == "cancelled" else str(err), err.kind) from None
        except GenerateError:
            self._discard_preview()
            self.cancel()
            raise
        if state == "result":
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
        self._discard_preview()  # the final keys are written as without progressive mode
        if rig is None:
            rig = find_rig(bpy.data.objects.get(self.rig_name)) if self.rig_name else None
        if rig is None:
            raise GenerateError("the FLAME head was deleted while generating; nothing was keyed")
        result = apply_motion(rig, read.motion, read.fps, audio=self.req.audio, req=self.req,
                              scene=scene or self.scene)
        result.generate_seconds = time.perf_counter() - self.started
        result.provenance = read.provenance
        result.first_keys_seconds = self.first_keys_seconds
        result.partial = self.kept is not None
        return result

    def close(self) -> None:
        self._discard_preview()  # a job closed without finish() (load_pre, an error) leaves no preview keys
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
