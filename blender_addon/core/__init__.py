"""The add-on's bpy-free pieces (numpy and the standard library only; tested without Blender): animator controls,
frame-rate arithmetic, asset paths, style channels read back from a rig, and atomic output staging.

May import: `..flame` (the shared FLAME/motion package). Never bpy, never another layer of the add-on.
"""
