"""FlameTalk Blender add-on: speech-driven FLAME facial animation.

Kept thin on purpose: importing the package must not import bpy-heavy modules (the pure-numpy `flame`
sub-package is also used outside Blender) and never imports torch. Registration lives in registration.py.
"""


def register() -> None:
    from . import registration

    registration.register()


def unregister() -> None:
    from . import registration

    registration.unregister()
