"""What the two halves agree on: units, the motion layout, the worker protocol's version and the cache-folder rule.

Defined once here. `flametalk` imports it directly; the Blender add-on gets this folder as its `flame` package
(a copy made by build.py in the zip, the source folder itself in a developer checkout), so neither half repeats a
number of the other. Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SAMPLE_RATE = 16_000  # Hz, what the audio encoder reads
MOTION_FPS = 25  # motion frames per second
WINDOW_FRAMES = 100  # frames generated per autoregressive window (4 s)
WINDOW_SAMPLES = WINDOW_FRAMES * SAMPLE_RATE // MOTION_FPS  # 64,000 samples of 16 kHz audio per window
STYLE_FRAMES = 50  # a style clip is 2 s of motion

MOTION_DIM = 106  # 100 expression + 3 head (global) rotation + 3 jaw rotation, axis-angle in radians
EXPR = slice(0, 100)
HEAD_ROT = slice(100, 103)
JAW_ROT = slice(103, 106)

PROTOCOL_VERSION = 1  # the worker's JSON-lines protocol; bump on any incompatible change

CACHE_ENV = "FLAMETALK_CACHE"
CHECKPOINT_SUBDIR = "artalk"  # <cache>/artalk holds ARTalk_wav2vec.pt + config.json
STYLE_SUBDIR = "style_motion"  # <checkpoint folder>/style_motion/<name>.pt: the release's style clips


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The asset cache folder (not created here): `override`, else $FLAMETALK_CACHE, else per platform
    Linux/other $XDG_CACHE_HOME/flametalk (if absolute) or ~/.cache/flametalk, macOS ~/Library/Caches/flametalk,
    Windows %LOCALAPPDATA%\\flametalk\\cache."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "flametalk" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "flametalk"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "flametalk"
