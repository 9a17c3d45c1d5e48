"""Generate / Cancel / Use Take operators. Generate's invoke() = modal path for the UI (timer polls the worker,
progress bar, Esc or the Cancel button cancels); execute() = blocking path (headless, scripts, tests). Both run
scene/job.py."""

from __future__ import annotations

import tempfile
from typing import Any, ClassVar

import bpy
from bpy.props import FloatProperty, StringProperty

from ..core.controls import Controls
from ..scene import compat, takes
from ..scene.job import GenerateError, GenerateJob, GenerateRequest, GenerateResult, StyleSpec, run_blocking
from ..scene.keyframes import assign_take
from ..scene.rig import find_rig
from .settings import worker_settings

_ACTIVE: dict[str, Any] = {"job": None}  # the one running modal job (the Cancel button and load_pre see it)


def active_job() -> GenerateJob | None:
    return _ACTIVE["job"]


def build_request(context: bpy.types.Context, worker_python: str = "", checkpoint: str = "") -> GenerateRequest:
    """A GenerateRequest from the panel settings + preferences (operator overrides win)."""
    settings = context.scene.flametalk
    prefs = worker_settings(context)
    rig = find_rig(settings.head or context.active_object)
    temp_dir = None
    take_name = ""
    if settings.audio_source == "STRIP":
        strip = next((s for s in compat.all_strips(context.scene.sequence_editor) if s.name == settings.audio_strip),
                     None)
        if strip is None or getattr(strip, "sound", None) is None:
            raise GenerateError(f"no sound strip named '{settings.audio_strip}'; pick one in the FlameTalk panel")
        if strip.sound.packed_file is not None:
            temp_dir = tempfile.mkdtemp(prefix="flametalk_sound_")
        audio, start, add_strip = takes.sound_strip_path(strip, temp_dir), int(strip.frame_start), False
        take_name = takes.take_name_for(strip.sound.filepath or strip.name)  # not the temporary file's name
    else:
        audio, start, add_strip = bpy.path.abspath(settings.audio_file), settings.start_frame, True
    style = StyleSpec(kind=settings.style_source, name=settings.style_release.strip(),
                      path=bpy.path.abspath(settings.style_file), action=settings.style_action,
                      frame=float(settings.style_frame))
    controls = Controls(jaw=settings.jaw_intensity, expression=settings.expression_intensity,
                        head=settings.head_intensity, smoothing=settings.smoothing, simplify=settings.simplify,
                        expression_tolerance=settings.simplify_expression,
                        rotation_tolerance_deg=settings.simplify_rotation)
    return GenerateRequest(
        rig=rig, audio=audio, checkpoint=bpy.path.abspath(checkpoint) if checkpoint else prefs.checkpoint,
        worker_python=worker_python or prefs.python,
        device=prefs.device if settings.device == "PREFS" else settings.device.lower(), mode=prefs.mode,
        style=style, start_frame=start, controls=controls, push_to_nla=settings.push_to_nla,
        add_sound_strip=add_strip, take_name=take_name, scene=context.scene, temp_dir=temp_dir,
        progressive=True, keep_partial=settings.keep_partial)


def _summary(result: GenerateResult) -> str:
    first, last = result.take.frame_range
    timing = f"{result.generate_seconds:.1f} s"
    if result.first_keys_seconds is not None:
        timing += f", first window keyed after {result.first_keys_seconds:.1f} s"
    text = (f"{result.take.name}: {len(result.motion)} frames keyed on {first:g}..{last:g} "
            f"({result.take.n_keys} keys, {timing})")
    return f"cancelled; kept the finished windows: {text}" if result.partial else text


def _redraw(context: bpy.types.Context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class FLAMETALK_OT_generate(bpy.types.Operator):
    """Generate facial animation for the FLAME head from the audio (runs the model in the worker process)"""

    bl_idname = "flametalk.generate"
    bl_label = "Generate"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    worker_python: StringProperty(name="Worker Python", default="", options={"HIDDEN", "SKIP_SAVE"},
                                  description="Override the preferences' worker Python")
    checkpoint: StringProperty(name="Checkpoint", default="", options={"HIDDEN", "SKIP_SAVE"},
                               description="Override the preferences' checkpoint folder")
    timeout: FloatProperty(name="Timeout", default=0.0, min=0.0, options={"HIDDEN", "SKIP_SAVE"},
                           description="Blocking path: give up after this many seconds (0 = never)")

    _timer = None  # plain attributes (annotations are reserved for Blender properties)
    _job = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        from .live import active_session  # Live drives the head: no Generate meanwhile

        return active_job() is None and active_session() is None and context.scene is not None

    # ---- blocking ----
    def execute(self, context: bpy.types.Context) -> set[str]:
        wm = context.window_manager
        try:
            req = build_request(context, self.worker_python, self.checkpoint)
            wm.progress_begin(0, 100)
            try:
                result = run_blocking(req, timeout=self.timeout or None,
                                      on_progress=lambda job: wm.progress_update(int(100 * job.fraction)))
            finally:
                wm.progress_end()
        except GenerateError as err:
            return self._failed(err)
        self._succeeded(result)
        return {"FINISHED"}

    # ---- modal ----
    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        try:
            req = build_request(context, self.worker_python, self.checkpoint)
            job = GenerateJob(req)
        except GenerateError as err:
            return self._failed(err)
        try:
            job.start(background=True)
        except GenerateError as err:
            job.close()
            return self._failed(err)
        self._job = _ACTIVE["job"] = job
        state = context.window_manager.flametalk
        state.running, state.progress, state.status = True, 0.0, "Starting the worker..."
        state.first_keys = -1.0
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            context.window_manager.flametalk.status = "Cancelling..."
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":  # (any timer: polling more often is harmless)
            return {"PASS_THROUGH"}
        try:
            if not job.poll():
                state = context.window_manager.flametalk
                state.progress, state.status = job.fraction, job.stage.capitalize()
                if job.first_keys_seconds is not None:
                    state.first_keys = job.first_keys_seconds
                context.window_manager.progress_update(int(100 * job.fraction))
                _redraw(context)
                return {"PASS_THROUGH"}
            result = job.finish()
        except GenerateError as err:
            self._end(context)
            return self._failed(err)
        self._end(context)
        self._succeeded(result)
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:  # Blender ends the modal (e.g. the window closes)
        if self._job is not None:
            self._job.cancel()
        self._end(context)

    def _end(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if self._job is not None:
            self._job.close()
        self._job = _ACTIVE["job"] = None
        wm.flametalk.running, wm.flametalk.progress, wm.flametalk.status = False, 0.0, ""
        _redraw(context)

    # ---- reports ----
    def _failed(self, err: GenerateError) -> set[str]:
        if err.kind == "cancelled":
            self.report({"INFO"}, "FlameTalk: cancelled, nothing was changed")
        else:
            self.report({"ERROR"}, f"FlameTalk: {err}")
        return {"CANCELLED"}

    def _succeeded(self, result: GenerateResult) -> None:
        if result.first_keys_seconds is not None:
            bpy.context.window_manager.flametalk.first_keys = result.first_keys_seconds
        for warning in result.warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, _summary(result))


class FLAMETALK_OT_cancel(bpy.types.Operator):
    """Stop the running generation (nothing is kept, unless "Keep finished windows on cancel" is on)"""

    bl_idname = "flametalk.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return active_job() is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = active_job()
        if job is None:
            return {"CANCELLED"}
        job.cancel()
        context.window_manager.flametalk.status = "Cancelling..."
        return {"FINISHED"}


def cancel_on_load(*_args: Any) -> None:
    """load_pre handler: a new file is coming; the running job must not key into it (nor Live drive its head)."""
    from .live import stop_on_load

    stop_on_load()
    job = active_job()
    if job is not None:
        job.cancel()
        job.close()
        _ACTIVE["job"] = None


class FLAMETALK_OT_use_take(bpy.types.Operator):
    """Make an earlier take the active animation of the FLAME head"""

    bl_idname = "flametalk.use_take"
    bl_label = "Use Take"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    take: StringProperty(name="Take", default="")

    def execute(self, context: bpy.types.Context) -> set[str]:
        rig = find_rig(context.scene.flametalk.head or context.active_object)
        bones, shapes = takes.take_actions(self.take)
        if rig is None or bones is None or shapes is None:
            self.report({"ERROR"}, f"FlameTalk: no FLAME head or no take named '{self.take}'")
            return {"CANCELLED"}
        assign_take(rig, bones, shapes)
        return {"FINISHED"}


CLASSES: tuple[type, ...] = (FLAMETALK_OT_generate, FLAMETALK_OT_cancel, FLAMETALK_OT_use_take)
