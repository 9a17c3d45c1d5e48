"""Export one take of a FLAME head as FBX or glTF: one clip with the bone rotations and the morph weights.

Exporters cannot carry Blender drivers. Both bake what the drivers produce: the glTF exporter samples shape keys
driven by the armature's bones into the morph-weight animation, and the FBX exporter bakes evaluated shape-key
values every frame; bones moved by the joint-offset constraints are baked (sampled) by both. Round-trip tests
check the re-imported mesh against the rig at several frames.

While exporting, the take's actions are made active, NLA evaluation is switched off, only the head and its armature
are selected (the joint-offset helper stays out) and, for FBX, the scene range is the take's; everything is put
back afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpy

from ..core.staging import StagedOutputs
from . import compat, takes
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
def take_for_export(rig: FlameRig, take: str | None = None, fit_range: bool = False) -> Iterator[tuple[float, float]]:
    """Make `take` (default: the active one) the only animation and select just the head + armature."""
    bones, shapes = _take_actions(rig, take)
    scene = bpy.context.scene
    view_layer = bpy.context.view_layer
    saved_active = [(owner, _active(owner)) for owner in (rig.armature, rig.key)]
    saved_selection = [obj for obj in view_layer.objects if obj.select_get()]
    saved_active_object = view_layer.objects.active
    saved_range = (scene.frame_start, scene.frame_end, scene.frame_current)
    first, last = bones.frame_range
    try:
        compat.assign_action(rig.armature, bones)
        compat.assign_action(rig.key, shapes)
        rig.armature.animation_data.use_nla = False
        rig.key.animation_data.use_nla = False
        for obj in saved_selection:
            obj.select_set(False)
        for obj in (rig.armature, rig.mesh):
            obj.select_set(True)
        view_layer.objects.active = rig.armature
        if fit_range:
            scene.frame_start, scene.frame_end = math.floor(first), math.ceil(last - 1e-6)
        yield float(first), float(last)
    finally:
        for owner, (action, slot, use_nla) in saved_active:
            adt = owner.animation_data
            adt.action = action
            if slot is not None and action is not None:
                adt.action_slot = slot
            adt.use_nla = use_nla
        for obj in view_layer.objects:
            obj.select_set(obj in saved_selection)
        view_layer.objects.active = saved_active_object
        scene.frame_start, scene.frame_end = saved_range[:2]
        scene.frame_set(saved_range[2])


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
