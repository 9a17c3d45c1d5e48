"""Takes in the scene: naming, the sound strip, NLA, the frame range, and reading an action back as motion.

A take is a pair of actions written by keyframes.write_take (bones on the armature object, expression values on
the head's Key), tagged with the custom properties `flametalk_take` (the take name) and `flametalk_role`
("bones" / "shapes") and kept with a fake user. Takes are named `<audio stem>_take<N>`.

A character take (scene/retarget.py) is the same kind of thing on a character mesh: roles "character_shapes"
(its Key), "character_bones" (its armature, when bones are driven), "character_object" (the object's rotation),
and `flametalk_character` = the mesh object's name. `all_takes` lists both kinds for the panel's one takes list.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import bpy
import numpy as np

from ..core import paths
from ..core.style_channels import motion_from_channels
from ..flame.contract import MOTION_DIM
from . import compat
from .keyframes import ROLE_PROP, TAKE_PROP
from .rig import FlameRig

_EXPR_PATH = re.compile(r'^key_blocks\["exp_(\d{3})"\]\.value$')
_QUAT_PATH = re.compile(r'^pose\.bones\["(root|jaw)"\]\.rotation_quaternion$')


def take_name_for(audio_path: str) -> str:
    """`<audio stem>_take<N>` with N one more than the highest existing take of that stem."""
    stem = Path(audio_path).stem or "take"
    pattern = re.compile(re.escape(stem) + r"_take(\d+)$")
    numbers = [0]
    for action in bpy.data.actions:
        match = pattern.match(str(action.get(TAKE_PROP, "")))
        if match:
            numbers.append(int(match.group(1)))
    return f"{stem}_take{max(numbers) + 1}"


def take_actions(name: str) -> tuple[bpy.types.Action | None, bpy.types.Action | None]:
    """(bone action, shape action) of the take called `name`."""
    bones = shapes = None
    for action in bpy.data.actions:
        if action.get(TAKE_PROP) == name:
            if action.get(ROLE_PROP) == "bones":
                bones = action
            elif action.get(ROLE_PROP) == "shapes":
                shapes = action
    return bones, shapes


def take_names() -> list[str]:
    return sorted({str(a[TAKE_PROP]) for a in bpy.data.actions if TAKE_PROP in a and a.get(ROLE_PROP) == "bones"})


# ---- character takes (keyed by scene/retarget.py) ----
CHARACTER_PROP = "flametalk_character"  # custom property on a character take's actions: the mesh object's name
CHARACTER_ROLES = ("character_shapes", "character_bones", "character_object")


def character_take_names() -> list[str]:
    return sorted({str(a[TAKE_PROP]) for a in bpy.data.actions
                   if TAKE_PROP in a and a.get(ROLE_PROP) == "character_shapes"})


def character_take_actions(name: str) -> dict[str, bpy.types.Action]:
    """{role: action} of the character take `name`."""
    return {str(a[ROLE_PROP]): a for a in bpy.data.actions
            if a.get(TAKE_PROP) == name and a.get(ROLE_PROP) in CHARACTER_ROLES}


def _uses(owner: bpy.types.ID | None, action: bpy.types.Action) -> bool:
    adt = getattr(owner, "animation_data", None)
    if adt is None:
        return False
    return adt.action == action or any(s.action == action for t in adt.nla_tracks for s in t.strips)


def character_take_object(name: str) -> bpy.types.Object | None:
    """The mesh a character take belongs to: the object named on its actions, else a mesh whose shape keys use
    the take's shape action (active or in the NLA); None when neither exists (the mesh was deleted)."""
    shapes = character_take_actions(name).get("character_shapes")
    if shapes is None:
        return None
    obj = bpy.data.objects.get(str(shapes.get(CHARACTER_PROP, "")))
    if obj is not None and obj.type == "MESH" and obj.data.shape_keys is not None:
        return obj
    for obj in bpy.data.objects:
        if obj.type == "MESH" and _uses(obj.data.shape_keys, shapes):
            return obj
    return None


def active_character_take(obj: bpy.types.Object) -> str | None:
    """The character take active on `obj`'s shape keys (else the one in its topmost NLA track), or None."""
    key = obj.data.shape_keys if obj.type == "MESH" else None
    adt = getattr(key, "animation_data", None)
    if adt is None:
        return None
    candidates = [adt.action] + [s.action for t in reversed(adt.nla_tracks) for s in t.strips]
    for action in candidates:
        if action is not None and action.get(ROLE_PROP) == "character_shapes" and TAKE_PROP in action:
            return str(action[TAKE_PROP])
    return None


def take_kind(name: str) -> str | None:
    """"flame" (a FLAME head's take), "character" (a character take) or None (no take of that name)."""
    if any(a.get(TAKE_PROP) == name and a.get(ROLE_PROP) == "bones" for a in bpy.data.actions):
        return "flame"
    return "character" if "character_shapes" in character_take_actions(name) else None


def all_takes() -> list[tuple[str, str]]:
    """Every take in the file as (name, kind), kind "flame" or "character", sorted by name (the panel's list)."""
    found = [(n, "flame") for n in take_names()] + [(n, "character") for n in character_take_names()]
    return sorted(found)


# ---- sound ----
def sound_strip_path(strip: bpy.types.Strip, temp_dir: str | None = None) -> str:
    """A file path for the strip's sound: its file, or the packed data written to `temp_dir`."""
    sound = getattr(strip, "sound", None)
    if sound is None:
        raise ValueError(f"strip '{strip.name}' is not a sound strip")
    if sound.packed_file is not None:
        suffix = Path(sound.filepath).suffix or ".wav"
        folder = temp_dir or tempfile.mkdtemp(prefix="flametalk_")
        path = str(Path(folder) / f"packed_sound{suffix}")
        with open(path, "wb") as handle:
            handle.write(sound.packed_file.data)
        return path
    return bpy.path.abspath(sound.filepath, library=sound.library)


def find_sound_strip(scene: bpy.types.Scene, path: str, frame: int) -> bpy.types.Strip | None:
    target = os.path.normcase(paths.absolute(path))
    for strip in compat.all_strips(scene.sequence_editor):
        sound = getattr(strip, "sound", None)
        if sound is None or int(strip.frame_start) != int(frame):
            continue
        if os.path.normcase(paths.absolute(bpy.path.abspath(sound.filepath))) == target:
            return strip
    return None


def _free_channel(scene: bpy.types.Scene, new: bpy.types.Strip) -> int:
    first, last = new.frame_final_start, new.frame_final_end
    busy = {s.channel for s in compat.all_strips(scene.sequence_editor)
            if s != new and s.frame_final_start < last and s.frame_final_end > first}
    channel = 1
    while channel in busy:
        channel += 1
    return channel


def add_sound_strip(scene: bpy.types.Scene, path: str, frame: int, name: str) -> tuple[bpy.types.Strip, bool]:
    """The sound strip for `path` starting at `frame`: an existing one, or a new one on the lowest free channel.
    Returns (strip, created)."""
    existing = find_sound_strip(scene, path, frame)
    if existing is not None:
        return existing, False
    editor = scene.sequence_editor_create()
    strips = compat.sequencer_strips(editor)
    top = max((s.channel for s in compat.all_strips(editor)), default=0)
    strip = strips.new_sound(name, path, channel=min(top + 1, 128), frame_start=int(frame))
    channel = _free_channel(scene, strip)
    if channel < strip.channel:
        strip.channel = channel
    return strip, True


def remove_strip(scene: bpy.types.Scene, strip: bpy.types.Strip) -> None:
    """Remove a strip this add-on made, and its sound datablock when nothing else uses it."""
    editor = scene.sequence_editor
    if editor is None:
        return
    sound = getattr(strip, "sound", None)
    compat.sequencer_strips(editor).remove(strip)
    if sound is not None and sound.users == 0:
        bpy.data.sounds.remove(sound)


# ---- timeline ----
def extend_range(scene: bpy.types.Scene, first: float, last: float) -> None:
    """Grow the scene's frame range (never shrink it) to cover [first, last] (whole frames)."""
    scene.frame_start = min(scene.frame_start, int(np.floor(first)))
    scene.frame_end = max(scene.frame_end, int(np.ceil(last - 1e-6)))


def fit_range(scene: bpy.types.Scene, first: float, last: float) -> None:
    scene.frame_start = int(np.floor(first))
    scene.frame_end = max(scene.frame_start, int(np.ceil(last - 1e-6)))


def push_take_to_nla(rig: FlameRig, bone_action: bpy.types.Action, shape_action: bpy.types.Action,
                     start: int, name: str) -> None:
    compat.push_to_nla(rig.armature, bone_action, start, name)
    compat.push_to_nla(rig.key, shape_action, start, name)


# ---- reading animation back ----
def _partner(action: bpy.types.Action) -> bpy.types.Action | None:
    name, role = action.get(TAKE_PROP), action.get(ROLE_PROP)
    if name is None:
        return None
    bones, shapes = take_actions(str(name))
    return shapes if role == "bones" else bones if role == "shapes" else None


def sample_action_motion(action: bpy.types.Action, frames: np.ndarray) -> np.ndarray:
    """(len(frames), 106) motion from an action (and its take partner, if it is half of a take).

    Expression values come from `key_blocks["exp_NNN"].value` curves, rotations from the root/jaw bones'
    `rotation_quaternion` curves (F-curves are evaluated directly; the scene is not touched). Channels without a
    curve are at rest (0 / identity).
    """
    actions = [action] + [a for a in (_partner(action),) if a is not None]
    count = len(frames)
    expr = np.zeros((count, MOTION_DIM - 6))
    quats = {"root": np.tile([1.0, 0.0, 0.0, 0.0], (count, 1)), "jaw": np.tile([1.0, 0.0, 0.0, 0.0], (count, 1))}
    found = 0
    for act in actions:
        for fcurve in compat.iter_action_fcurves(act):
            path = fcurve.data_path
            match = _EXPR_PATH.match(path)
            if match and int(match.group(1)) < expr.shape[1]:
                expr[:, int(match.group(1))] = [fcurve.evaluate(float(f)) for f in frames]
                found += 1
                continue
            match = _QUAT_PATH.match(path)
            if match and 0 <= fcurve.array_index < 4:
                quats[match.group(1)][:, fcurve.array_index] = [fcurve.evaluate(float(f)) for f in frames]
                found += 1
    if found == 0:
        raise ValueError(f"action '{action.name}' has no FLAME curves (exp_NNN shape keys or root/jaw "
                         "quaternions); pick an action of a FLAME head")
    return motion_from_channels(expr, quats["root"], quats["jaw"])

