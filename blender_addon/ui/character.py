"""The panel's Character section: settings and the operators Fit, Retarget this take, Generate for this character.

They drive the same code as `python -m blender_addon.cli retarget` (scene/retarget.py: the character file, the
worker's `fit`/`retarget` commands, the fit stored on the mesh, the take keyed all-or-nothing). The operators block
while the worker computes (a fit takes seconds, a solve less) and report one line on failure, the scene unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, PointerProperty, StringProperty

from ..core.controls import apply_controls, quaternion_tolerance
from ..flame import load_flame
from ..flame.contract import MOTION_FPS
from ..flame.motionfile import read_motion
from ..scene import character, keyframes, retarget, takes
from ..scene.job import GenerateError, GenerateJob
from ..scene.rig import find_rig
from .generate import build_request
from .settings import worker_settings


def _is_character(_self: bpy.types.PropertyGroup, obj: bpy.types.Object) -> bool:
    return obj.type == "MESH" and character.has_shape_keys(obj)


class FLAMETALK_PG_character(bpy.types.PropertyGroup):
    target: PointerProperty(name="Character", type=bpy.types.Object, poll=_is_character,
                            description="the mesh with shape keys the motion is retargeted onto")
    flame_file: StringProperty(name="FLAME File", subtype="FILE_PATH", default="",
                               description="the FLAME model the motion belongs to (the one the head was built from)")
    shape_keys: EnumProperty(name="Shape Keys", default="ALL", items=(
        ("ALL", "All", "solve for every shape key"), ("ARKIT", "ARKit", "only ARKit-named keys (jawOpen, ...)"),
        ("LIST", "List", "the keys named below")))
    key_list: StringProperty(name="Keys", default="", description="comma-separated shape key names")
    face_group: StringProperty(name="Face Group", default="", description="optional vertex group limiting the fit")
    jaw_bone: StringProperty(name="Jaw Bone", default="", description="optional: this bone takes the jaw rotation")
    head_target: EnumProperty(name="Head Rotation", default="OBJECT", items=(
        ("OBJECT", "Object", "rotate the character object"), ("BONE", "Bone", "rotate the head bone"),
        ("NONE", "None", "leave the head still")))
    head_bone: StringProperty(name="Head Bone", default="")
    use_placement: BoolProperty(name="Start From FLAME Head", default=False,
                                description="start the fit from where the FLAME head was placed over the character")


def _settings(context: bpy.types.Context) -> FLAMETALK_PG_character:
    return context.scene.flametalk_character


def _keys(settings: FLAMETALK_PG_character) -> str | list[str]:
    if settings.shape_keys == "LIST":
        return [k.strip() for k in settings.key_list.split(",") if k.strip()] or "all"
    return settings.shape_keys.lower()


def _target(context: bpy.types.Context) -> bpy.types.Object:
    settings = _settings(context)
    obj = settings.target
    if obj is None:
        raise character.CharacterError("choose the character mesh in the Character section")
    character.check_character(obj)
    if not settings.flame_file:
        raise character.CharacterError("choose the FLAME file the motion belongs to")
    retarget.check_bones(obj, settings.jaw_bone or None,
                         settings.head_bone if settings.head_target == "BONE" and settings.head_bone else None)
    return obj


def _python(context: bpy.types.Context) -> str:
    python = worker_settings(context).python
    if not python:
        raise character.CharacterError("no worker Python is set: set it in the FlameTalk preferences")
    return python


def key_motion(context: bpy.types.Context, obj: bpy.types.Object, motion: np.ndarray, name: str,
               start: float) -> retarget.CharacterTake:
    """Solve `motion` (25 fps, controls applied) for `obj` on the worker and key it at scene frame `start`."""
    settings = _settings(context)
    controls = context.scene.flametalk  # the panel's Controls: curve simplification and NLA, as for FLAME takes
    simplify = (float(controls.simplify_expression), quaternion_tolerance(controls.simplify_rotation)) \
        if controls.simplify else None
    result, _ = retarget.solve(obj, motion, bpy.path.abspath(settings.flame_file), _python(context),
                               keys=_keys(settings), face_group=settings.face_group or None,
                               jaw_bone=settings.jaw_bone or None)
    return retarget.key_character_take(
        obj, result, name, context.scene, start_frame=start, jaw_bone=settings.jaw_bone or None,
        head_bone=settings.head_bone if settings.head_target == "BONE" and settings.head_bone else None,
        head_to_object=settings.head_target == "OBJECT", simplify=simplify, push_to_nla=controls.push_to_nla)


class FLAMETALK_OT_character_fit(bpy.types.Operator):
    """Fit the FLAME head to the character (stored with it; needed once per character)"""

    bl_idname = "flametalk.character_fit"
    bl_label = "Fit"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = _settings(context)
        try:
            obj = _target(context)
            init = None
            rig = find_rig(context.scene.flametalk.head) if settings.use_placement else None
            if settings.use_placement:
                if rig is None:
                    raise character.CharacterError("no FLAME head to start from: pick one in the panel above")
                init = np.array(obj.matrix_world.inverted() @ rig.mesh.matrix_world)
            fit = retarget.fit_character(obj, bpy.path.abspath(settings.flame_file), _python(context),
                                         face_group=settings.face_group or None, init=init)
        except (character.CharacterError, retarget.RetargetError, ValueError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Fitted {obj.name}: {fit['rms_mm']:.2f} mm RMS, {fit['max_mm']:.2f} mm max over "
                              f"{fit['vertices_used']} vertices")
        return {"FINISHED"}


class FLAMETALK_OT_character_place_head(bpy.types.Operator):
    """Move the panel's FLAME head over the character (where the fit puts it, else a rough guess) to adjust by
    hand; Fit then starts from where it is left ("Start From FLAME Head" is switched on)"""

    bl_idname = "flametalk.character_place_head"
    bl_label = "Place FLAME Head"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = _settings(context)
        try:
            obj = settings.target
            if obj is None:
                raise character.CharacterError("choose the character mesh in the Character section")
            character.check_character(obj)
            rig = find_rig(context.scene.flametalk.head)
            if rig is None:
                raise character.CharacterError("no FLAME head to place: build or pick one in the panel above")
            how = character.place_flame_head(obj, rig.mesh, rig.armature)
        except character.CharacterError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        settings.use_placement = True
        self.report({"INFO"}, f"Placed {rig.mesh.name} over {obj.name} ({how}): adjust it by hand, then Fit")
        return {"FINISHED"}


class FLAMETALK_OT_character_show_fit(bpy.types.Operator):
    """Show the fitted FLAME head over the character (a wireframe child object, not rendered)"""

    bl_idname = "flametalk.character_show_fit"
    bl_label = "Show Fitted Head"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            obj = _target(context)
            faces = load_flame(bpy.path.abspath(_settings(context).flame_file), use_torch=False).faces
            head = character.show_fitted_head(obj, faces)
        except (character.CharacterError, ValueError) as err:  # FlameFileError is a ValueError
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Showing {head.name}")
        return {"FINISHED"}


class FLAMETALK_OT_character_use_take(bpy.types.Operator):
    """Make this character take active on its character (shape keys, bones, object rotation)"""

    bl_idname = "flametalk.character_use_take"
    bl_label = "Use Character Take"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    take: StringProperty(name="Take", default="")

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = takes.character_take_object(self.take) or _settings(context).target  # the take's own mesh first
        try:
            if takes.take_kind(self.take) != "character":
                raise character.CharacterError(f"no character take named '{self.take}'")
            if obj is None:
                raise character.CharacterError("choose the character mesh in the Character section")
            retarget.assign_character_take(obj, self.take)
        except character.CharacterError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return {"FINISHED"}


class FLAMETALK_OT_character_retarget(bpy.types.Operator):
    """Retarget the FLAME head's active take onto the character (a new character take)"""

    bl_idname = "flametalk.character_retarget"
    bl_label = "Retarget This Take"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        try:
            obj = _target(context)
            rig = find_rig(scene.flametalk.head or context.active_object)
            action = rig.armature.animation_data.action if rig and rig.armature.animation_data else None
            if action is None:
                raise character.CharacterError("the FLAME head has no active take: generate one or pick a take")
            first, last = action.frame_range
            step = keyframes.scene_fps(scene) / MOTION_FPS
            frames = first + step * np.arange(int(np.floor((last - first) / step + 1e-3)) + 1)
            motion = takes.sample_action_motion(action, frames)
            name = f"{action.get(keyframes.TAKE_PROP, action.name)}_{obj.name}"
            take = key_motion(context, obj, motion, name, float(first))
        except (character.CharacterError, retarget.RetargetError, ValueError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Retargeted onto {obj.name}: take {take.name}, {len(frames)} frames")
        return {"FINISHED"}


class FLAMETALK_OT_character_generate(bpy.types.Operator):
    """Generate a take from the panel's audio and style, keyed onto the character (no FLAME head needed)"""

    bl_idname = "flametalk.character_generate"
    bl_label = "Generate for This Character"
    bl_options: ClassVar[set[str]] = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = None
        try:
            obj = _target(context)
            req = build_request(context)
            job = GenerateJob(req, rig_required=False)
            job.start()
            job.wait()
            motion = apply_controls(read_motion(job.out).motion, req.controls)
            name = req.take_name or takes.take_name_for(req.audio)
            take = key_motion(context, obj, motion, f"{name}_{obj.name}", float(req.start_frame))
        except (character.CharacterError, retarget.RetargetError, GenerateError, ValueError) as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        finally:
            if job is not None:
                job.close()
        takes.extend_range(context.scene, *take.frame_range)
        self.report({"INFO"}, f"Generated take {take.name} on {obj.name}")
        return {"FINISHED"}


def register_properties() -> None:
    bpy.types.Scene.flametalk_character = PointerProperty(type=FLAMETALK_PG_character)


def unregister_properties() -> None:
    if hasattr(bpy.types.Scene, "flametalk_character"):
        del bpy.types.Scene.flametalk_character


CLASSES: tuple[type, ...] = (FLAMETALK_PG_character, FLAMETALK_OT_character_fit, FLAMETALK_OT_character_place_head,
                             FLAMETALK_OT_character_show_fit,
                             FLAMETALK_OT_character_use_take, FLAMETALK_OT_character_retarget,
                             FLAMETALK_OT_character_generate)
