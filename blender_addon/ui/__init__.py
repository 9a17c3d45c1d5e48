"""Blender's user interface: properties, preferences, the sidebar panel and one operator module per feature
(generate, rig, export, assets, runtime). Every module lists its classes in `CLASSES`, in registration order;
registration.py registers them all.

May import: bpy, `..scene`, `..worker`, `..core`, `..flame`. Never `..cli`.
"""
