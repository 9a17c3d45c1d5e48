"""`python -m blender_addon.cli ...`: run main.main() and exit with its status."""

from __future__ import annotations

import os
import sys

from .main import main


def _exit(code: int) -> None:
    """bpy 4.2's module crashes while the interpreter shuts down after a glTF export (exit 139 after everything
    was written). There, skip the teardown once the outputs are closed; later versions exit normally."""
    try:
        import bpy
    except ImportError:  # no Blender module: main() has said so in one line
        sys.exit(code)
    if bpy.app.version < (4, 4, 0):
        from ..worker import client

        client.stop_all()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
