"""The files the two halves exchange for retargeting, defined once (pure numpy, no pickles):

- the character file (.npz): a mesh with shape keys as plain arrays, written by the add-on (scene/character.py)
  and read by the worker (flametalk.retarget.Character.load);
    rest (N, 3) float64 basis coordinates in the object's frame and units; triangles (F, 3) int64;
    names (K,) str shape key names (no basis); deltas (K, N, 3) float32 key minus basis;
    ranges (K, 2) float64 slider (min, max); optional face_weights (N,) float64 (a vertex group, 0..1),
    jaw_pivot (3,) and jaw_axes (3, 3) (the jaw bone's head and rest orientation, columns = bone x, y, z, in the
    mesh object's frame); name () str.
- the fit file (.npz): the FLAME head <-> character correspondence (flametalk.retarget.Fit), FIT_FIELDS.
- the retarget result (.npz), written by the worker's `retarget` command and keyed by the add-on
  (scene/retarget.py): weights (T, K) float32 within each key's range; names (K,) str; head_rotation,
  jaw_rotation (T, 3) float32 axis-angle in the character's object frame; residual_mm (T,) float32;
  report () str, JSON: {"fit": {"rms_mm", "max_mm", "vertices_used"}, "seconds": {...}, ...}.

Every reader checks keys, dtypes, shapes and finiteness and raises CharacterFileError (one line) on anything else;
writers go through a temporary in the same folder, renamed into place (a reader never sees half a file).
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAX_KEYS = 1_000  # far more than any facial rig
MAX_VERTS = 20_000_000
MAX_FRAMES = 10_000_000

FIT_FIELDS = ("scale", "rotation", "translation", "shape", "flame_vertices", "tri", "bary", "offset", "mm_per_unit",
              "rms_mm", "max_mm", "n_used")
FIT_SCALARS = ("scale", "mm_per_unit", "rms_mm", "max_mm")


class CharacterFileError(ValueError):
    """A character, fit or retarget-result file that is missing, damaged or of the wrong kind (one line)."""


def write_npz_atomic(path: str | os.PathLike[str], arrays: dict[str, Any]) -> str:
    """np.savez to a temporary beside `path`, renamed into place; returns the path."""
    final = Path(path).absolute()
    temp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})
        temp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return os.fspath(path)


def _load(path: str | os.PathLike[str], kind: str) -> dict[str, np.ndarray]:
    label = Path(path).name
    if not Path(path).is_file():
        raise CharacterFileError(f"{kind} file not found: {os.fspath(path)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise CharacterFileError(f"{label} is not a {kind} file ({first})") from None


def _need(data: dict[str, np.ndarray], keys: tuple[str, ...], label: str, kind: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise CharacterFileError(f"{label} is not a {kind} file: '{missing[0]}' is missing")


def _numeric(arr: np.ndarray, label: str, what: str, integer: bool = False) -> np.ndarray:
    kinds = "iu" if integer else "iuf"
    if arr.dtype.kind not in kinds:
        raise CharacterFileError(f"{label}: '{what}' must be {'integer' if integer else 'numeric'}, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise CharacterFileError(f"{label}: '{what}' contains NaN or infinity")
    return arr


def _names(arr: np.ndarray, label: str) -> list[str]:
    if arr.dtype.kind not in "US" or arr.ndim != 1:
        raise CharacterFileError(f"{label}: 'names' must be a list of strings")
    return [str(x) for x in arr]


# ---- character ----
def write_character(path: str | os.PathLike[str], rest: np.ndarray, triangles: np.ndarray, names: list[str],
                    deltas: np.ndarray, ranges: np.ndarray | None = None, face_weights: np.ndarray | None = None,
                    jaw_pivot: np.ndarray | None = None, jaw_axes: np.ndarray | None = None,
                    name: str = "character") -> str:
    arrays: dict[str, Any] = {
        "rest": np.asarray(rest, np.float64), "triangles": np.asarray(triangles, np.int64),
        "names": np.array([str(n) for n in names], dtype=str), "deltas": np.asarray(deltas, np.float32),
        "ranges": np.tile([0.0, 1.0], (len(names), 1)) if ranges is None else np.asarray(ranges, np.float64),
        "name": np.array(str(name)),
    }
    for key, value in (("face_weights", face_weights), ("jaw_pivot", jaw_pivot), ("jaw_axes", jaw_axes)):
        if value is not None:
            arrays[key] = np.asarray(value, np.float64)
    return write_npz_atomic(path, arrays)


def read_character(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The character file's arrays as keyword arguments of flametalk.retarget.Character (structure checked here;
    Character checks the values)."""
    label = Path(path).name
    data = _load(path, "character")
    _need(data, ("rest", "triangles", "names", "deltas"), label, "character")
    rest = _numeric(data["rest"], label, "rest")
    tris = _numeric(data["triangles"], label, "triangles", integer=True)
    names = _names(data["names"], label)
    deltas = _numeric(data["deltas"], label, "deltas")
    if rest.ndim != 2 or rest.shape[1] != 3 or not 0 < rest.shape[0] <= MAX_VERTS:
        raise CharacterFileError(f"{label}: 'rest' must be (N, 3) vertices, got {rest.shape}")
    if len(names) > MAX_KEYS:
        raise CharacterFileError(f"{label}: {len(names)} shape keys; at most {MAX_KEYS} are supported")
    if deltas.shape != (len(names), rest.shape[0], 3):
        raise CharacterFileError(f"{label}: 'deltas' has shape {deltas.shape}, expected "
                                 f"({len(names)}, {rest.shape[0]}, 3)")
    out: dict[str, Any] = {"rest": rest, "triangles": tris, "names": names, "deltas": deltas,
                           "name": str(data["name"]) if "name" in data else label}
    shapes = {"ranges": (len(names), 2), "face_weights": (rest.shape[0],), "jaw_pivot": (3,), "jaw_axes": (3, 3)}
    for key, shape in shapes.items():
        if key in data:
            arr = _numeric(data[key], label, key)
            if arr.shape != shape:
                raise CharacterFileError(f"{label}: '{key}' has shape {arr.shape}, expected {shape}")
            out[key] = arr
        else:
            out[key] = None
    return out


# ---- fit ----
def write_fit(path: str | os.PathLike[str], fields: dict[str, Any]) -> str:
    _need(fields, FIT_FIELDS, Path(path).name, "fit")
    return write_npz_atomic(path, {k: np.asarray(fields[k]) for k in FIT_FIELDS})


def check_fit(data: dict[str, Any], label: str) -> dict[str, Any]:
    """Fit arrays (a file's or a stored fit's) checked -> keyword arguments of flametalk.retarget.Fit."""
    _need(data, FIT_FIELDS, label, "fit")
    arrs = {k: np.asarray(data[k]) for k in FIT_FIELDS}
    for key, arr in arrs.items():
        _numeric(arr, label, key, integer=key in ("tri", "n_used"))
    n = arrs["tri"].shape[0] if arrs["tri"].ndim == 1 else -1
    if (n < 0 or arrs["bary"].shape != (n, 3) or arrs["offset"].shape != (n,) or arrs["rotation"].shape != (3, 3)
            or arrs["translation"].shape != (3,) or arrs["flame_vertices"].ndim != 2
            or arrs["flame_vertices"].shape[1:] != (3,) or arrs["shape"].ndim != 1
            or any(arrs[k].size != 1 for k in (*FIT_SCALARS, "n_used"))):
        raise CharacterFileError(f"{label} is damaged: inconsistent array sizes")
    out: dict[str, Any] = {}
    for key, arr in arrs.items():
        if key in FIT_SCALARS:
            out[key] = float(arr.reshape(()))
        elif key == "n_used":
            out[key] = int(arr.reshape(()))
        else:
            out[key] = arr
    out["tri"] = out["tri"].astype(np.int32)
    out["bary"] = out["bary"].astype(np.float32)
    out["offset"] = out["offset"].astype(np.float32)
    out["flame_vertices"] = out["flame_vertices"].astype(np.float32)
    return out


def read_fit(path: str | os.PathLike[str]) -> dict[str, Any]:
    return check_fit(_load(path, "fit"), Path(path).name)


# ---- retarget result ----
def write_result(path: str | os.PathLike[str], weights: np.ndarray, names: list[str], head_rotation: np.ndarray,
                 jaw_rotation: np.ndarray, residual_mm: np.ndarray, report: dict[str, Any]) -> str:
    return write_npz_atomic(path, {
        "weights": np.asarray(weights, np.float32), "names": np.array([str(n) for n in names], dtype=str),
        "head_rotation": np.asarray(head_rotation, np.float32), "jaw_rotation": np.asarray(jaw_rotation, np.float32),
        "residual_mm": np.asarray(residual_mm, np.float32), "report": np.array(json.dumps(report))})


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    label = Path(path).name
    data = _load(path, "retarget result")
    _need(data, ("weights", "names", "head_rotation", "jaw_rotation", "residual_mm", "report"), label,
          "retarget result")
    weights = _numeric(data["weights"], label, "weights")
    names = _names(data["names"], label)
    if weights.ndim != 2 or weights.shape[1] != len(names) or not 0 < weights.shape[0] <= MAX_FRAMES:
        raise CharacterFileError(f"{label}: 'weights' has shape {weights.shape}, expected (frames, {len(names)})")
    frames = weights.shape[0]
    out: dict[str, Any] = {"weights": weights, "names": names}
    for key, shape in (("head_rotation", (frames, 3)), ("jaw_rotation", (frames, 3)), ("residual_mm", (frames,))):
        arr = _numeric(data[key], label, key)
        if arr.shape != shape:
            raise CharacterFileError(f"{label}: '{key}' has shape {arr.shape}, expected {shape}")
        out[key] = arr
    try:
        report = json.loads(str(data["report"]))
    except ValueError:
        raise CharacterFileError(f"{label}: 'report' is not JSON") from None
    if not isinstance(report, dict):
        raise CharacterFileError(f"{label}: 'report' is not a JSON object")
    out["report"] = report
    return out
