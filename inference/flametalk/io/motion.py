"""Motion files: `.npz` with `motion` float32 (T, 106), `fps` (0-d float64, frames per second) and `provenance`
(0-d unicode array holding one JSON object: checkpoint sha256, style, settings, flametalk version, ...).

Nothing in the file is a pickled object: it loads with `np.load(path, allow_pickle=False)`. Reading and the rules
(dtype, shape, at most MAX_FRAMES frames, fps 1..1000, sizes checked before allocating) live in flame/motionfile.py,
shared with the Blender add-on, so both halves accept and refuse the same files with the same one-line messages.
Writes are atomic: the data goes to a temporary file in the destination folder, which then replaces the
destination with `os.replace`, so an existing file is either left untouched or fully replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FlameTalkError
from ..flame import motionfile
from ..flame.contract import MOTION_FPS
from ..flame.motionfile import FPS_KEY, MOTION_KEY, PROVENANCE_KEY, MotionFileError

DEFAULT_FILE_MODE = 0o644  # permissions of a newly written motion file (POSIX)

__all__ = ["FPS_KEY", "MOTION_KEY", "PROVENANCE_KEY", "check_motion", "load_motion", "save_motion"]


def check_motion(motion: Any, what: str = "motion") -> np.ndarray:
    """Validate a floating (T, 106) array, 1 <= T <= MAX_FRAMES, only finite values; return it as float32.
    The rules are the Blender add-on's too (flame/motionfile.py)."""
    try:
        return motionfile.check_motion(motion, what)
    except MotionFileError as err:
        raise FlameTalkError(str(err)) from None


def _check_fps(fps: Any, what: str) -> float:
    try:
        return motionfile.check_fps(fps, what)
    except MotionFileError as err:
        raise FlameTalkError(str(err)) from None


def save_motion(
    path: str | os.PathLike[str],
    motion: np.ndarray,
    fps: float = MOTION_FPS,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write motion (T, 106) to `path` (an .npz; the name is used as given) atomically; returns the path."""
    dest = Path(path)
    arr = check_motion(motion)
    fps_value = _check_fps(fps, "save_motion")
    try:
        prov_json = json.dumps(dict(provenance or {}), sort_keys=True, allow_nan=False, default=str)
    except (TypeError, ValueError) as err:
        raise FlameTalkError(f"provenance cannot be stored as JSON ({err})") from err
    folder = dest.parent if str(dest.parent) else Path()
    if not folder.is_dir():
        raise FlameTalkError(f"cannot write '{dest}': folder '{folder}' does not exist; create it or choose --out")

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise FlameTalkError(f"cannot write '{dest}' ({err.strerror}); check the folder's permissions") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                **{
                    MOTION_KEY: np.ascontiguousarray(arr),
                    FPS_KEY: np.asarray(fps_value, dtype=np.float64),
                    PROVENANCE_KEY: np.asarray(prov_json, dtype=np.str_),
                },
            )
            fh.flush()
            os.fsync(fh.fileno())
        if os.name != "nt":  # mkstemp creates 0600: keep the replaced file's mode, else rw-r--r--
            Path(tmp_name).chmod(dest.stat().st_mode & 0o777 if dest.exists() else DEFAULT_FILE_MODE)
        Path(tmp_name).replace(dest)
    except BaseException as err:
        with contextlib.suppress(OSError):
            Path(tmp_name).unlink()
        if isinstance(err, OSError):
            reason = err.strerror or err
            raise FlameTalkError(f"cannot write '{dest}' ({reason}); check disk space and permissions") from err
        raise
    return dest


def load_motion(path: str | os.PathLike[str]) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Read a motion `.npz` -> (motion float32 (T, 106), fps, provenance dict). Validates everything before
    allocating (flame/motionfile.py: the same reader and rules as the Blender add-on); FlameTalkError otherwise."""
    try:
        read = motionfile.read_motion(path)
    except MotionFileError as err:
        raise FlameTalkError(str(err)) from None
    return read.motion, read.fps, read.provenance
