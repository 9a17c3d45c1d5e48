"""FlameTalk Blender add-on: speech-driven FLAME facial animation.

The folders follow the data: audio -> `worker/` (the torch process and its runtime) -> a motion file -> `scene/`
(rig, keys, takes, export, the take job) -> `ui/` (operators, panels, preferences) or `cli/` (headless). `core/`
holds the numpy/stdlib-only pieces every layer uses (controls, timing, paths, style channels, output staging).

`flame` is the pure-numpy FLAME package shared with `flametalk` (its source of truth is
inference/flametalk/flame/): build.py copies it into the extension zip; in a developer checkout it is loaded from
that folder by `_load_flame()` below. Importing this package must not import bpy-heavy modules and never imports
torch. Registration lives in registration.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_flame() -> None:
    """Make `<this package>.flame` importable: the copy beside this file (a built extension), else the source folder
    ../inference/flametalk/flame of a developer checkout, registered under this package's name."""
    name = f"{__name__}.flame"
    here = Path(__file__).parent
    if name in sys.modules or (here / "flame" / "__init__.py").is_file():
        return
    source = Path(__file__).resolve().parent.parent / "inference" / "flametalk" / "flame"
    if not (source / "__init__.py").is_file():
        raise ImportError(f"FlameTalk: the add-on's flame package is missing: neither {here / 'flame'} (an extension "
                          f"built by build.py) nor {source} (a developer checkout) exists; install the built zip")
    spec = importlib.util.spec_from_file_location(name, source / "__init__.py",
                                                  submodule_search_locations=[str(source)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its own relative imports look it up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    globals()["flame"] = module


_load_flame()


def register() -> None:
    from . import registration

    registration.register()


def unregister() -> None:
    from . import registration

    registration.unregister()
