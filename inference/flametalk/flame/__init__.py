"""FLAME head model in pure numpy: a safe file reader, the forward pass, motion files and the contract both halves
share (contract.py). Synthetic files for tests live in flametalk/testing (not shipped with the add-on).

Imports only numpy and the standard library (torch optionally, lazily), and only relative imports, because the
same folder is also the Blender add-on's `blender_addon.flame` package (Blender's Python has no torch).
"""

from .contract import MOTION_DIM
from .lbs import (
    FLAME_TO_BLENDER,
    axis_angle_to_quaternion,
    flame_to_blender,
    forward,
    forward_motion,
    motion_to_pose,
    rodrigues,
)
from .reader import JOINT_NAMES, N_SHAPE, FlameFileError, FlameModel, load_flame, load_shape_coefficients, validate

__all__ = [
    "FLAME_TO_BLENDER",
    "JOINT_NAMES",
    "MOTION_DIM",
    "N_SHAPE",
    "FlameFileError",
    "FlameModel",
    "axis_angle_to_quaternion",
    "flame_to_blender",
    "forward",
    "forward_motion",
    "load_flame",
    "load_shape_coefficients",
    "motion_to_pose",
    "rodrigues",
    "validate",
]
