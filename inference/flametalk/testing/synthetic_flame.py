"""Synthetic FLAME-format files for tests and drift checks (FLAME itself is licensed and cannot ship).

The arrays are random but shaped and laid out like the real files:
- `generic_model.pkl` like FLAME 2020: a Python-2 protocol-2 pickle (byte strings, numpy's py2 reconstruct
  calls) where several arrays are `chumpy.ch.Ch` objects and J_regressor is a `scipy.sparse.csc.csc_matrix`;
- `flame2023.pkl`: a Python-3 pickle of numpy arrays with a `scipy.sparse._csc.csc_matrix` J_regressor;
- `FLAME_with_eye.pt`: torch.save of {'flame_model': {...tensors...}, 'lmk_embeddings': ..., ...} (needs torch);
- `.npz` with the same keys.
Hostile files (a pickle that would run a command, files declaring huge arrays) are in tests/fixtures/hostile_files.py.
The pickles are emitted opcode by opcode because chumpy/scipy must not be needed (a normal Pickler would import
them to check the class names it writes).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..flame.contract import EXPR, MOTION_DIM
from ..flame.reader import JOINT_NAMES, N_SHAPE, FlameModel, validate

FULL_VERTS, FULL_FACES = 5023, 9976  # FLAME 2020 sizes


class _Obj:
    """An object pickled as `module.name.__new__()` + BUILD(state), as protocol 2 does for new-style classes."""

    def __init__(self, module: str, name: str, state: dict[str, Any]):
        self.module, self.name, self.state = module, name, state


class _Emitter:
    """Minimal pickle writer. py2=True writes str as byte strings and names modules as Python 2 did."""

    def __init__(self, py2: bool):
        self.py2 = py2
        self.out = bytearray(b"\x80\x02" if py2 else b"\x80\x04")

    def dumps(self, obj: Any) -> bytes:
        self.emit(obj)
        self.out += b"."
        return bytes(self.out)

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def emit(self, obj: Any) -> None:  # a flat type switch reads best here
        out = self.out
        if obj is None:
            out += b"N"
        elif obj is True or obj is False:
            out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                out += b"K" + bytes([obj])
            elif -(2**31) <= obj < 2**31:
                out += b"J" + struct.pack("<i", obj)
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += b"\x8a" + bytes([len(raw)]) + raw
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str) and not self.py2:
            raw = obj.encode("utf-8")
            out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(obj, bytes) and not self.py2:
            out += b"B" + struct.pack("<I", len(obj)) + obj
        elif isinstance(obj, str | bytes):  # Python 2 str is a byte string
            raw = obj.encode("latin1") if isinstance(obj, str) else obj
            out += (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw
        elif isinstance(obj, tuple):
            if len(obj) == 0:
                out += b")"
            else:
                out += b"("
                for item in obj:
                    self.emit(item)
                out += b"t"
        elif isinstance(obj, list):
            out += b"]("
            for item in obj:
                self.emit(item)
            out += b"e"
        elif isinstance(obj, dict):
            out += b"}("
            for key, value in obj.items():
                self.emit(key)
                self.emit(value)
            out += b"u"
        elif isinstance(obj, set):
            self.global_("__builtin__" if self.py2 else "builtins", "set")
            self.emit((sorted(obj),))
            out += b"R"
        elif isinstance(obj, np.dtype):
            self.global_("numpy", "dtype")
            self.emit((obj.str[1:], 0, 1) if self.py2 else (obj.str[1:], False, True))
            out += b"R"
            self.emit((3, obj.str[0], None, None, None, -1, -1, 0))
            out += b"b"
        elif isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            self.global_("numpy.core.multiarray", "_reconstruct")
            self.global_("numpy", "ndarray")
            self.emit((0,))
            self.emit(b"b")
            out += b"\x87R"  # TUPLE3, REDUCE
            self.emit((1, tuple(int(s) for s in arr.shape), arr.dtype, False, arr.tobytes()))
            out += b"b"
        elif isinstance(obj, _Obj):
            self.global_(obj.module, obj.name)
            out += b")\x81"  # EMPTY_TUPLE, NEWOBJ
            self.emit(obj.state)
            out += b"b"
        else:
            raise TypeError(f"cannot emit {type(obj).__name__}")


def make_arrays(n_verts: int = FULL_VERTS, n_faces: int = FULL_FACES, n_expr: int = 100, seed: int = 0,
                n_shape: int = N_SHAPE) -> dict[str, np.ndarray]:
    """Random FLAME-like arrays in the file's key naming and dtypes (float64, uint32 faces)."""
    rng = np.random.default_rng(seed)
    # Vertices on a head-sized ellipsoid around FLAME's origin (metres, +Y up, face +Z).
    direction = rng.normal(size=(n_verts, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    v_template = direction * np.array([0.08, 0.11, 0.10]) + np.array([0.0, 0.0, 0.01])
    # Random triangles with distinct corners: topology is irrelevant to the maths being tested.
    faces = rng.integers(0, n_verts, size=(3 * n_faces, 3))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    faces = faces[:n_faces].astype(np.uint32)
    targets = np.array([[0, -0.09, -0.02], [0, -0.06, -0.01], [0, -0.03, 0.03], [0.03, 0.03, 0.07],
                        [-0.03, 0.03, 0.07]])
    j_regressor = np.zeros((len(JOINT_NAMES), n_verts))
    for j, target in enumerate(targets):
        nearest = np.argsort(np.linalg.norm(v_template - target, axis=1))[:8]
        w = rng.uniform(0.5, 1.5, size=nearest.size)
        j_regressor[j, nearest] = w / w.sum()
    joints = j_regressor @ v_template
    d2 = np.sum((v_template[:, None, :] - joints[None]) ** 2, axis=-1)
    weights = np.exp(-d2 / 0.002)
    weights[weights < np.sort(weights, axis=1)[:, -3:-2]] = 0.0  # three joints per vertex at most
    weights /= weights.sum(axis=1, keepdims=True)
    scale = np.concatenate([2e-3 / np.sqrt(1 + np.arange(n_shape) / 10), 2e-3 / np.sqrt(1 + np.arange(n_expr) / 10)])
    shapedirs = rng.normal(size=(n_verts, 3, n_shape + n_expr)) * scale
    posedirs = rng.normal(size=(n_verts, 3, 9 * (len(JOINT_NAMES) - 1))) * 3e-3
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {
        "v_template": v_template, "f": faces, "shapedirs": shapedirs, "posedirs": posedirs,
        "J_regressor": j_regressor, "weights": weights, "kintree_table": kintree, "J": joints,
    }


def model_from_arrays(arrays: dict[str, np.ndarray]) -> FlameModel:
    return validate(dict(arrays), "2020", "synthetic")


def _csc_state(dense: np.ndarray) -> dict[str, Any]:
    """The __dict__ of a scipy csc_matrix (what its pickle's BUILD carries)."""
    col_of, row_of = np.nonzero(dense.T)  # entries ordered by column, as CSC stores them
    counts = np.bincount(col_of, minlength=dense.shape[1])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return {"_shape": dense.shape, "maxprint": 50, "format": "csc", "indices": row_of.astype(np.int32),
            "indptr": indptr, "data": dense[row_of, col_of].astype(np.float64)}


def _chumpy(arr: np.ndarray) -> _Obj:
    state = {"x": np.asarray(arr, dtype=np.float64), "_dirty_vars": set(), "_itr": None,
             "_depends_on_deps": {}, "_make_dense": False, "_make_sparse": False}
    return _Obj("chumpy.ch", "Ch", state)


def write_pkl_2020(path: str, arrays: dict[str, np.ndarray]) -> str:
    """FLAME 2020 generic_model.pkl layout: py2 pickle, chumpy arrays, scipy.sparse csc J_regressor."""
    content = {
        "f": arrays["f"].astype(np.uint32),
        "J_regressor": _Obj("scipy.sparse.csc", "csc_matrix", _csc_state(arrays["J_regressor"])),
        "kintree_table": arrays["kintree_table"],
        "J": _chumpy(arrays["J"]),
        "weights": _chumpy(arrays["weights"]),
        "posedirs": np.asarray(arrays["posedirs"], dtype=np.float64),
        "v_template": _chumpy(arrays["v_template"]),
        "shapedirs": _chumpy(arrays["shapedirs"]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    with open(path, "wb") as handle:
        handle.write(_Emitter(py2=True).dumps(content))
    return path


def write_pkl_2023(path: str, arrays: dict[str, np.ndarray]) -> str:
    """FLAME 2023-style pickle: Python 3, plain numpy arrays, sparse J_regressor from scipy.sparse._csc."""
    content: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items() if k != "J_regressor"}
    content["J_regressor"] = _Obj("scipy.sparse._csc", "csc_matrix", _csc_state(arrays["J_regressor"]))
    with open(path, "wb") as handle:
        handle.write(_Emitter(py2=False).dumps(content))
    return path


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> str:
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def write_pt(path: str, arrays: dict[str, np.ndarray], faces_dtype: str = "int64",
             expanded: dict[str, tuple[int, ...]] | None = None) -> str:
    """FLAME_with_eye.pt layout (GAGAvatar/ARTalk): needs torch to write. `faces_dtype`: the tensor type of 'f'
    (uint32 needs torch >= 2.3). `expanded`: {key: shape} replaced by `torch.zeros(1).expand(*shape)`, a tensor
    of any declared size stored in 4 bytes (a hostile file: tiny on disk, huge once read naively)."""
    import torch

    model = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k not in ("f", "J")}
    model["f"] = torch.from_numpy(arrays["f"].astype(np.int64)).to(getattr(torch, faces_dtype))
    for key, shape in (expanded or {}).items():
        model[key] = torch.zeros(1).expand(*shape)
    model["kintree_table"] = torch.from_numpy(arrays["kintree_table"].astype(np.int64))
    lmk = {"static_lmk_faces_idx": torch.arange(51), "static_lmk_bary_coords": torch.full((51, 3), 1 / 3),
           "full_lmk_bary_coords_with_eye": np.full((70, 3), 1 / 3, dtype=np.float32)}  # numpy beside tensors
    content = {"flame_model": model, "lmk_embeddings": lmk,
               "lmk_embeddings_mediapipe": {"lmk_face_idx": torch.arange(105)}}
    torch.save(content, path)
    return path


def write_all(folder: str, arrays: dict[str, np.ndarray], with_pt: bool = True) -> dict[str, str]:
    """Every layout into `folder`; returns {'pkl2020', 'pkl2023', 'npz', 'pt'?: path}."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "pkl2020": write_pkl_2020(str(root / "generic_model.pkl"), arrays),
        "pkl2023": write_pkl_2023(str(root / "flame2023.pkl"), arrays),
        "npz": write_npz(str(root / "flame_model.npz"), arrays),
    }
    if with_pt:
        paths["pt"] = write_pt(str(root / "FLAME_with_eye.pt"), arrays)
    return paths


def random_motion(frames: int, seed: int = 1, expr_scale: float = 1.0, rot_scale: float = 0.3) -> np.ndarray:
    """ARTalk-layout motion (frames, 106) float32 with smooth-ish random values (for tests)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, frames)[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, MOTION_DIM))
    freq = rng.uniform(0.5, 3.0, size=(1, MOTION_DIM))
    motion = np.sin(2 * np.pi * freq * t + phase) * rng.uniform(0.3, 1.0, size=(1, MOTION_DIM))
    motion[:, EXPR] *= 2.0 * expr_scale
    motion[:, EXPR.stop:] *= rot_scale
    return motion.astype(np.float32)
