"""Operator: build a FLAME head rig from the user's FLAME file (File > Import-like file browser)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import bpy
from bpy.props import StringProperty

from ..flame import FlameFileError, load_flame, load_shape_coefficients
from ..scene.rig import build_rig


class FLAMETALK_OT_build_head(bpy.types.Operator):
    """Build an exactly animating FLAME head (armature + mesh with expression and pose-corrective shape keys)"""

    bl_idname = "flametalk.build_head"
    bl_label = "Build FLAME Head"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="FLAME File", description="generic_model.pkl, FLAME_with_eye.pt or .npz",
                             subtype="FILE_PATH", default="")
    shape_filepath: StringProperty(name="Shape File", description="optional identity: up to 300 shape coefficients "
                                   "(.npy/.npz/.txt); empty = average head", subtype="FILE_PATH", default="")
    filter_glob: StringProperty(default="*.pkl;*.pt;*.npz", options={"HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if context.mode != "OBJECT":
            self.report({"ERROR"}, "Switch to Object Mode to build a FLAME head")
            return {"CANCELLED"}
        try:
            # use_torch=False: the add-on never imports torch; the .pt reader works without it.
            model = load_flame(bpy.path.abspath(self.filepath), use_torch=False)
            shape = None
            if self.shape_filepath:
                shape = load_shape_coefficients(bpy.path.abspath(self.shape_filepath), model.n_shape)
            rig = build_rig(model, shape, collection=context.collection)
        except (FlameFileError, ValueError, RuntimeError) as err:  # RuntimeError: Blender refused (e.g. hidden)
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        for warning in rig.warnings:
            self.report({"WARNING"}, warning)
        for obj in context.selected_objects:
            obj.select_set(False)
        rig.armature.select_set(True)
        context.view_layer.objects.active = rig.armature
        name = Path(self.filepath).name
        self.report({"INFO"}, f"Built {rig.armature.name} from {name}: {len(rig.mesh.data.vertices)} vertices, "
                              f"{rig.n_expr} expression keys")
        return {"FINISHED"}


CLASSES: tuple[type, ...] = (FLAMETALK_OT_build_head,)
