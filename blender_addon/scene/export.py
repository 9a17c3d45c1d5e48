"""Export one take of a FLAME head as FBX or glTF: one clip with the bone rotations and the morph weights.

Exporters cannot carry Blender drivers. Both bake what the drivers produce: the glTF exporter samples shape keys
driven by the armature's bones into the morph-weight animation, and the FBX exporter bakes evaluated shape-key
values every frame; bones moved by the joint-offset constraints are baked (sampled) by both. Round-trip tests
check the re-imported mesh against the rig at several frames.

While exporting, the take's actions are made active, NLA evaluation is switched off, only the head and its armature
are selected (the joint-offset helper stays out) and, for FBX, the scene range is the take's; everything is put
back afterwards.

A character take (scene/retarget.py: shape-key action, armature action when bones are driven, object rotation)
exports the same way through `export_character`: the character mesh and its armature, the take's actions active,
NLA off, the take's frame range.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpy

from ..core.staging import StagedOutputs
from . import compat, takes
from .character import armature_of
from .rig import FlameRig


class ExportError(Exception):
    """One readable line."""


def _active(owner: bpy.types.ID) -> tuple[Any, Any, bool]:
    adt = owner.animation_data
    if adt is None:
        return None, None, False
    slot = adt.action_slot if "action_slot" in adt.bl_rna.properties else None
    return adt.action, slot, adt.use_nla


def _take_actions(rig: FlameRig, take: str | None) -> tuple[bpy.types.Action, bpy.types.Action]:
    if take:
        bones, shapes = takes.take_actions(take)
        if bones is None or shapes is None:
            raise ExportError(f"no take named '{take}' (takes: {', '.join(takes.take_names()) or 'none'})")
        return bones, shapes
    bones, shapes = _active(rig.armature)[0], _active(rig.key)[0]
    if bones is None or shapes is None:
        for owner in (rig.armature, rig.key):  # pushed to NLA: the topmost track's strip
            if owner.animation_data and len(owner.animation_data.nla_tracks):
                strips = owner.animation_data.nla_tracks[-1].strips
                if len(strips):
                    if owner == rig.armature:
                        bones = bones or strips[0].action
                    else:
                        shapes = shapes or strips[0].action
    if bones is None or shapes is None:
        raise ExportError("the FLAME head has no take to export: generate one first")
    return bones, shapes


@contextmanager
def _only_animation(owners: list[tuple[bpy.types.ID, bpy.types.Action | None]], selected: list[bpy.types.Object],
                    active: bpy.types.Object, frames: tuple[float, float],
                    fit_range: bool) -> Iterator[tuple[float, float]]:
    """Each owner's action made the active one (None: its action taken off, so another take does not ride along),
    NLA evaluation off, only `selected` selected with `active` active, the scene range `frames` rounded out when
    `fit_range`; the active actions and slots, NLA switches, selection, active object, range and current frame are
    put back afterwards, also when the export fails."""
    scene, view_layer = bpy.context.scene, bpy.context.view_layer
    saved_active = [(owner, _active(owner)) for owner, _ in owners]
    saved_selection = [o for o in view_layer.objects if o.select_get()]
    saved_active_object = view_layer.objects.active
    saved_range = (scene.frame_start, scene.frame_end, scene.frame_current)
    first, last = frames
    try:
        for owner, action in owners:
            if action is not None:
                compat.assign_action(owner, action)
            elif owner.animation_data is not None:
                owner.animation_data.action = None
            if owner.animation_data is not None:
                owner.animation_data.use_nla = False
        for o in saved_selection:
            o.select_set(False)
        for o in selected:
            o.select_set(True)
        view_layer.objects.active = active
        if fit_range:
            scene.frame_start, scene.frame_end = math.floor(first), max(math.floor(first), math.ceil(last - 1e-6))
        yield float(first), float(last)
    finally:
        for owner, (action, slot, use_nla) in saved_active:
            adt = owner.animation_data
            if adt is None:
                continue
            adt.action = action
            if slot is not None and action is not None:
                adt.action_slot = slot
            adt.use_nla = use_nla
        for o in view_layer.objects:
            o.select_set(o in saved_selection)
        view_layer.objects.active = saved_active_object
        scene.frame_start, scene.frame_end = saved_range[:2]
        scene.frame_set(saved_range[2])


def take_for_export(rig: FlameRig, take: str | None = None,
                    fit_range: bool = False) -> contextlib.AbstractContextManager[tuple[float, float]]:
    """Make `take` (default: the active one) the only animation and select just the head + armature."""
    bones, shapes = _take_actions(rig, take)
    return _only_animation([(rig.armature, bones), (rig.key, shapes)], [rig.armature, rig.mesh], rig.armature,
                           tuple(bones.frame_range), fit_range)


@contextmanager
def _written_atomically(filepath: str, atomic: bool) -> Iterator[str]:
    """The path the exporter should write: a temporary beside `filepath`, renamed over it once the export
    finished (an existing file is never truncated by a failed or interrupted export); `filepath` itself when
    `atomic` is False (the caller stages the file)."""
    if not atomic:
        yield filepath
        return
    with StagedOutputs([filepath]) as staged:
        yield staged.path(filepath)
        staged.commit()


def export_gltf(rig: FlameRig, filepath: str, take: str | None = None, atomic: bool = True) -> None:
    """.glb (binary) or .gltf (+ .bin): ACTIVE_ACTIONS gives one clip with bone channels + morph weights.
    A .glb is written atomically (a .gltf names its .bin after itself, so it is written in place)."""
    file_format = "GLTF_SEPARATE" if filepath.lower().endswith(".gltf") else "GLB"
    with take_for_export(rig, take), _written_atomically(filepath, atomic and file_format == "GLB") as target:
        bpy.ops.export_scene.gltf(
            filepath=target, export_format=file_format, use_selection=True, export_animations=True,
            export_animation_mode="ACTIVE_ACTIONS", export_morph=True, export_morph_animation=True,
            export_morph_normal=False, export_try_sparse_sk=False, export_skins=True, export_apply=False)


def export_fbx(rig: FlameRig, filepath: str, take: str | None = None, atomic: bool = True) -> None:
    """FBX with one baked take (the scene range is set to the take's), no leaf bones, no curve simplification;
    written to a temporary and renamed into place."""
    with take_for_export(rig, take, fit_range=True), _written_atomically(filepath, atomic) as target:
        bpy.ops.export_scene.fbx(
            filepath=target, use_selection=True, object_types={"ARMATURE", "MESH"}, add_leaf_bones=False,
            bake_anim=True, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
            bake_anim_use_all_bones=True, bake_anim_force_startend_keying=True, bake_anim_step=1.0,
            bake_anim_simplify_factor=0.0, use_armature_deform_only=False, apply_scale_options="FBX_SCALE_NONE")


# ---- character takes ----
def _character_take(obj: bpy.types.Object, take: str | None) -> tuple[str, dict[str, bpy.types.Action]]:
    if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
        raise ExportError("choose a character mesh with shape keys to export")
    name = take or takes.active_character_take(obj)
    if name is None:
        raise ExportError(f"'{obj.name}' has no character take to export: retarget a take onto it first")
    actions = takes.character_take_actions(name)
    if "character_shapes" not in actions:
        names = ", ".join(takes.character_take_names()) or "none"
        raise ExportError(f"no character take named '{name}' (character takes: {names})")
    return name, actions


def character_take_for_export(obj: bpy.types.Object, take: str | None = None,
                              fit_range: bool = True) -> contextlib.AbstractContextManager[tuple[float, float]]:
    """Make the character take `take` (default: the one active on `obj`) the only animation of the mesh, its
    armature and the object, and select just the mesh + armature; the scene range is the take's when
    `fit_range`. Everything is put back afterwards."""
    _, actions = _character_take(obj, take)
    arm = armature_of(obj)
    owners: list[tuple[bpy.types.ID, bpy.types.Action | None]] = [(obj.data.shape_keys,
                                                                     actions["character_shapes"])]
    if arm is not None:
        owners.append((arm, actions.get("character_bones")))
    owners.append((obj, actions.get("character_object")))
    selected = [o for o in (obj, arm) if o is not None]
    return _only_animation(owners, selected, obj, tuple(actions["character_shapes"].frame_range), fit_range)


def export_character(obj: bpy.types.Object, filepath: str, take: str | None = None, atomic: bool = True,
                     fmt: str | None = None) -> None:
    """The character mesh (and its armature) with one character take as glTF (shape-key weights as morph
    animation, bones) or FBX (baked): `fmt` "gltf"/"fbx", default by the file's extension (.glb/.gltf or else
    FBX). Written atomically unless `atomic` is False (the caller stages it) or the file is a .gltf (its .bin is
    named after it)."""
    gltf = filepath.lower().endswith((".glb", ".gltf")) if fmt is None else fmt == "gltf"
    separate = filepath.lower().endswith(".gltf")
    with character_take_for_export(obj, take), _written_atomically(filepath, atomic and not separate) as target:
        if gltf:
            bpy.ops.export_scene.gltf(
                filepath=target, export_format="GLTF_SEPARATE" if separate else "GLB", use_selection=True,
                export_animations=True, export_animation_mode="ACTIVE_ACTIONS", export_morph=True,
                export_morph_animation=True, export_morph_normal=False, export_try_sparse_sk=False,
                export_skins=True, export_apply=False)
        else:
            bpy.ops.export_scene.fbx(
                filepath=target, use_selection=True, object_types={"ARMATURE", "MESH"}, add_leaf_bones=False,
                bake_anim=True, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
                bake_anim_force_startend_keying=True, bake_anim_step=1.0, bake_anim_simplify_factor=0.0,
                apply_scale_options="FBX_SCALE_NONE")
