"""Headless command line (`python -m blender_addon.cli animate|batch ...`, see main.py), run with a Python that
has the bpy module.

main.py parses and dispatches; animate.py makes one take, batch.py many with one warm worker; take.py is the take
pipeline both share; retarget.py keys motion onto a character with shape keys (`retarget`, and `animate`/`batch`
with --character); interrupts.py turns SIGINT/SIGTERM into a clean stop.

May import: `..scene`, `..worker`, `..core`, `..flame`. Never `..ui`.
"""
