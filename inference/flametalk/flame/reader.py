"""Read a user's FLAME model file into plain numpy arrays (no chumpy, no scipy, no torch needed).

Supported layouts (detected from the file's bytes, not its name):
- the official FLAME 2020 `generic_model.pkl`: a Python 2 pickle whose arrays are numpy arrays or chumpy `Ch`
  objects and whose J_regressor is a scipy.sparse matrix (read with the restricted unpickler in safepickle.py);
- FLAME 2023 `.pkl` files (same keys; accepted with a warning because ARTalk motion targets the 2020 expressions);
- `FLAME_with_eye.pt` (GAGAvatar/ARTalk): a torch zip whose `flame_model` dict holds the same arrays as tensors;
- an `.npz` with the same keys (handy for converted models).
Every count (vertices, faces, shape/expression components, joints) comes from the file, and is checked against
the limits below *before* any array is allocated: arrays are read lazily (torch zips, .npz members) or come from
declarations (sparse shapes), so a 2-KB file declaring a (10^8, 3) v_template fails at once with one line.
"""

from __future__ import annotations

import os
import pickle
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .safepickle import LazyArray, UnsafePickleError, declared_shape, restricted_loads, to_array

N_SHAPE = 300  # FLAME's identity components; shapedirs holds these first and the expression components after
JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")  # FLAME's five joints, in file order
WARN_2023 = (
    "this is a FLAME 2023 model: ARTalk motion targets the FLAME 2020 expression basis, "
    "so expressions will not look as intended (use FLAME 2020 generic_model.pkl)"
)
# Limits derived from the FLAME format, checked against what a file declares before anything is allocated.
# FLAME 2020/2023: 5,023 vertices, 9,976 faces, 300 identity + 100 expression components, 5 joints.
FLAME_VERTS, FLAME_FACES = 5023, 9976
MAX_VERTS = 50_000  # 10x FLAME (room for subdivided or extended heads)
MAX_FACES = 100_000  # 10x FLAME
MAX_COMPONENTS = 1_000  # shapedirs' last axis: 300 identity + up to 700 expression components (FLAME: 400)
# The largest file those limits allow (float64 shapedirs, posedirs, weights, ...), plus room for extras such as
# landmark embeddings; anything bigger is not a FLAME model and is not read into memory.
_MAX_BYTES = MAX_VERTS * 3 * (MAX_COMPONENTS + 9 * (len(JOINT_NAMES) - 1) + 8) * 8 + MAX_FACES * 3 * 8 + (256 << 20)


class FlameFileError(ValueError):
    """The FLAME file is missing, unreadable, unsafe or not a FLAME model. `str()` is one readable line."""


@dataclass
class FlameModel:
    """FLAME in FLAME's own frame (metres, +Y up, face towards +Z), float64 arrays."""

    v_template: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) int64 vertex indices
    shapedirs: np.ndarray  # (V, 3, n_shape + n_expr), identity components first
    posedirs: np.ndarray  # (V, 3, 9 * (J - 1)): pose-corrective offsets per entry of (R_j - I), j >= 1, row-major
    j_regressor: np.ndarray  # (J, V) dense
    weights: np.ndarray  # (V, J) skinning weights
    parents: np.ndarray  # (J,) int64, -1 for the root
    n_shape: int
    n_expr: int
    version: str = "2020"  # "2020" or "2023" (only the latter changes behaviour: a warning)
    source_format: str = ""  # "pkl", "pkl-chumpy", "pt", "npz"
    warnings: list[str] = field(default_factory=list)

    @property
    def n_verts(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.j_regressor.shape[0])

    @property
    def n_pose(self) -> int:
        return int(self.posedirs.shape[2])

    @property
    def expr_dirs(self) -> np.ndarray:
        return self.shapedirs[:, :, self.n_shape : self.n_shape + self.n_expr]

    @property
    def shape_dirs(self) -> np.ndarray:
        return self.shapedirs[:, :, : self.n_shape]


def _read_container(path: str, use_torch: bool | None) -> tuple[dict[str, Any], str]:
    """The dict of raw arrays in the file and a format tag; raises FlameFileError."""
    if not Path(path).is_file():
        raise FlameFileError(f"FLAME file not found: {path}")
    size = Path(path).stat().st_size
    if size == 0 or size > _MAX_BYTES:
        raise FlameFileError(f"not a FLAME model file (size {size} bytes): {path}")
    with open(path, "rb") as handle:
        head = handle.read(4)
    name = Path(path).name
    try:
        if head.startswith(b"PK"):
            from .torchzip import check_zip_sizes

            check_zip_sizes(path, _MAX_BYTES)  # a deflated zip could inflate far beyond its size on disk
            if _is_npz(path):
                return _read_npz(path), "npz"
            return _read_pt(path, use_torch), "pt"
        if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"c"):  # pickle protocol 2+ or protocol 0/1
            with open(path, "rb") as handle:
                data = handle.read()
            if data[:2] == b"\x80\x02" and b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19" in data[:32]:
                raise FlameFileError(f"{name} is an old-format torch file: re-save it with a current torch")
            tag = "pkl-chumpy" if b"chumpy" in data else "pkl"
            return restricted_loads(data), tag
    except FlameFileError:
        raise
    except UnsafePickleError as err:
        raise FlameFileError(
            f"{name} refers to {err.qualified_name}, which a FLAME model never contains: refused to load it "
            "(nothing in it was run)"
        ) from None
    except MemoryError:
        raise FlameFileError(_memory_message(name)) from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, UnicodeDecodeError, OSError, RecursionError, RuntimeError,
            SystemError) as err:  # SystemError: numpy, on a dtype state with impossible flags (a fuzz find)
        raise FlameFileError(f"{name} is damaged or not a FLAME model ({_short(err)})") from None
    raise FlameFileError(f"{name} is not a FLAME model (expected generic_model.pkl or FLAME_with_eye.pt)")


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:160]


def _memory_message(name: str) -> str:
    return (f"{name} needs more memory than is available: not a FLAME model of a usable size (FLAME has "
            f"{FLAME_VERTS:,} vertices; this reader accepts up to {MAX_VERTS:,})")


class _NpzMember(LazyArray):
    """One array of an .npz: its shape and dtype from the .npy header, its data read on `materialize()`."""

    def __init__(self, path: str, key: str, shape: tuple[int, ...]):
        self.path, self.key, self.shape = path, key, shape

    def materialize(self) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as npz:
            return npz[self.key]


def _npy_header(handle: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    try:
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except tokenize.TokenError:  # numpy's fallback parser for old headers raises this, not ValueError (a fuzz find)
        raise ValueError("unreadable .npy header") from None
    return tuple(int(n) for n in shape), dtype


def _read_npz(path: str) -> dict[str, Any]:
    """{key: _NpzMember}: only the headers are read here."""
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as handle:
                shape, dtype = _npy_header(handle)
            if dtype.hasobject:
                raise ValueError(f"'{name[:-4]}' holds Python objects")
            if dtype.kind not in "biuf" or dtype.itemsize > 8:  # e.g. |V1000000000: 1 GB per element (a fuzz find)
                raise ValueError(f"'{name[:-4]}' has dtype {dtype}, not numbers")
            out[name[:-4]] = _NpzMember(path, name[:-4], shape)
    return out


def _is_npz(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_pt(path: str, use_torch: bool | None) -> dict[str, Any]:
    from . import torchzip

    if use_torch is None:
        try:
            import torch  # noqa: F401  (only probing whether it is there)

            use_torch = True
        except ImportError:
            use_torch = False
    if use_torch:
        try:
            return torchzip.load_pt_with_torch(path)
        except pickle.UnpicklingError:
            pass  # e.g. a numpy-2 name unknown to this torch's allow-list: the own reader names the culprit
    return torchzip.load_pt_zip(path)


def _pick_model_dict(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict) and "flame_model" in raw and isinstance(raw["flame_model"], dict):
        return raw["flame_model"]  # FLAME_with_eye.pt wraps the model beside landmark embeddings
    if isinstance(raw, dict):
        return raw
    raise ValueError(f"top level is {type(raw).__name__}, not a dict")


def _declared(model: dict[str, Any], key: str) -> tuple[int, ...]:
    """The shape the file declares for `key` (nothing is read or allocated)."""
    if key not in model:
        raise FlameFileError(f"not a FLAME model: '{key}' is missing")
    try:
        return declared_shape(model[key])
    except (ValueError, TypeError, KeyError) as err:
        raise FlameFileError(f"not a usable FLAME model: '{key}' is unreadable ({_short(err)})") from None


def _array(model: dict[str, Any], key: str) -> np.ndarray:
    """The array for `key`; call only after its declared shape passed the checks."""
    if key not in model:
        raise FlameFileError(f"not a FLAME model: '{key}' is missing")
    try:
        return to_array(model[key])
    except (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, zipfile.BadZipFile,
            RuntimeError) as err:  # zipfile: an unknown compression method, an encrypted member (a fuzz find)
        raise FlameFileError(f"not a usable FLAME model: '{key}' is unreadable ({_short(err)})") from None


def _check_shape(shape: tuple[int, ...], key: str, expected: tuple[int | None, ...]) -> None:
    ok = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        want = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
        raise FlameFileError(f"not a FLAME model: '{key}' has shape {tuple(shape)}, expected {want}")


def _check_count(count: int, key: str, what: str, flame: int, limit: int) -> None:
    if count > limit:
        raise FlameFileError(f"not a FLAME model: '{key}' declares {count:,} {what}; FLAME has {flame:,} and this "
                             f"reader accepts up to {limit:,}")


def _finite_float(arr: np.ndarray, key: str) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.number):
        raise FlameFileError(f"not a FLAME model: '{key}' is not numeric")
    if np.issubdtype(arr.dtype, np.complexfloating):  # a cast would warn on stderr and drop the imaginary part
        raise FlameFileError(f"not a FLAME model: '{key}' holds complex numbers")
    out = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise FlameFileError(f"not a usable FLAME model: '{key}' contains NaN or infinity")
    return out


def _detect_version(path: str, requested: str | None) -> str:
    if requested is not None:
        if requested not in ("2020", "2023"):
            raise FlameFileError(f"unknown FLAME version {requested!r} (expected 2020 or 2023)")
        return requested
    # FLAME 2023 keeps the 2020 keys and sizes; the release names its files flame2023*.pkl, so the name is the
    # only reliable sign without reference data.
    return "2023" if "2023" in Path(path).name else "2020"


def validate(model: dict[str, Any], version: str = "2020", source_format: str = "") -> FlameModel:
    """FlameModel from a dict of arrays in FLAME's key naming; raises FlameFileError with the first problem.
    Every array's declared shape is checked against the FLAME limits before it is read or converted."""
    v_shape = _declared(model, "v_template")
    _check_shape(v_shape, "v_template", (None, 3))
    n_verts = v_shape[0]
    _check_count(n_verts, "v_template", "vertices", FLAME_VERTS, MAX_VERTS)
    if n_verts < 4:
        raise FlameFileError(f"not a FLAME model: only {n_verts} vertices")
    v_template = _finite_float(_array(model, "v_template"), "v_template")
    f_shape = _declared(model, "f")
    _check_shape(f_shape, "f", (None, 3))
    _check_count(f_shape[0], "f", "faces", FLAME_FACES, MAX_FACES)
    faces = _array(model, "f")
    if not np.issubdtype(faces.dtype, np.integer) or faces.size == 0:
        raise FlameFileError("not a FLAME model: 'f' must hold integer vertex indices")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= n_verts:
        raise FlameFileError("not a FLAME model: 'f' refers to vertices that do not exist")
    s_shape = _declared(model, "shapedirs")
    _check_shape(s_shape, "shapedirs", (n_verts, 3, None))
    if s_shape[2] <= N_SHAPE:
        raise FlameFileError(f"not a FLAME model: 'shapedirs' has {s_shape[2]} components, no expressions")
    _check_count(s_shape[2], "shapedirs", "components", N_SHAPE + 100, MAX_COMPONENTS)
    n_joints = len(JOINT_NAMES)
    _check_shape(_declared(model, "J_regressor"), "J_regressor", (n_joints, n_verts))
    p_shape = _declared(model, "posedirs")
    n_pose = 9 * (n_joints - 1)
    if len(p_shape) != 2 or p_shape != (3 * n_verts, n_pose):  # some converters flatten (V*3, P)
        _check_shape(p_shape, "posedirs", (n_verts, 3, n_pose))
    _check_shape(_declared(model, "weights"), "weights", (n_verts, n_joints))
    _check_shape(_declared(model, "kintree_table"), "kintree_table", (2, n_joints))
    # every declared shape is within FLAME's limits: now read and convert
    shapedirs = _finite_float(_array(model, "shapedirs"), "shapedirs")
    j_regressor = _finite_float(_array(model, "J_regressor"), "J_regressor")
    posedirs = _finite_float(_array(model, "posedirs"), "posedirs").reshape(n_verts, 3, n_pose)
    weights = _finite_float(_array(model, "weights"), "weights")
    kintree = _array(model, "kintree_table")
    for key, arr, want in (("shapedirs", shapedirs, s_shape), ("J_regressor", j_regressor, (n_joints, n_verts)),
                           ("weights", weights, (n_verts, n_joints)), ("kintree_table", kintree, (2, n_joints))):
        _check_shape(arr.shape, key, want)  # what was read matches what was declared
    if not np.issubdtype(kintree.dtype, np.number):
        raise FlameFileError("not a FLAME model: 'kintree_table' is not numeric")
    parents = np.asarray(kintree[0], dtype=np.float64)
    if not np.all(np.isfinite(parents)):
        raise FlameFileError("not a FLAME model: 'kintree_table' is not a tree in joint order")
    parents = parents.astype(np.int64)
    parents[0] = -1  # the file stores 2**32-1 (uint32 -1) for the root
    if any(not (0 <= parents[j] < j) for j in range(1, n_joints)):
        raise FlameFileError("not a FLAME model: 'kintree_table' is not a tree in joint order")
    model_out = FlameModel(
        v_template=v_template, faces=faces, shapedirs=shapedirs, posedirs=posedirs, j_regressor=j_regressor,
        weights=weights, parents=parents, n_shape=N_SHAPE, n_expr=int(shapedirs.shape[2] - N_SHAPE),
        version=version, source_format=source_format,
    )
    if version == "2023":
        model_out.warnings.append(WARN_2023)
    return model_out


def load_flame(path: str | os.PathLike[str], version: str | None = None, use_torch: bool | None = None) -> FlameModel:
    """Read and validate a FLAME model file. `use_torch`: None = use torch for .pt files when importable."""
    path = os.fspath(path)
    name = Path(path).name
    try:
        raw, tag = _read_container(path, use_torch)
        try:
            model = _pick_model_dict(raw)
        except ValueError as err:
            raise FlameFileError(f"{name} is not a FLAME model ({err})") from None
        return validate(model, _detect_version(path, version), tag)
    except MemoryError:  # within the limits yet too big for this machine: still one line, never a traceback
        raise FlameFileError(_memory_message(name)) from None
    except RecursionError:
        raise FlameFileError(f"{name} is damaged or not a FLAME model (nested too deeply)") from None


def load_shape_coefficients(path: str | os.PathLike[str], n_shape: int = N_SHAPE) -> np.ndarray:
    """Identity coefficients (n_shape,) from .npy/.npz/.txt; shorter vectors are zero-padded."""
    path = os.fspath(path)
    name = Path(path).name
    if not Path(path).is_file():
        raise FlameFileError(f"shape file not found: {path}")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                keys = [k for k in ("shape", "shape_params", "betas", "shape_coefficients") if k in npz.files]
                if not keys:
                    raise FlameFileError(f"{name} has no 'shape' array")
                values = npz[keys[0]]
        elif path.endswith(".npy"):
            values = np.load(path, allow_pickle=False)
        else:
            values = np.loadtxt(path, dtype=np.float64)
    except FlameFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise FlameFileError(f"{name} is not a shape coefficient file ({_short(err)})") from None
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 1 or values.size > n_shape or not np.all(np.isfinite(values)):
        raise FlameFileError(f"{name}: expected up to {n_shape} finite shape coefficients, got {values.shape}")
    out = np.zeros(n_shape, dtype=np.float64)
    out[: values.size] = values
    return out
