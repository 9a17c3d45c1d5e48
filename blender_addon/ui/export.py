"""Export operators (File browser; headless: pass filepath). The work is in scene/export.py, shared with the CLI.

One pair of operators for both kinds of take: a FLAME head's take (head + armature) and a character take (the
character mesh + its armature, scene/retarget.py). What is exported: the take named by `take` (its kind decides),
else the character named by `character` with its active take, else the active object when it is a character with
a take active, else the FLAME head's active take, else the Character section's mesh with its active take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from ..scene import export, takes
from ..scene.rig import find_rig


def _rig(context: bpy.types.Context):
    settings = getattr(context.scene, "flametalk", None)
    return find_rig((settings.head if settings else None) or context.active_object)


def _character_with_take(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    if obj is not None and obj.type == "MESH" and takes.active_character_take(obj) is not None:
        return obj
    return None


def export_target(context: bpy.types.Context, take: str = "", character: str = "") -> tuple[str, Any]:
    """("flame", FlameRig) or ("character", mesh object) for the export operators (see the module docstring);
    raises export.ExportError (one line) when there is nothing to export."""
    if take:
        kind = takes.take_kind(take)
        if kind == "character":
            obj = takes.character_take_object(take)
            if obj is None:
                raise export.ExportError(f"the character of take '{take}' is not in this file")
            return "character", obj
        if kind is None:
            raise export.ExportError(f"no take named '{take}'")
    if character:
        obj = bpy.data.objects.get(character)
        if obj is None:
            raise export.ExportError(f"no object named '{character}'")
        return "character", obj
    if not take:
        obj = _character_with_take(context.active_object)
        if obj is not None and find_rig(obj) is None:
            return "character", obj
    rig = _rig(context)
    if rig is not None:
        return "flame", rig
    target = getattr(getattr(context.scene, "flametalk_character", None), "target", None)
    if not take and _character_with_take(target) is not None:
        return "character", target
    raise export.ExportError("select a FLAME head or a character with a take to export")


class _ExportTake(ExportHelper):
    take: StringProperty(name="Take", default="", description="Take to export (empty: the active one)")
    character: StringProperty(name="Character", default="",
                              description="Character mesh whose active take is exported (empty: see the take)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _rig(context) is not None or bool(takes.character_take_names())

    def _run(self, context: bpy.types.Context, fmt: str) -> set[str]:
        if context.mode != "OBJECT":
            self.report({"ERROR"}, "FlameTalk: switch to Object Mode to export")
            return {"CANCELLED"}
        try:
            kind, target = export_target(context, self.take, self.character)
            if kind == "character":
                export.export_character(target, self.filepath, self.take or None, fmt=fmt)
            else:
                (export.export_gltf if fmt == "gltf" else export.export_fbx)(target, self.filepath, self.take or None)
        except (export.ExportError, RuntimeError) as err:
            self.report({"ERROR"}, f"FlameTalk: export failed: {' '.join(str(err).split())}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {Path(self.filepath).name}")
        return {"FINISHED"}


class FLAMETALK_OT_export_gltf(bpy.types.Operator, _ExportTake):
    """Export one take as glTF: the FLAME head or the character (bones + morph-weight animation in one clip)"""

    bl_idname = "flametalk.export_gltf"
    bl_label = "Export glTF"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb;*.gltf", options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self._run(context, "gltf")


class FLAMETALK_OT_export_fbx(bpy.types.Operator, _ExportTake):
    """Export one take as FBX: the FLAME head or the character (baked bones + shape keys, no leaf bones)"""

    bl_idname = "flametalk.export_fbx"
    bl_label = "Export FBX"
    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        return self._run(context, "fbx")


CLASSES: tuple[type, ...] = (FLAMETALK_OT_export_fbx, FLAMETALK_OT_export_gltf)
