"""Preferences > FlameTalk > Worker runtime: set up the bundled runtime (offline), or check a Python of one's own.

`Set Up Runtime` runs worker.runtime.setup_runtime on a thread (pip and the worker check take a while) while a
modal timer shows its progress and keeps Blender responsive; headless (`bpy.app.background`) it runs blocking, as
scripts and tests need. bpy data is only touched on the main thread.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, StringProperty

from ..worker import client as worker_client
from ..worker import runtime
from .settings import worker_settings

# The one set-up in flight: written by its thread, read by the timer and the preferences' draw.
_STATE: dict[str, Any] = {"running": False, "fraction": 0.0, "message": "", "cancel": False, "error": "",
                          "done": ""}


def _base_python(op: bpy.types.Operator) -> str:
    # Inside Blender sys.executable is Blender's bundled Python (3.11 for Blender 4.2-5.0).
    return op.base_python or sys.executable


def _target(op: bpy.types.Operator) -> Path:
    return Path(op.target) if op.target else runtime.default_runtime_dir()


def _redraw_preferences() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


class FLAMETALK_OT_setup_runtime(bpy.types.Operator):
    """Create FlameTalk's worker environment from the wheels bundled with the add-on (offline), then start the \
worker once to check it"""

    bl_idname = "flametalk.setup_runtime"
    bl_label = "Set Up Runtime"

    torch_index_url: StringProperty(
        name="torch Index URL", default="", options={"SKIP_SAVE"},
        description="Install torch from this package index instead of the bundled build, e.g. "
                    "https://download.pytorch.org/whl/cu128 for an NVIDIA GPU (downloads several GB)")
    target: StringProperty(name="Folder", default="", options={"HIDDEN", "SKIP_SAVE"},
                           description="Runtime folder (empty: the default per-user folder)")
    base_python: StringProperty(name="Base Python", default="", subtype="FILE_PATH", options={"SKIP_SAVE"},
                                description="Python 3.11 the environment is made from (empty: Blender's own; "
                                            "choose another where Blender's cannot make a venv)")
    ask_index: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})

    _timer = None
    _thread = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not _STATE["running"]

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        bundle = runtime.read_bundle()
        if bundle is None:
            return self._fail("this copy of FlameTalk has no bundled runtime (a source checkout?): install the "
                              "extension zip, or set Worker Python to a Python with torch and flametalk")
        if self.ask_index:
            return context.window_manager.invoke_props_dialog(self, width=480)
        notice = runtime.torch_notice(bundle, self.torch_index_url)
        if notice:
            return context.window_manager.invoke_confirm(self, event, title="Download torch?", message=notice,
                                                         confirm_text="Download and Set Up")
        return self.execute(context)

    def draw(self, context: bpy.types.Context) -> None:  # the options dialog
        self.layout.prop(self, "torch_index_url")
        bundle = runtime.read_bundle()
        notice = runtime.torch_notice(bundle, self.torch_index_url.strip()) if bundle else ""
        self.layout.label(text=notice or "Empty: the bundled torch, offline", icon="URL" if notice else "INFO")
        self.layout.prop(self, "base_python")

    def execute(self, context: bpy.types.Context) -> set[str]:
        bundle = runtime.read_bundle()
        if bundle is None:
            return self._fail("this copy of FlameTalk has no bundled runtime (a source checkout?)")
        _STATE.update(running=True, fraction=0.0, message="Starting", cancel=False, error="", done="")
        if bpy.app.background or context.window is None:
            return self._blocking(context, bundle)
        self._thread = threading.Thread(target=self._work, args=(bundle,), daemon=True)
        self._thread.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        return {"RUNNING_MODAL"}

    def _work(self, bundle: runtime.Bundle) -> None:  # thread: no bpy here
        def progress(fraction: float, message: str) -> None:
            _STATE.update(fraction=fraction, message=message)

        try:
            hello = runtime.setup_runtime(bundle, _target(self), _base_python(self), self.torch_index_url.strip(),
                                          progress=progress, should_cancel=lambda: _STATE["cancel"])
            _STATE["done"] = f"runtime ready: torch {hello.get('torch')} on {', '.join(hello.get('devices', []))}"
        except (runtime.RuntimeSetupError, OSError) as err:
            _STATE["error"] = str(err)
        finally:
            _STATE["running"] = False

    def _blocking(self, context: bpy.types.Context, bundle: runtime.Bundle) -> set[str]:
        last = {"step": -1}

        def progress(fraction: float, message: str) -> None:
            _STATE.update(fraction=fraction, message=message)
            step = int(fraction * 10)
            if step != last["step"]:  # headless: a line per 10 %, the log stays short
                last["step"] = step
                print(f"flametalk: runtime set-up {100 * fraction:3.0f}% {message}", flush=True)

        try:
            hello = runtime.setup_runtime(bundle, _target(self), _base_python(self), self.torch_index_url.strip(),
                                          progress=progress)
        except (runtime.RuntimeSetupError, OSError) as err:
            _STATE.update(running=False, error=str(err))
            return self._fail(str(err))
        _STATE.update(running=False, done="ready")
        return self._ready(hello)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            _STATE["cancel"] = True
        if event.type != "TIMER" or event.timer is not self._timer:
            return {"PASS_THROUGH"}
        context.window_manager.progress_update(int(100 * _STATE["fraction"]))
        _redraw_preferences()
        if _STATE["running"]:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        _redraw_preferences()
        if _STATE["error"]:
            return self._fail(_STATE["error"])
        self.report({"INFO"}, f"FlameTalk: {_STATE['done']}")
        self._restart_workers()
        return {"FINISHED"}

    def _ready(self, hello: dict[str, Any]) -> set[str]:
        self.report({"INFO"}, f"FlameTalk: runtime ready (torch {hello.get('torch')}, "
                              f"devices {', '.join(hello.get('devices', []))})")
        self._restart_workers()
        return {"FINISHED"}

    @staticmethod
    def _restart_workers() -> None:
        worker_client.stop_all()  # a warm worker from an older runtime must not serve the next Generate

    def _fail(self, message: str) -> set[str]:
        self.report({"ERROR"}, f"FlameTalk: {message}")
        return {"CANCELLED"}


class FLAMETALK_OT_cancel_runtime_setup(bpy.types.Operator):
    """Stop the runtime set-up (the half-made runtime is left to be set up again)"""

    bl_idname = "flametalk.cancel_runtime_setup"
    bl_label = "Cancel Set-Up"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return bool(_STATE["running"])

    def execute(self, context: bpy.types.Context) -> set[str]:
        _STATE["cancel"] = True
        return {"FINISHED"}


class FLAMETALK_OT_check_worker(bpy.types.Operator):
    """Start the worker with the configured Python and report what it found (torch version, devices)"""

    bl_idname = "flametalk.check_worker"
    bl_label = "Check Worker Python"

    def execute(self, context: bpy.types.Context) -> set[str]:
        python = worker_settings(context).python
        if not python:
            self.report({"ERROR"}, "FlameTalk: no worker Python: set up the runtime or choose a Python")
            return {"CANCELLED"}
        try:
            hello = runtime.verify_runtime(python)
        except runtime.RuntimeSetupError as err:
            self.report({"ERROR"}, f"FlameTalk: {err}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"FlameTalk: {python}: flametalk {hello.get('flametalk')}, torch {hello.get('torch')}, "
                              f"devices {', '.join(hello.get('devices', []))}")
        return {"FINISHED"}


def draw_runtime_section(_prefs: Any, context: bpy.types.Context, layout: bpy.types.UILayout) -> None:
    """The preferences' Worker Runtime rows (drawn by ui/preferences.py)."""
    box = layout.box()
    box.label(text="Worker Runtime", icon="SCRIPT")
    if _STATE["running"]:
        row = box.row()
        progress = getattr(row, "progress", None)  # UILayout.progress: Blender 4.0+
        if progress is not None:
            progress(factor=_STATE["fraction"], type="BAR", text=_STATE["message"])
        else:
            row.label(text=f"{_STATE['message']} {100 * _STATE['fraction']:.0f}%")
        row.operator("flametalk.cancel_runtime_setup", text="", icon="CANCEL")
        return
    bundle = runtime.read_bundle()
    target = runtime.default_runtime_dir()
    state, message = runtime.status(target, bundle)
    box.label(text=message, icon="CHECKMARK" if state == "ready" else "INFO")
    if bundle is None:
        box.label(text="No bundled runtime in this copy: set Worker Python to a Python with torch and flametalk")
    else:
        notice = runtime.torch_notice(bundle)
        if notice:
            box.label(text=notice, icon="URL")
        row = box.row()
        row.operator("flametalk.setup_runtime", text="Set Up Again" if state == "ready" else "Set Up Runtime",
                     icon="IMPORT")
        row.operator("flametalk.setup_runtime", text="Set Up with Options...", icon="PREFERENCES").ask_index = True
        box.label(text=f"Folder: {target}")
    box.operator("flametalk.check_worker", icon="PLAY")
    if _STATE["error"]:
        box.label(text=_STATE["error"], icon="ERROR")


CLASSES: tuple[type, ...] = (FLAMETALK_OT_setup_runtime, FLAMETALK_OT_cancel_runtime_setup,
                              FLAMETALK_OT_check_worker)
