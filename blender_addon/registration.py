"""Register/unregister the add-on: every `ui` module's CLASSES in one loop (the order below, each module's own
order within), unregistered in reverse; then the scene properties and the load_pre handler."""

from __future__ import annotations

import bpy

from .ui import assets, character, export, generate, live, panel, preferences, properties, rig, runtime
from .worker import client as worker_client

UI_MODULES = (preferences, properties, rig, generate, live, character, export, panel, runtime, assets)
CLASSES: tuple[type, ...] = tuple(cls for module in UI_MODULES for cls in module.CLASSES)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()
    character.register_properties()
    if generate.cancel_on_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(generate.cancel_on_load)


def unregister() -> None:
    if generate.cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(generate.cancel_on_load)
    worker_client.stop_all()
    properties.unregister_properties()
    character.unregister_properties()
    for cls in reversed(CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
