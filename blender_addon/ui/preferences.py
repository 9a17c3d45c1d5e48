"""Add-on preferences: which Python runs the torch worker, the checkpoint folder, the default device.

Empty fields mean "automatic" and are resolved when used (so a runtime set up later is picked up):
- worker Python: `default_worker_python()`: env FLAMETALK_WORKER_PYTHON, else the managed runtime's Python from
  `runtime.default_worker_python()` (runtime.py belongs to the packaging work; '' until the runtime is ready;
  absent or failing means none), else "".
- checkpoint folder: `<asset cache>/artalk` (paths.default_checkpoint_dir; same rule as flametalk.assets).
Other modules may add rows to the preferences UI by appending `draw(prefs, context, layout)` to DRAW_HOOKS.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import bpy
from bpy.props import EnumProperty, StringProperty

from . import paths

ADDON_ID = __package__ or "blender_addon"  # "bl_ext.<repo>.flametalk" when installed as an extension
DEVICE_ITEMS = [
    ("AUTO", "Auto", "CUDA if available, then Apple Metal, then CPU"),
    ("CUDA", "CUDA", "NVIDIA GPU (needs a torch build with CUDA)"),
    ("MPS", "Metal", "Apple GPU (torch's MPS backend)"),
    ("CPU", "CPU", "Slow but works everywhere"),
]
MODE_ITEMS = [
    ("EXACT", "Exact", "float32 everywhere: the same numbers as the reference implementation"),
    ("FAST", "Fast", "int8 + bf16 on CPU, fp16 on GPUs: about 2x faster on CPU, slightly different numbers"),
]
DRAW_HOOKS: list[Callable[[bpy.types.AddonPreferences, bpy.types.Context, bpy.types.UILayout], None]] = []


def default_worker_python() -> str:
    """The worker Python used when the preference is empty ('' when none is known)."""
    env = os.environ.get("FLAMETALK_WORKER_PYTHON", "").strip()
    if env:
        return env
    try:
        from . import runtime  # the packaging work's managed environment
    except ImportError:
        return ""
    finder = getattr(runtime, "default_worker_python", None)
    try:
        found = finder() if callable(finder) else None
    except Exception:  # a broken runtime must not break the panel
        return ""
    return os.fspath(found) if found else ""


def _stop_workers(_self: bpy.types.AddonPreferences, _context: bpy.types.Context) -> None:
    from .worker_client import stop_all

    stop_all()  # the next Generate starts the worker with the new Python


class FLAMETALK_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    worker_python: StringProperty(
        name="Worker Python", subtype="FILE_PATH", default="", update=_stop_workers,
        description="Python with torch and flametalk that runs the model (empty: the managed runtime)")
    checkpoint_dir: StringProperty(
        name="Checkpoint Folder", subtype="DIR_PATH", default="",
        description="Folder with ARTalk_wav2vec.pt and config.json (empty: the FlameTalk asset cache)")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="AUTO")
    mode: EnumProperty(name="Precision", items=MODE_ITEMS, default="EXACT")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "worker_python")
        if not self.worker_python:
            col.label(text=f"Automatic: {default_worker_python() or 'no managed runtime found'}", icon="INFO")
        col.prop(self, "checkpoint_dir")
        if not self.checkpoint_dir:
            col.label(text=f"Automatic: {paths.default_checkpoint_dir()}", icon="INFO")
        row = col.row()
        row.prop(self, "device")
        row.prop(self, "mode")
        for hook in DRAW_HOOKS:
            hook(self, context, layout)


@dataclass
class WorkerSettings:
    python: str
    checkpoint: str
    device: str  # worker spelling: auto / cuda / mps / cpu
    mode: str  # exact / fast


def get_preferences(context: bpy.types.Context | None = None) -> FLAMETALK_AddonPreferences | None:
    """The add-on's preferences, or None when it is not enabled as an add-on (e.g. registered by tests)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def worker_settings(context: bpy.types.Context | None = None) -> WorkerSettings:
    prefs = get_preferences(context)
    python = (prefs.worker_python if prefs else "") or default_worker_python()
    checkpoint = (prefs.checkpoint_dir if prefs else "") or str(paths.default_checkpoint_dir())
    return WorkerSettings(
        python=bpy.path.abspath(python) if python else "",
        checkpoint=bpy.path.abspath(checkpoint),
        device=(prefs.device if prefs else "AUTO").lower(),
        mode=(prefs.mode if prefs else "EXACT").lower(),
    )
