"""Register/unregister the add-on's classes. Other modules extend CLASSES (order = registration order)."""

from __future__ import annotations

import bpy

from .operators_rig import FLAMETALK_OT_build_head

CLASSES: list[type] = [
    FLAMETALK_OT_build_head,
]


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
