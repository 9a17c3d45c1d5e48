"""The torch side, seen from Blender: the client of the `flametalk.commands.worker` process and the managed runtime (the
private Python environment it runs in). Standard library only, no bpy at import time.

May import: `..core`, `..flame`.
"""
