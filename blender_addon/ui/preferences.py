"""Add-on preferences: which Python runs the torch worker, the checkpoint folder, the default device and precision,
then the Worker Runtime section (ui/runtime.py) and the Model Files section (ui/assets.py).

Empty fields mean "automatic" (resolved when used, see ui/settings.py): the managed runtime's Python, the asset
cache's checkpoint folder.
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core import paths
from ..worker import client as worker_client
from ..worker.runtime import automatic_worker_python
from .assets import draw_assets_section
from .runtime import draw_runtime_section
from .settings import ADDON_ID, DEVICE_ITEMS, MODE_ITEMS


def _stop_workers(_self: bpy.types.AddonPreferences, _context: bpy.types.Context) -> None:
    worker_client.stop_all()  # the next Generate starts the worker with the new Python


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
            col.label(text=f"Automatic: {automatic_worker_python() or 'no managed runtime found'}", icon="INFO")
        col.prop(self, "checkpoint_dir")
        if not self.checkpoint_dir:
            col.label(text=f"Automatic: {paths.default_checkpoint_dir()}", icon="INFO")
        row = col.row()
        row.prop(self, "device")
        row.prop(self, "mode")
        draw_runtime_section(self, context, layout)
        draw_assets_section(self, context, layout)


CLASSES: tuple[type, ...] = (FLAMETALK_AddonPreferences,)
