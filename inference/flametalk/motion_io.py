"""Motion files: `.npz` with `motion` float32 (T, 106), `fps` (0-d float64, frames per second) and `provenance`
(0-d unicode array holding one JSON object: checkpoint sha256, style, settings, flametalk version, ...).

Nothing in the file is a pickled object: it loads with `np.load(path, allow_pickle=False)`.
Writes are atomic: the data goes to a temporary file in the destination folder, which then replaces the
destination with `os.replace`, so an existing file is either left untouched or fully replaced.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .constants import FPS, MOTION_DIM
from .errors import FlameTalkError

MOTION_KEY = "motion"
FPS_KEY = "fps"
PROVENANCE_KEY = "provenance"
DEFAULT_FILE_MODE = 0o644  # permissions of a newly written motion file (POSIX)

__all__ = ["FPS_KEY", "MOTION_KEY", "PROVENANCE_KEY", "check_motion", "load_motion", "save_motion"]


def check_motion(motion: Any, what: str = "motion") -> np.ndarray:
    """Validate a (T, 106) floating array with T >= 1 and only finite values; return it as float32."""
    arr = np.asarray(motion)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.floating):
        raise FlameTalkError(f"{what} must hold floating-point values, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != MOTION_DIM:
        raise FlameTalkError(
            f"{what} must have shape (frames, {MOTION_DIM}) (100 expression + 3 head + 3 jaw), got {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise FlameTalkError(f"{what} has no frames")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise FlameTalkError(f"{what} contains NaN or infinite values in {bad} of {arr.shape[0]} frames")
    return arr


def _check_fps(fps: Any, what: str) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise FlameTalkError(f"{what}: fps must be a number, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise FlameTalkError(f"{what}: fps must be a positive number, got {value}")
    return value


def save_motion(
    path: str | os.PathLike[str],
    motion: np.ndarray,
    fps: float = FPS,
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
    folder = dest.parent if str(dest.parent) else Path(".")
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
            os.chmod(tmp_name, dest.stat().st_mode & 0o777 if dest.exists() else DEFAULT_FILE_MODE)
        os.replace(tmp_name, dest)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(err, OSError):
            reason = err.strerror or err
            raise FlameTalkError(f"cannot write '{dest}' ({reason}); check disk space and permissions") from err
        raise
    return dest


def load_motion(path: str | os.PathLike[str]) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Read a motion `.npz` -> (motion float32 (T, 106), fps, provenance dict). Validates shape, dtype and values."""
    p = Path(path)
    what = f"motion file '{p}'"
    if not p.is_file():
        raise FlameTalkError(f"{what} does not exist; check the path")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(6)
    except OSError as err:
        raise FlameTalkError(f"{what} cannot be read ({err.strerror}); check its permissions") from err
    if magic == b"\x93NUMPY":
        raise FlameTalkError(f"{what} is a single .npy array, not an .npz with a '{MOTION_KEY}' array")
    if not magic.startswith(b"PK"):
        raise FlameTalkError(f"{what} is not a valid .npz motion file (not a zip archive); regenerate it")
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = set(data.files)
            if MOTION_KEY not in keys:
                raise FlameTalkError(f"{what} has no '{MOTION_KEY}' array (found: {', '.join(sorted(keys)) or 'none'})")
            motion = data[MOTION_KEY]
            fps_raw = data[FPS_KEY] if FPS_KEY in keys else None
            prov_raw = data[PROVENANCE_KEY] if PROVENANCE_KEY in keys else None
    except FlameTalkError:
        raise
    except ValueError as err:
        if "pickle" in str(err):
            raise FlameTalkError(f"{what} contains pickled objects, which are not loaded for safety") from err
        raise FlameTalkError(f"{what} is not a valid .npz motion file ({err})") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise FlameTalkError(f"{what} is not a valid .npz motion file ({err}); regenerate it") from err

    motion = check_motion(motion, what)
    if fps_raw is None:
        raise FlameTalkError(f"{what} has no '{FPS_KEY}' value; regenerate it with `python -m flametalk generate`")
    if np.size(fps_raw) != 1:
        raise FlameTalkError(f"{what}: '{FPS_KEY}' must be one number, got shape {np.shape(fps_raw)}")
    fps = _check_fps(np.asarray(fps_raw).reshape(()).item(), what)
    provenance: dict[str, Any] = {}
    if prov_raw is not None:
        if np.size(prov_raw) != 1 or prov_raw.dtype.kind not in "US":
            raise FlameTalkError(f"{what}: '{PROVENANCE_KEY}' must be one JSON string")
        text = np.asarray(prov_raw).reshape(()).item()
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        try:
            provenance = json.loads(text) if text else {}
        except json.JSONDecodeError as err:
            raise FlameTalkError(f"{what}: '{PROVENANCE_KEY}' is not valid JSON ({err.msg})") from err
        if not isinstance(provenance, dict):
            raise FlameTalkError(f"{what}: '{PROVENANCE_KEY}' must be a JSON object")
    return motion, fps, provenance
