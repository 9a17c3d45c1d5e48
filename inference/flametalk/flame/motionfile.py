"""Motion files: the one reader and the one set of rules for `flametalk` and the Blender add-on.

A motion file is an `.npz` (a zip of `.npy` arrays, as `numpy.savez` writes it) with
- `motion`: floating-point (T, 106), 1 <= T <= MAX_FRAMES, finite values: 100 FLAME expression coefficients,
  head rotation, jaw rotation (axis-angle, radians);
- `fps`: one number, MIN_FPS..MAX_FPS (ARTalk writes 25);
- `provenance` (optional): one JSON object as a string, at most MAX_PROVENANCE_BYTES.

Nothing is unpickled and nothing is allocated from a declaration before it is checked: the file size, the zip
directory, each member's declared size and each array header's dtype and shape are checked first, so a 1-KB file
that declares a (10^9, 106) array fails at once with one line. In Blender the take must also end within the
scene's frame range (`check_scene_span`: Blender's last frame is MAX_SCENE_FRAME).

Imports only numpy and the standard library, and only relative imports (this folder is also `blender_addon.flame`).
"""

from __future__ import annotations

import ast
import json
import lzma
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .contract import MOTION_DIM

MOTION_KEY, FPS_KEY, PROVENANCE_KEY = "motion", "fps", "provenance"
MIN_FPS, MAX_FPS = 1.0, 1000.0
MAX_SCENE_FRAME = 1_048_574  # Blender's last frame (MAXFRAME): frame_end cannot go further
MAX_FRAMES = MAX_SCENE_FRAME  # motion frames per file: at the scene's own rate they fill Blender's whole range
MAX_PROVENANCE_BYTES = 1 << 20
MAX_ITEMSIZE = 8  # float16, float32 or float64
_MAX_HEADER = 10_000  # an .npy header is ~128 bytes; numpy's own cap for untrusted files
_MAX_DIRECTORY = 64 << 10  # the zip's central directory (numpy writes ~100 bytes per member)
_MAX_MEMBERS = 64
_MAX_FILE_BYTES = MAX_FRAMES * MOTION_DIM * MAX_ITEMSIZE + MAX_PROVENANCE_BYTES * 4 + (1 << 20)
_EOCD, _ZIP64_LOCATOR = b"PK\x05\x06", b"PK\x06\x07"
REGENERATE = "regenerate it with `python -m flametalk generate`"

__all__ = [
    "FPS_KEY",
    "MAX_FPS",
    "MAX_FRAMES",
    "MAX_SCENE_FRAME",
    "MIN_FPS",
    "MOTION_KEY",
    "PROVENANCE_KEY",
    "MotionFile",
    "MotionFileError",
    "check_fps",
    "check_motion",
    "check_npy_size",
    "check_scene_span",
    "read_motion",
]


class MotionFileError(ValueError):
    """The motion file or array is missing, unreadable or breaks a rule above. `str()` is one readable line."""


@dataclass
class MotionFile:
    motion: np.ndarray  # (T, 106) float32
    fps: float
    provenance: dict[str, Any] = field(default_factory=dict)


def check_fps(value: Any, what: str = "motion") -> float:
    """A frame rate in MIN_FPS..MAX_FPS as a float."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise MotionFileError(f"{what}: '{FPS_KEY}' must be one number, got shape {value.shape}")
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MotionFileError(f"{what}: fps must be a number, got {value!r}"[:200])
    fps = float(value)
    if not math.isfinite(fps) or fps <= 0:
        raise MotionFileError(f"{what}: fps must be a positive number, got {fps:g}")
    if not MIN_FPS <= fps <= MAX_FPS:
        raise MotionFileError(f"{what}: fps {fps:g} is outside {MIN_FPS:g}..{MAX_FPS:g}; {REGENERATE} (25 fps)")
    return fps


def _check_dtype(dtype: np.dtype, what: str) -> None:
    if dtype.kind != "f" or dtype.itemsize > MAX_ITEMSIZE:
        raise MotionFileError(f"{what} must hold floating-point values (float16/32/64), got dtype {dtype}")


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 2 or shape[1] != MOTION_DIM:
        raise MotionFileError(
            f"{what} must have shape (frames, {MOTION_DIM}) (100 expression + 3 head + 3 jaw), got {tuple(shape)}"
        )
    if shape[0] == 0:
        raise MotionFileError(f"{what} has no frames")
    if shape[0] > MAX_FRAMES:
        raise MotionFileError(
            f"{what} has {shape[0]:,} frames, more than the {MAX_FRAMES:,} a Blender scene can hold; "
            "split the audio into shorter lines"
        )


def check_motion(motion: Any, what: str = "motion") -> np.ndarray:
    """A floating (T, 106) array, 1 <= T <= MAX_FRAMES, only finite values -> float32 (no copy if it is one)."""
    arr = np.asarray(motion)
    _check_dtype(arr.dtype, what)
    _check_shape(arr.shape, what)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused just below
        arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int(np.count_nonzero(~finite))
        raise MotionFileError(f"{what} contains NaN or infinite values in {bad} of {arr.shape[0]} frames")
    return arr


def check_scene_span(n_frames: int, motion_fps: float, scene_fps: float, start_frame: float,
                     what: str = "the motion") -> float:
    """The scene frame of the last motion frame when frame 0 lands on `start_frame` of a `scene_fps` scene;
    MotionFileError if it lies beyond Blender's last frame (MAX_SCENE_FRAME)."""
    last = float(start_frame) + (int(n_frames) - 1) * float(scene_fps) / float(motion_fps)
    if not math.isfinite(last) or math.ceil(last - 1e-6) > MAX_SCENE_FRAME:
        raise MotionFileError(
            f"{what} ({n_frames:,} frames at {motion_fps:g} fps) would end at scene frame {last:,.0f} "
            f"(scene at {scene_fps:g} fps from frame {start_frame:g}), past Blender's last frame "
            f"{MAX_SCENE_FRAME:,}; split the audio into shorter lines or lower the scene's frame rate"
        )
    return last


# -- reading ------------------------------------------------------------------------------------------------------


def _check_zip_directory(fh: Any, size: int, what: str) -> None:
    """Find the end record as zipfile does and bound its central directory before zipfile reads it."""
    tail_len = min(size, (1 << 16) + 22)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = len(tail) - 22 if tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0" else tail.rfind(_EOCD)
    record = tail[pos:pos + 22] if pos >= 0 else b""
    if len(record) != 22:
        raise MotionFileError(f"{what} is not a valid .npz motion file (no zip directory; truncated?); {REGENERATE}")
    entries, directory = struct.unpack("<HI", record[10:16])
    at = size - tail_len + pos
    if at >= 20:
        fh.seek(at - 20)
        if fh.read(4) == _ZIP64_LOCATOR:
            entries, directory = 0xFFFF, 0xFFFFFFFF  # a zip64 directory: never needed by a motion file
    if entries > _MAX_MEMBERS or directory > _MAX_DIRECTORY:
        raise MotionFileError(
            f"{what} is not a motion file (its zip directory declares {entries:,} entries in {directory:,} bytes; "
            f"a motion file has 2-3); {REGENERATE}"
        )


def _read_header(fh: Any, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of an .npy stream, read without numpy's loader."""
    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
        raise MotionFileError(f"{what} is not an .npy array")
    major = magic[6]
    if major == 1:
        (length,), start = struct.unpack("<H", fh.read(2).ljust(2, b"\0")), 10
    elif major in (2, 3):
        (length,), start = struct.unpack("<I", fh.read(4).ljust(4, b"\0")), 12
    else:
        raise MotionFileError(f"{what} has an unknown .npy format version {major}.{magic[7]}")
    if length > _MAX_HEADER:
        raise MotionFileError(f"{what} has a {length:,}-byte .npy header (at most {_MAX_HEADER:,})")
    raw = fh.read(length)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError, TypeError):
        raise MotionFileError(f"{what} has an unreadable .npy header") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise MotionFileError(f"{what} has an unreadable .npy header")
    shape, fortran, descr = header["shape"], header["fortran_order"], header["descr"]
    if (not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(fortran, bool) or not isinstance(descr, str) or len(descr) > 16):
        raise MotionFileError(f"{what} has an unreadable .npy header (shape {shape!r}, dtype {descr!r})"[:200])
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise MotionFileError(f"{what} has an unknown dtype {descr!r}") from None
    return shape, fortran, dtype, start + length


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, check: Any) -> np.ndarray:
    """One array: header checked by `check(shape, dtype)`, then exactly its declared bytes read (bounded)."""
    with zf.open(info) as fh:
        shape, fortran, dtype, header_bytes = _read_header(fh, what)
        check(shape, dtype)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if info.file_size != header_bytes + nbytes:
            raise MotionFileError(
                f"{what} is damaged: its header declares {nbytes:,} bytes of data, the file holds "
                f"{max(info.file_size - header_bytes, 0):,}; {REGENERATE}"
            )
        raw = np.empty(nbytes, dtype=np.uint8)
        pos = 0
        while pos < nbytes:
            chunk = fh.read(min(nbytes - pos, 1 << 22))
            if not chunk:
                raise MotionFileError(f"{what} is truncated ({pos:,} of {nbytes:,} bytes); {REGENERATE}")
            raw[pos:pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            pos += len(chunk)
        if fh.read(1):  # also makes zipfile check the member's CRC
            raise MotionFileError(f"{what} has data after its array; {REGENERATE}")
    arr = raw.view(dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def check_npy_size(path: str | os.PathLike[str], what: str) -> None:
    """A plain .npy (e.g. a style clip): its header must declare exactly the data the file holds, checked before
    numpy's loader allocates what the header declares (a 1-KB file can declare a terabyte)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            shape, _fortran, dtype, header_bytes = _read_header(fh, what)
    except OSError as err:
        raise MotionFileError(f"{what} cannot be read ({err.strerror}); check its permissions") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if size != header_bytes + nbytes:
        raise MotionFileError(f"{what} is damaged: its header declares {nbytes:,} bytes of data, the file holds "
                              f"{max(size - header_bytes, 0):,}; save it again with numpy.save")


def _one_value(shape: tuple[int, ...], dtype: np.dtype, what: str, kinds: str, max_itemsize: int) -> None:
    if math.prod(shape) != 1:
        raise MotionFileError(f"{what} must be one value, got shape {shape}")
    if dtype.kind not in kinds or dtype.itemsize > max_itemsize:
        raise MotionFileError(f"{what} has the wrong type ({dtype})")


def _provenance(value: np.ndarray, what: str) -> dict[str, Any]:
    text = value.reshape(()).item()
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text:
        return {}
    try:
        provenance = json.loads(text)
    except json.JSONDecodeError as err:
        raise MotionFileError(f"{what}: '{PROVENANCE_KEY}' is not valid JSON ({err.msg})") from None
    except RecursionError:
        raise MotionFileError(f"{what}: '{PROVENANCE_KEY}' is nested too deeply") from None
    if not isinstance(provenance, dict):
        raise MotionFileError(f"{what}: '{PROVENANCE_KEY}' must be a JSON object")
    return provenance


def read_motion(path: str | os.PathLike[str], what: str | None = None) -> MotionFile:
    """Read and check a motion `.npz` (see the module docstring); MotionFileError with one line otherwise."""
    path = os.fspath(path)
    what = what or f"motion file '{path}'"
    if not Path(path).is_file():
        raise MotionFileError(f"{what} does not exist; check the path")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            magic = fh.read(6)
            if magic == b"\x93NUMPY":
                raise MotionFileError(
                    f"{what} is a single .npy array, not an .npz with '{MOTION_KEY}' and '{FPS_KEY}'; "
                    f"save it with numpy.savez(path, {MOTION_KEY}=array, {FPS_KEY}=25.0) or {REGENERATE}"
                )
            if not magic.startswith(b"PK"):
                raise MotionFileError(f"{what} is not a valid .npz motion file (not a zip archive); {REGENERATE}")
            if size > _MAX_FILE_BYTES:
                raise MotionFileError(
                    f"{what} is {size / 2**20:,.0f} MiB, larger than any motion file of at most {MAX_FRAMES:,} "
                    f"frames ({_MAX_FILE_BYTES / 2**20:,.0f} MiB)"
                )
            _check_zip_directory(fh, size, what)
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                members = {info.filename: info for info in zf.infolist()}
                keys = sorted(name[:-4] if name.endswith(".npy") else name for name in members)
                if f"{MOTION_KEY}.npy" not in members:
                    found = ", ".join(keys)[:200] or "none"
                    raise MotionFileError(f"{what} has no '{MOTION_KEY}' array (found: {found}); {REGENERATE}")
                if f"{FPS_KEY}.npy" not in members:
                    raise MotionFileError(
                        f"{what} has no '{FPS_KEY}' value; {REGENERATE} (or add {FPS_KEY}=25.0 to numpy.savez)"
                    )
                key = f"{what}: '{MOTION_KEY}'"

                def motion_check(shape: tuple[int, ...], dtype: np.dtype) -> None:
                    if dtype.hasobject:
                        raise MotionFileError(f"{what} contains pickled objects, which are not loaded for safety")
                    _check_dtype(dtype, key)
                    _check_shape(shape, key)

                motion = _read_member(zf, members[f"{MOTION_KEY}.npy"], key, motion_check)
                fps_what = f"{what}: '{FPS_KEY}'"
                fps_raw = _read_member(zf, members[f"{FPS_KEY}.npy"], fps_what,
                                       lambda s, d: _one_value(s, d, fps_what, "iuf", 8))
                prov_raw = None
                if f"{PROVENANCE_KEY}.npy" in members:
                    prov_what = f"{what}: '{PROVENANCE_KEY}'"

                    def prov_check(shape: tuple[int, ...], dtype: np.dtype) -> None:
                        if dtype.hasobject:
                            raise MotionFileError(
                                f"{what} contains pickled objects, which are not loaded for safety")
                        _one_value(shape, dtype, f"{prov_what} (one JSON string)", "US", MAX_PROVENANCE_BYTES)

                    prov_raw = _read_member(zf, members[f"{PROVENANCE_KEY}.npy"], prov_what, prov_check)
    except MotionFileError:
        raise
    except MemoryError:
        raise MotionFileError(f"{what} could not be read: out of memory") from None
    except OSError as err:
        if err.errno is None:  # a decompressor's complaint, not the file system's
            reason = " ".join(str(err).split())[:160]
            raise MotionFileError(f"{what} is not a valid .npz motion file ({reason}); {REGENERATE}") from None
        raise MotionFileError(f"{what} cannot be read ({err.strerror}); check its permissions") from None
    except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError, struct.error,
            OverflowError, zlib.error, lzma.LZMAError, KeyError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise MotionFileError(f"{what} is not a valid .npz motion file ({reason}); {REGENERATE}") from None

    motion = check_motion(motion, f"{what}: '{MOTION_KEY}'")
    fps = check_fps(fps_raw, what)
    provenance = {} if prov_raw is None else _provenance(prov_raw, what)
    return MotionFile(motion, fps, provenance)
