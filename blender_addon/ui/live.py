"""Live / Stop / Record operators and the Live part of the panel (drawn by panel.py through `draw_live`).

Live starts scene/live.py's LiveSession and a bpy.app.timers function, `live_tick`, that applies the frame due
now to the head and shows the latency; headless tests call `live_tick()` themselves (no event loop there).
Stop ends it and puts the head back; Record ends it and keeps what was shown as a take with the captured audio.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from ..core.controls import Controls
from ..scene.job import StyleSpec
from ..scene.live import POLL_S, LiveError, LiveRequest, LiveSession
from ..scene.rig import find_rig
from .settings import worker_settings

_LIVE: dict[str, Any] = {"session": None, "report": ""}


def active_session() -> LiveSession | None:
    return _LIVE["session"]


def build_live_request(context: bpy.types.Context, worker_python: str = "", checkpoint: str = "",
                       speed: float = 1.0) -> LiveRequest:
    settings = context.scene.flametalk
    prefs = worker_settings(context)
    style = StyleSpec(kind=settings.style_source, name=settings.style_release.strip(),
                      path=bpy.path.abspath(settings.style_file), action=settings.style_action,
                      frame=float(settings.style_frame))
    controls = Controls(jaw=settings.jaw_intensity, expression=settings.expression_intensity,
                        head=settings.head_intensity)
    wav = bpy.path.abspath(settings.live_file) if settings.live_source == "FILE" else None
    return LiveRequest(
        rig=find_rig(settings.head or context.active_object),
        checkpoint=bpy.path.abspath(checkpoint) if checkpoint else prefs.checkpoint,
        worker_python=worker_python or prefs.python,
        device=prefs.device if settings.device == "PREFS" else settings.device.lower(), mode=prefs.mode,
        input=settings.live_device.strip() or None, wav=wav, speed=speed, style=style, controls=controls,
        start_frame=settings.start_frame, scene=context.scene)


def _state() -> Any:
    return bpy.context.window_manager.flametalk


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _end(message: str) -> None:
    state = _state()
    state.live_running, state.live_status = False, message
    _LIVE["session"], _LIVE["report"] = None, message
    _redraw()


def live_tick() -> float | None:
    """The Live timer: apply the frame due now, show the latency; at the end, keep the take if Record was asked.
    Returns the next interval, or None when Live is over (bpy.app.timers then drops it)."""
    session = active_session()
    if session is None:
        return None
    if not hasattr(bpy.context.window_manager, "flametalk"):  # the add-on was disabled while Live ran
        _LIVE["session"] = None
        session.close()
        return None
    try:
        running = session.poll()
    except LiveError as err:  # the head was deleted
        session.close()
        _end(f"FlameTalk: {err}")
        return None
    state = _state()
    state.live_frames = session.frames
    state.live_latency = session.latency
    if running:
        state.live_status = ("Stopping..." if session.stop_requested else
                             "Starting the worker..." if session.rid is None else
                             "Listening..." if session.frames == 0 else "Live")
        _redraw()
        return POLL_S
    if session.error is None and not session.stop_requested:  # the input ended (a file): Record or Stop decides
        state.live_status = "Input ended: Record keeps it, Stop discards it"
        _redraw()
        return None
    _finish(session)
    return None


def _finish(session: LiveSession) -> None:
    """Live is over (its result came, or it failed): keep the take if Record was asked, else put the head back."""
    if session.error is not None:
        _end("Live stopped" if session.error.kind == "cancelled" else f"FlameTalk: {session.error}")
        return
    if session.record_requested:
        try:
            result = session.record()
        except LiveError as err:
            _end(f"FlameTalk: {err}")
            return
        first, last = result.take.frame_range
        _end(f"Recorded {result.take.name}: {len(result.motion)} frames on {first:g}..{last:g}")
        return
    session.close()
    _end(f"Live ended: {session.frames} frames shown")


class FLAMETALK_OT_live(bpy.types.Operator):
    """Drive the FLAME head live from a microphone (or a file played in real time) through the worker"""

    bl_idname = "flametalk.live"
    bl_label = "Live"

    worker_python: StringProperty(name="Worker Python", default="", options={"HIDDEN", "SKIP_SAVE"})
    checkpoint: StringProperty(name="Checkpoint", default="", options={"HIDDEN", "SKIP_SAVE"})
    speed: FloatProperty(name="Speed", default=1.0, min=0.0, options={"HIDDEN", "SKIP_SAVE"},
                         description="File input: playback speed (1 = real time)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        from .generate import active_job

        return active_session() is None and active_job() is None and context.scene is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            session = LiveSession(build_live_request(context, self.worker_python, self.checkpoint, self.speed))
            session.start(background=True)
        except LiveError as err:
            self.report({"ERROR"}, f"FlameTalk: {err}")
            return {"CANCELLED"}
        _LIVE["session"], _LIVE["report"] = session, ""
        state = context.window_manager.flametalk
        state.live_running, state.live_status, state.live_latency, state.live_frames = True, "Starting...", -1.0, 0
        if not bpy.app.timers.is_registered(live_tick):
            bpy.app.timers.register(live_tick, first_interval=POLL_S)
        return {"FINISHED"}


class FLAMETALK_OT_live_stop(bpy.types.Operator):
    """Stop Live (Record: keep what was shown as a take, with the captured audio as its sound strip)"""

    bl_idname = "flametalk.live_stop"
    bl_label = "Stop Live"

    record: BoolProperty(name="Record", default=False, options={"SKIP_SAVE"},
                         description="Keep what was shown as a take with the captured audio")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return active_session() is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        session = active_session()
        if session is None:
            return {"CANCELLED"}
        session.stop(record=self.record)
        context.window_manager.flametalk.live_status = "Stopping..."
        if session.done:  # the input had ended already: nothing more will come
            _finish(session)
            if self.record and _LIVE["report"].startswith("FlameTalk:"):
                self.report({"ERROR"}, _LIVE["report"])
                return {"CANCELLED"}
        return {"FINISHED"}


def draw_live(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The Live part of the main panel."""
    settings = context.scene.flametalk
    state = context.window_manager.flametalk
    box = layout.box()
    col = box.column()
    col.prop(settings, "live_source")
    if settings.live_source == "FILE":
        col.prop(settings, "live_file")
    else:
        col.prop(settings, "live_device")
    row = box.row(align=True)
    if state.live_running or active_session() is not None:
        row.operator("flametalk.live_stop", text="Stop", icon="PAUSE").record = False
        row.operator("flametalk.live_stop", text="Record", icon="REC").record = True
        latency = f"{state.live_latency:.2f} s" if state.live_latency >= 0 else "-"
        box.label(text=f"{state.live_status}  {state.live_frames} frames, latency {latency}", icon="TIME")
    else:
        row.operator("flametalk.live", icon="OUTLINER_OB_SPEAKER")
        if state.live_status:
            box.label(text=state.live_status)


def stop_on_load(*_args: Any) -> None:
    """load_pre: Live must not drive a head of the file being replaced."""
    session = active_session()
    if session is not None:
        session.close()
        _LIVE["session"] = None


CLASSES: tuple[type, ...] = (FLAMETALK_OT_live, FLAMETALK_OT_live_stop)
