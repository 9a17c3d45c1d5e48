"""Key a retarget result (flame/characterfile.py's result file) as a take on a character.

A character take is up to three new actions, tagged like FLAME takes (`flametalk_take` = the take name,
`flametalk_role` = "character_shapes" / "character_bones" / "character_object") and kept with a fake user:
- the shape keys' values (`key_blocks["NAME"].value`) on the mesh's Key, clipped to each key's slider range;
- with a jaw and/or head bone: their `rotation_quaternion` on the armature (the rotation, given in the mesh
  object's frame, expressed in the bone's rest axes; the bone's rotation mode becomes quaternion);
- the head rotation on the object itself when no head bone is named and `head_to_object` (its rest rotation
  composed with the motion's; rotation mode quaternion), turning about FLAME's root joint on the fitted head
  (`result["head_pivot"]`, set by `solve`: the object's location is keyed with it) rather than the object's origin.
Motion frame t (25 fps) lands on scene frame start + t * scene_fps / 25, linear keys (foreach_set, as
keyframes.py), optionally simplified (core.controls.simplify_indices). All or nothing: on any error the new actions
are removed and the previous active actions and rotation modes restored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from ..core.controls import simplify_indices
from ..flame import axis_angle_to_quaternion, characterfile, load_flame, rodrigues
from ..flame.contract import MOTION_FPS
from ..worker.client import WorkerError, get_client
from . import character, compat, export, keyframes, takes
from .character import CharacterError, armature_of, bone_rest
from .keyframes import ROLE_PROP, TAKE_PROP

ROLES = takes.CHARACTER_ROLES


class RetargetError(Exception):
    """One readable line; kind: "input" (the user's files or choices) or the worker's failure kind."""

    def __init__(self, message: str, kind: str = "input"):
        super().__init__(" ".join(str(message).split()))
        self.kind = kind


def _run_worker(python: str, cmd: str, fields: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    client = get_client(python)
    try:
        rid = client.submit(cmd, **fields)
        return client.wait(rid, timeout=timeout)
    except WorkerError as err:
        raise RetargetError(str(err), err.kind) from None


def fit_character(obj: bpy.types.Object, flame: str, python: str, face_group: str | None = None,
                  init: np.ndarray | None = None, flame_version: str | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
    """Fit FLAME to `obj` on the worker and store the fit on the mesh (the panel's Fit). `init`: 4x4 placing
    Blender-axes FLAME (metres) in the mesh's object frame (a FLAME head placed by hand). Returns the worker's
    fit numbers {"rms_mm", "max_mm", "vertices_used", ...}."""
    with tempfile.TemporaryDirectory(prefix="flametalk_fit_") as tmp:
        folder = Path(tmp)
        char_path, fit_path = str(folder / "character.npz"), str(folder / "fit.npz")
        character.write_character_file(obj, char_path, face_group=face_group)
        fields: dict[str, Any] = {"flame": str(Path(flame).absolute()), "character": char_path, "fit_out": fit_path,
                                  "flame_version": flame_version}
        if init is not None:
            fields["init"] = np.asarray(init, float).tolist()
        event = _run_worker(python, "fit", fields, timeout)
        character.store_fit(obj, characterfile.read_fit(fit_path))
    return event["fit"]


def solve(obj: bpy.types.Object, motion: np.ndarray, flame: str, python: str, keys: str | list[str] = "all",
          face_group: str | None = None, jaw_bone: str | None = None, flame_version: str | None = None,
          timeout: float | None = None, fit_cache: dict | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The character's shape key weights for `motion` (T, 106) at 25 fps, solved on the worker:
    (characterfile.read_result's dict, the worker's result event). Uses the fit stored on the mesh (else
    `fit_cache`'s for the same file and object, else fits now and stores the fit on the mesh)."""
    flame = str(Path(flame).absolute())
    with tempfile.TemporaryDirectory(prefix="flametalk_retarget_") as tmp:
        folder = Path(tmp)
        char_path = str(folder / "character.npz")
        character.write_character_file(obj, char_path, face_group=face_group, jaw_bone=jaw_bone)
        motion_path = str(folder / "motion.npz")
        np.savez(motion_path, motion=np.asarray(motion, np.float32), fps=np.float32(MOTION_FPS))
        fit_in = str(folder / "fit.npz")
        has_fit = character.write_stored_fit(obj, fit_in)
        cache_key = (bpy.data.filepath, obj.name, len(obj.data.vertices), face_group, flame)
        if not has_fit and fit_cache is not None and cache_key in fit_cache:
            character.store_fit(obj, fit_cache[cache_key])
            has_fit = character.write_stored_fit(obj, fit_in)
        fields: dict[str, Any] = {
            "flame": flame, "motion": motion_path, "character": char_path, "out": str(folder / "result.npz"),
            "keys": keys, "jaw_bone": bool(jaw_bone),
            "flame_version": flame_version}
        if has_fit:
            fields["fit"] = fit_in
        else:
            fields["fit_out"] = str(folder / "fit_new.npz")
        event = _run_worker(python, "retarget", fields, timeout)
        result = characterfile.read_result(fields["out"])
        if not has_fit:
            fit = characterfile.read_fit(fields["fit_out"])
            if fit_cache is not None:
                fit_cache[cache_key] = fit
            character.store_fit(obj, fit)
    if np.any(np.asarray(result["head_rotation"]) != 0):
        result["head_pivot"] = head_pivot(obj, flame)
    return result, event


@dataclass
class CharacterTake:
    name: str
    shape_action: bpy.types.Action
    bone_action: bpy.types.Action | None
    object_action: bpy.types.Action | None
    frames: np.ndarray
    n_keys: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def frame_range(self) -> tuple[float, float]:
        return float(self.frames[0]), float(self.frames[-1])


character_take_names = takes.character_take_names
character_take_actions = takes.character_take_actions


def _local_rotations(rotations: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (T, 3) in the mesh object's frame -> in the bone's rest axes (orthonormalised)."""
    u, _, vt = np.linalg.svd(rest[:3, :3])
    return np.asarray(rotations, np.float64) @ (u @ vt)  # axes^T v, row-wise


def _quats(rotations: np.ndarray) -> np.ndarray:
    return keyframes.continuous_quaternions(rotations)


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = np.moveaxis(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)), -1, 0)
    w2, x2, y2, z2 = np.moveaxis(np.broadcast_to(b, np.broadcast_shapes(a.shape, b.shape)), -1, 0)
    return np.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=-1)


def pivot_offsets(pivot: np.ndarray, rotations: np.ndarray, scale: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(T, 3) what to add to the object's location so that rotating it by `rotations` (T, 3 axis-angle, in the
    mesh's own frame, composed after its rest rotation `rest` (3, 3)) turns the mesh about `pivot` (mesh
    coordinates) instead of its origin: R0 S (c - R_t c). Exact for a uniform object scale `scale` (3,)."""
    turned = np.einsum("tab,b->ta", rodrigues(np.asarray(rotations, np.float64)), pivot)
    return ((pivot - turned) * scale) @ rest.T


REST_PROP = "flametalk_rest"  # on a character_object action: the object's 4x4 local matrix before the take


def object_rest(obj: bpy.types.Object) -> np.ndarray:
    """The object's local matrix without any character take's head motion: the rest recorded on a character take
    driving it (active or in the NLA), else its current matrix_basis (4, 4)."""
    adt = obj.animation_data
    actions = [] if adt is None else [adt.action] + [s.action for t in adt.nla_tracks for s in t.strips]
    for action in actions:
        if action is not None and action.get(ROLE_PROP) == "character_object" and REST_PROP in action:
            return np.array(list(action[REST_PROP]), np.float64).reshape(4, 4)
    return np.array(obj.matrix_basis, np.float64)


def quaternion_of(rot: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a 3x3 rotation matrix."""
    import mathutils

    return np.array(mathutils.Matrix([list(map(float, r)) for r in rot]).to_quaternion(), np.float64)


def head_pivot(obj: bpy.types.Object, flame: str) -> np.ndarray | None:
    """FLAME's root joint (where its head rotation turns) on the fitted head, in `obj`'s mesh coordinates, or None
    when the mesh has no fit. The joint regressor's rows sum to 1, so regressing the fitted vertices gives it."""
    fit = character.stored_fit(obj)
    if fit is None:
        return None
    try:
        model = load_flame(flame, use_torch=False)
    except ValueError:  # FlameFileError: the worker read it already; without it the head turns about the origin
        return None
    verts = np.asarray(fit["flame_vertices"], np.float64)
    if model.j_regressor.shape[1] != len(verts):
        return None
    return np.asarray(model.j_regressor[0] @ verts, np.float64).ravel()


def check_bones(obj: bpy.types.Object, jaw_bone: str | None, head_bone: str | None) -> None:
    """CharacterError unless the named bones exist on the character's armature."""
    for bone in (jaw_bone, head_bone):
        if bone:
            bone_rest(obj, bone)


def key_character_take(obj: bpy.types.Object, result: dict[str, Any], name: str = "FlameTalk character take",
                       scene: bpy.types.Scene | None = None, start_frame: float | None = None,
                       jaw_bone: str | None = None, head_bone: str | None = None, head_to_object: bool = True,
                       simplify: tuple[float, float] | None = None, push_to_nla: bool = False) -> CharacterTake:
    """Key `result` (characterfile.read_result's dict) on `obj` (see the module docstring)."""
    scene = scene or bpy.context.scene
    key = obj.data.shape_keys
    weights = np.asarray(result["weights"], np.float64)
    names = list(result["names"])
    missing = [n for n in names if n not in key.key_blocks]
    if missing:
        raise CharacterError(f"mesh '{obj.name}' has no shape key '{missing[0]}': the result belongs to another "
                             "character")
    check_bones(obj, jaw_bone, head_bone)
    start = float(scene.frame_start if start_frame is None else start_frame)
    keyframes.check_scene_length(len(weights), MOTION_FPS, scene, start, "the take")
    frames = keyframes.motion_frames(len(weights), MOTION_FPS, keyframes.scene_fps(scene), start)
    arm = armature_of(obj) if (jaw_bone or head_bone) else None
    owners: list[bpy.types.ID] = [key] + ([arm] if arm is not None else []) + ([obj] if head_to_object and not
                                                                               head_bone else [])
    previous = [(o, o.animation_data.action if o.animation_data else None) for o in owners]
    saved_modes: list[tuple[Any, str]] = []
    made: list[bpy.types.Action] = []
    n_keys = 0
    warnings: list[str] = []

    def new_action(label: str, role: str) -> bpy.types.Action:
        action = bpy.data.actions.new(label)
        action.use_fake_user = True
        action[ROLE_PROP] = role
        action[takes.CHARACTER_PROP] = obj.name
        made.append(action)
        return action

    def kept(values: np.ndarray, tolerance: float) -> np.ndarray:
        return np.arange(len(frames)) if simplify is None else simplify_indices(frames, values, tolerance)

    def fill(curves: Any, path: str, index: int, group: str, keep: np.ndarray, values: np.ndarray) -> int:
        return keyframes.fill_fcurve(curves, path, index, group, frames[keep], values)

    try:
        shapes = new_action(name, "character_shapes")
        name = shapes.name  # Blender appends .001 when taken
        curves = compat.action_fcurves(shapes, key)
        for k, key_name in enumerate(names):
            block = key.key_blocks[key_name]
            values = np.clip(weights[:, k], block.slider_min, block.slider_max)
            keep = kept(values, simplify[0] if simplify else 0.0)
            n_keys += fill(curves, f'key_blocks["{bpy.utils.escape_identifier(key_name)}"].value', 0, "Shape keys",
                           keep, values[keep])
        if arm is not None:
            bones = new_action(f"{name} bones", "character_bones")
            curves = compat.action_fcurves(bones, arm)
            for bone, rotations in ((jaw_bone, result["jaw_rotation"]), (head_bone, result["head_rotation"])):
                if not bone:
                    continue
                pose_bone = arm.pose.bones[bone]
                if pose_bone.rotation_mode != "QUATERNION":
                    saved_modes.append((pose_bone, pose_bone.rotation_mode))
                    pose_bone.rotation_mode = "QUATERNION"
                quats = _quats(_local_rotations(rotations, bone_rest(obj, bone)))
                keep = kept(quats, simplify[1] if simplify else 0.0)
                path = f'pose.bones["{bpy.utils.escape_identifier(bone)}"].rotation_quaternion'
                for index in range(4):
                    n_keys += fill(curves, path, index, bone, keep, quats[keep, index])
            bones[TAKE_PROP] = name
        if head_to_object and not head_bone:
            head = np.asarray(result["head_rotation"], np.float64)
            if np.any(head != 0):
                moved = new_action(f"{name} object", "character_object")
                if obj.rotation_mode != "QUATERNION":
                    saved_modes.append((obj, obj.rotation_mode))
                basis = object_rest(obj)
                moved[REST_PROP] = [float(v) for v in basis.ravel()]
                rest = quaternion_of(basis[:3, :3] / np.linalg.norm(basis[:3, :3], axis=0))
                obj.rotation_mode = "QUATERNION"
                quats = _qmul(rest, axis_angle_to_quaternion(head))
                signs = np.cumprod(np.where(np.sum(quats[1:] * quats[:-1], axis=1) < 0, -1.0, 1.0))
                quats[1:] *= signs[:, None]
                keep = kept(quats, simplify[1] if simplify else 0.0)
                curves = compat.action_fcurves(moved, obj)
                for index in range(4):
                    n_keys += fill(curves, "rotation_quaternion", index, "Object Transforms", keep, quats[keep, index])
                pivot = result.get("head_pivot")
                if pivot is not None:  # turn about FLAME's root joint (the neck), not the object's origin
                    scale = np.linalg.norm(basis[:3, :3], axis=0)
                    offsets = pivot_offsets(np.asarray(pivot, np.float64), head, scale, basis[:3, :3] / scale)
                    places = basis[:3, 3] + offsets
                    for index in range(3):
                        n_keys += fill(curves, "location", index, "Object Transforms", keep, places[keep, index])
                moved[TAKE_PROP] = name
        shapes[TAKE_PROP] = name
        if push_to_nla:
            for action in made:
                owner = {"character_shapes": key, "character_bones": arm, "character_object": obj}[action[ROLE_PROP]]
                compat.push_to_nla(owner, action, int(np.floor(frames[0])), name)
    except BaseException:
        for action in made:
            bpy.data.actions.remove(action)
        for owner, action in previous:
            if action is not None:
                compat.assign_action(owner, action)
            elif owner.animation_data is not None:
                owner.animation_data.action = None
        for thing, mode in saved_modes:
            thing.rotation_mode = mode
        raise
    by_role = {a[ROLE_PROP]: a for a in made}
    return CharacterTake(name, by_role["character_shapes"], by_role.get("character_bones"),
                         by_role.get("character_object"), frames, n_keys, warnings)


def assign_character_take(obj: bpy.types.Object, name: str) -> None:
    """Make the character take `name` active (shapes on the Key, bones on the armature, rotation on the object).
    Another character take's bones or rotation left active are cleared when this take has none, and what they
    moved goes back to rest: the bones they keyed to their rest pose, the object to the rest matrix recorded on
    that take (otherwise the last evaluated pose of the old take would stay on the character)."""
    actions = character_take_actions(name)
    if "character_shapes" not in actions:
        raise CharacterError(f"no character take named '{name}'")
    compat.assign_action(obj.data.shape_keys, actions["character_shapes"])
    arm = armature_of(obj)
    for owner, role in ((arm, "character_bones"), (obj, "character_object")):
        if owner is None:
            continue
        if role in actions:
            compat.assign_action(owner, actions[role])
        elif owner.animation_data is not None and owner.animation_data.action is not None \
                and owner.animation_data.action.get(ROLE_PROP) == role:
            old = owner.animation_data.action
            owner.animation_data.action = None
            _back_to_rest(owner, old)


def _back_to_rest(owner: bpy.types.Object, action: bpy.types.Action) -> None:
    """Undo what a character take's bone or object action left on `owner` once the action is taken off."""
    import mathutils

    if action.get(ROLE_PROP) == "character_object":
        if REST_PROP in action:
            owner.matrix_basis = mathutils.Matrix(np.array(list(action[REST_PROP]), np.float64).reshape(4, 4).tolist())
        return
    for fcurve in compat.iter_action_fcurves(action):
        bone_path, _, _ = fcurve.data_path.rpartition(".")
        if bone_path.startswith("pose.bones["):
            owner.path_resolve(bone_path).matrix_basis = mathutils.Matrix.Identity(4)


def export_character(obj: bpy.types.Object, take: CharacterTake, filepath: str) -> None:
    """The character (and its armature) with the take as .glb/.gltf or .fbx at `filepath` (written in place: the
    caller stages it); scene/export.py's character export, which puts everything back afterwards."""
    export.export_character(obj, filepath, take.name, atomic=False)
