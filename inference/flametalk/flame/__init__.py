"""FLAME head model in pure numpy: a safe file reader, the forward pass, motion files and the contract both halves
share (contract.py). Synthetic files for tests live in flametalk/testing (not shipped with the add-on).

Imports only numpy and the standard library (torch optionally, lazily), and only relative imports, because the
same folder is also the Blender add-on's `blender_addon.flame` package (Blender's Python has no torch). The names
below load their module on first use (PEP 562), so `flame.contract` needs no numpy: the worker imports it before
it can tell a Python without numpy or torch what is missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .reader import (
        JOINT_NAMES,
        N_SHAPE,
        FlameFileError,
        FlameModel,
        load_flame,
        load_shape_coefficients,
        validate,
    )

_LAZY = {
    "MOTION_DIM": "contract",
    **dict.fromkeys(("FLAME_TO_BLENDER", "axis_angle_to_quaternion", "flame_to_blender", "forward", "forward_motion",
                     "motion_to_pose", "rodrigues"), "lbs"),
    **dict.fromkeys(("JOINT_NAMES", "N_SHAPE", "FlameFileError", "FlameModel", "load_flame",
                     "load_shape_coefficients", "validate"), "reader"),
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
