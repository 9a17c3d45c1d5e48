"""Export operators (File browser; headless: pass filepath). The work is in scene/export.py, shared with the CLI."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from ..scene import export
from ..scene.rig import find_rig


def _rig(context: bpy.types.Context):
    settings = getattr(context.scene, "flametalk", None)
    return find_rig((settings.head if settings else None) or context.active_object)


class _ExportTake(ExportHelper):
    take: StringProperty(name="Take", default="", description="Take to export (empty: the active one)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _rig(context) is not None

    def _run(self, context: bpy.types.Context, writer) -> set[str]:
        rig = _rig(context)
        if rig is None:
            self.report({"ERROR"}, "FlameTalk: select a FLAME head to export")
            return {"CANCELLED"}
        if context.mode != "OBJECT":
            self.report({"ERROR"}, "FlameTalk: switch to Object Mode to export")
            return {"CANCELLED"}
        try:
            writer(rig, self.filepath, self.take or None)
        except (export.ExportError, RuntimeError) as err:
            self.report({"ERROR"}, f"FlameTalk: export failed: {' '.join(str(err).split())}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {Path(self.filepath).name}")
        return {"FINISHED"}


class FLAMETALK_OT_export_gltf(bpy.types.Operator, _ExportTake):
    """Export the FLAME head with one take as glTF (bones + morph-weight animation in one clip)"""

    bl_idname = "flametalk.export_gltf"
    bl_label = "Export glTF"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb;*.gltf", options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self._run(context, export.export_gltf)


class FLAMETALK_OT_export_fbx(bpy.types.Operator, _ExportTake):
    """Export the FLAME head with one take as FBX (baked bones + shape keys, no leaf bones)"""

    bl_idname = "flametalk.export_fbx"
    bl_label = "Export FBX"
    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self._run(context, export.export_fbx)


CLASSES: tuple[type, ...] = (FLAMETALK_OT_export_fbx, FLAMETALK_OT_export_gltf)
