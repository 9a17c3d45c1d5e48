"""Everything that writes Blender data: the FLAME rig, keys from a motion, takes, the sound strip, export, and the
take job (worker -> motion file -> keys) behind both the Generate operator and the command line.

May import: bpy, `..core`, `..worker`, `..flame`. Never `..ui` or `..cli`.
"""
