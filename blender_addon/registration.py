"""Register/unregister the add-on's classes. Other modules extend CLASSES (order = registration order)."""

from __future__ import annotations

import bpy

from . import operators_assets, operators_runtime, panel, properties
from .operators_export import FLAMETALK_OT_export_fbx, FLAMETALK_OT_export_gltf
from .operators_generate import FLAMETALK_OT_cancel, FLAMETALK_OT_generate, FLAMETALK_OT_use_take, cancel_on_load
from .operators_rig import FLAMETALK_OT_build_head
from .preferences import FLAMETALK_AddonPreferences

CLASSES: list[type] = [
    FLAMETALK_AddonPreferences,
    properties.FLAMETALK_PG_settings,
    properties.FLAMETALK_PG_state,
    FLAMETALK_OT_build_head,
    FLAMETALK_OT_generate,
    FLAMETALK_OT_cancel,
    FLAMETALK_OT_use_take,
    FLAMETALK_OT_export_fbx,
    FLAMETALK_OT_export_gltf,
    *panel.CLASSES,
    *operators_runtime.CLASSES,  # worker runtime set-up (packaging)
    *operators_assets.CLASSES,  # model-file download
]


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()
    operators_runtime.register_hooks()
    operators_assets.register_hooks()
    if cancel_on_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(cancel_on_load)


def unregister() -> None:
    from .worker_client import stop_all

    if cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(cancel_on_load)
    stop_all()
    operators_runtime.unregister_hooks()
    operators_assets.unregister_hooks()
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
