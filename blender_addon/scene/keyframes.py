"""Key ARTalk motion onto a FLAME rig, fast (F-curves filled with foreach_set, not keyframe_insert).

Motion: (T, 106) at `fps` (25 for ARTalk): 0:100 expression coefficients, 100:103 head (root) rotation and
103:106 jaw rotation, axis-angle in FLAME's frame. The rig's bones use FLAME's axes (see rig.py), so a rotation
becomes the bone's quaternion unchanged. Frame i goes to scene frame `start + i * scene_fps / fps` (fractional
when the scene is not at the motion's rate), with linear interpolation so in-between frames stay on the segment
between two motion frames.

Each take gets NEW actions (bones on the armature object, expression values on the head's Key), named by the
caller and kept with a fake user, so earlier takes survive and can be re-assigned with `assign_take`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import bpy
import numpy as np

from ..core.controls import simplify_indices
from ..flame import JOINT_NAMES, axis_angle_to_quaternion
from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT, MOTION_FPS
from ..flame.motionfile import MotionFileError as MotionFileError  # re-exported: the add-on catches it here
from ..flame.motionfile import check_fps, check_motion, check_scene_span, read_motion
from . import compat
from .rig import EXPR_KEY, SLIDER_LIMIT, FlameRig

TAKE_PROP = "flametalk_take"  # custom property on a take's actions: the take name
ROLE_PROP = "flametalk_role"  # "bones" or "shapes"


@dataclass
class Take:
    name: str
    bone_action: bpy.types.Action
    shape_action: bpy.types.Action
    frames: np.ndarray  # scene frame of every motion frame
    warnings: list[str] = field(default_factory=list)
    n_keys: int = 0  # keyframes written over all curves

    @property
    def frame_range(self) -> tuple[float, float]:
        return float(self.frames[0]), float(self.frames[-1])


def load_motion(path: str) -> tuple[np.ndarray, float]:
    """(motion (T, 106) float32, fps) from a motion .npz; raises MotionFileError (one line). The reader and its
    rules (keys, dtype, shape, frame and fps limits, sizes checked before allocating) are flametalk's own:
    flame/motionfile.py."""
    read = read_motion(path)
    return read.motion, read.fps


def validate_motion(motion: np.ndarray, fps: object = MOTION_FPS, name: str = "motion") -> tuple[np.ndarray, float]:
    """An in-memory motion and its fps checked by the motion-file rules -> (float32 (T, 106), fps)."""
    return check_motion(motion, name), check_fps(fps, name)


def check_scene_length(n_frames: int, motion_fps: float, scene: bpy.types.Scene, start_frame: float | None = None,
                       what: str = "the motion") -> float:
    """The scene frame of the last motion frame; MotionFileError if a take would end past Blender's last frame."""
    start = float(scene.frame_start if start_frame is None else start_frame)
    return check_scene_span(n_frames, motion_fps, scene_fps(scene), start, what)


def scene_fps(scene: bpy.types.Scene) -> float:
    return scene.render.fps / scene.render.fps_base


def motion_frames(count: int, motion_fps: float, fps: float, start: float) -> np.ndarray:
    return start + np.arange(count, dtype=np.float64) * (fps / motion_fps)


def continuous_quaternions(axis_angle: np.ndarray) -> np.ndarray:
    """(T, 4) quaternions with signs chosen so neighbours agree (component-wise interpolation then stays short)."""
    quats = axis_angle_to_quaternion(axis_angle)
    if len(quats) > 1:
        dots = np.sum(quats[1:] * quats[:-1], axis=1)
        signs = np.cumprod(np.where(dots < 0, -1.0, 1.0))
        quats[1:] *= signs[:, None]
    return quats


def fill_fcurve(fcurves: object, data_path: str, index: int, group: str, frames: np.ndarray, values: np.ndarray) -> int:
    """One F-curve with linear keys at `frames`; returns the number of keys."""
    fcurve = compat.new_fcurve(fcurves, data_path, index, group)
    points = fcurve.keyframe_points
    points.add(len(frames))
    co = np.empty(2 * len(frames), dtype=np.float32)
    co[0::2], co[1::2] = frames, values
    points.foreach_set("co", co)
    points.foreach_set("handle_left", co)
    points.foreach_set("handle_right", co)
    points.foreach_set("interpolation", np.full(len(frames), compat.KEY_INTERPOLATION["LINEAR"], dtype=np.int32))
    fcurve.update()
    return len(frames)


def _new_action(name: str, role: str) -> bpy.types.Action:
    action = bpy.data.actions.new(name)
    action.use_fake_user = True  # a later take replaces it as active action; keep it for the user
    action[ROLE_PROP] = role
    return action


def _active_action(owner: bpy.types.ID) -> bpy.types.Action | None:
    return owner.animation_data.action if owner.animation_data else None


def assign_take(rig: FlameRig, bone_action: bpy.types.Action, shape_action: bpy.types.Action) -> None:
    """Make a take active on the rig (bones on the armature object, expression values on the Key)."""
    compat.assign_action(rig.armature, bone_action)
    compat.assign_action(rig.key, shape_action)


def write_take(
    rig: FlameRig,
    motion: np.ndarray,
    motion_fps: float = MOTION_FPS,
    name: str = "FlameTalk take",
    scene: bpy.types.Scene | None = None,
    start_frame: float | None = None,
    simplify: tuple[float, float] | None = None,
) -> Take:
    """Key `motion` into two new actions and make them active on the rig; returns the Take.

    simplify: None = a key on every motion frame; (expression tolerance, quaternion-component tolerance) = the
    fewest linear keys within those tolerances (core.controls.simplify_indices; a bone's 4 components share keys).
    """
    motion, motion_fps = validate_motion(motion, motion_fps)
    scene = scene or bpy.context.scene
    start = float(scene.frame_start if start_frame is None else start_frame)
    check_scene_length(len(motion), motion_fps, scene, start)
    frames = motion_frames(len(motion), motion_fps, scene_fps(scene), start)
    warnings: list[str] = []

    n_expr = min(rig.n_expr, EXPR.stop - EXPR.start)
    if rig.n_expr < EXPR.stop - EXPR.start:
        warnings.append(f"the FLAME model has {rig.n_expr} expression components; motion channels beyond are unused")
    expr = motion[:, EXPR][:, :n_expr].astype(np.float64)
    if np.any(np.abs(expr) > SLIDER_LIMIT):
        warnings.append(f"expression values beyond +-{SLIDER_LIMIT:g} were clipped (Blender's shape-key limit)")
        expr = np.clip(expr, -SLIDER_LIMIT, SLIDER_LIMIT)

    previous = [_active_action(owner) for owner in (rig.armature, rig.key)]
    bone_action = _new_action(name, "bones")
    name = bone_action.name  # Blender appends .001 etc. when the name is taken
    shape_action = _new_action(f"{name} shapes", "shapes")
    bone_action[TAKE_PROP] = shape_action[TAKE_PROP] = name
    n_keys = 0

    def kept(values: np.ndarray, tolerance: float) -> np.ndarray:
        return np.arange(len(frames)) if simplify is None else simplify_indices(frames, values, tolerance)

    try:
        bone_curves = compat.action_fcurves(bone_action, rig.armature)
        rotations = {"root": motion[:, HEAD_ROT], "jaw": motion[:, JAW_ROT]}
        for bone in JOINT_NAMES:
            path = f'pose.bones["{bone}"].rotation_quaternion'
            if bone in rotations:
                quats = continuous_quaternions(rotations[bone])
                keep = kept(quats, simplify[1] if simplify else 0.0)
                for index in range(4):
                    n_keys += fill_fcurve(bone_curves, path, index, bone, frames[keep], quats[keep, index])
            else:  # ARTalk keeps neck and eyes still: one rest key makes the take self-contained
                for index, value in enumerate((1.0, 0.0, 0.0, 0.0)):
                    n_keys += fill_fcurve(bone_curves, path, index, bone, frames[:1], np.array([value]))

        shape_curves = compat.action_fcurves(shape_action, rig.key)
        for e in range(n_expr):
            block = rig.key.key_blocks[EXPR_KEY.format(e)]
            block.slider_min, block.slider_max = -SLIDER_LIMIT, SLIDER_LIMIT  # a user may have narrowed them
            keep = kept(expr[:, e], simplify[0] if simplify else 0.0)
            n_keys += fill_fcurve(shape_curves, f'key_blocks["{block.name}"].value', 0, "Expression", frames[keep],
                            expr[keep, e])
    except BaseException:
        for action in (bone_action, shape_action):
            bpy.data.actions.remove(action)
        for owner, action in zip((rig.armature, rig.key), previous):
            if action is not None:
                compat.assign_action(owner, action)
        raise
    return Take(name, bone_action, shape_action, frames, warnings, n_keys)


def fit_scene_range(scene: bpy.types.Scene, take: Take) -> None:
    """Make the scene's frame range cover the take (whole frames)."""
    first, last = take.frame_range
    scene.frame_start = int(np.floor(first))
    scene.frame_end = max(scene.frame_start, int(np.ceil(last - 1e-6)))
