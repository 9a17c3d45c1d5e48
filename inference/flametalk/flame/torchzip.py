"""Read a torch zip-format checkpoint (`torch.save` since 1.6) without torch.

Blender's Python has no torch, yet users hold FLAME as `FLAME_with_eye.pt`. The zip holds `<prefix>/data.pkl` (a
pickle whose tensors refer to storages by persistent id) and `<prefix>/data/<key>` (raw little-endian storage
bytes). We unpickle data.pkl with the restricted unpickler, allowing only the tensor/storage rebuilders that such a
file uses, and return nested dicts of `TensorRef`s: shapes as declared, data read only when asked for (after the
reader checked the shape, so a tiny file declaring a (10^8, 3) tensor costs nothing). When torch is available
`load_pt_with_torch` is used instead (weights_only=True with numpy's reconstructors allow-listed; tensors become
numpy views); both give the same arrays.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from .safepickle import MAX_ELEMENTS, LazyArray, restricted_loads

_MAX_MEMBER_BYTES = 1 << 30  # FLAME's largest array is ~50 MB; anything near 1 GB is not a FLAME file
_BF16 = "bfloat16"  # numpy has no bfloat16; stored as uint16 and widened to float32 below
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": _BF16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES: dict[str, Any] = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": _BF16, "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16, "int8": np.int8,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
}
_UNTYPED = "untyped"  # torch >= 2.x names `torch.storage.UntypedStorage` for dtypes without a typed storage class


class _StorageType:
    """What `torch.FloatStorage` etc. resolve to: only their element type matters."""

    def __init__(self, dtype: Any):
        self.dtype = dtype


class _TorchDtype:
    """What `torch.float32` etc. resolve to (used by _rebuild_tensor_v3)."""

    def __init__(self, dtype: Any):
        self.dtype = dtype


def _raw_dtype(dtype: Any, big_endian: bool) -> np.dtype:
    raw = np.dtype(np.uint16 if dtype is _BF16 else dtype)
    return raw.newbyteorder(">" if big_endian else "<")


class _Storage:
    """A storage record of the zip: its member, element type and size as declared; read only when a tensor that
    passed the caller's shape checks is materialized. `dtype` is _UNTYPED for UntypedStorage (numel counts bytes)."""

    def __init__(self, path: str, member: str, dtype: Any, numel: int, big_endian: bool, member_bytes: int):
        self.path, self.member, self.dtype, self.numel = path, member, dtype, numel
        self.big_endian, self.member_bytes = big_endian, member_bytes

    def count(self, dtype: Any) -> int:
        """Elements of `dtype` the storage holds."""
        if self.dtype is _UNTYPED:
            return self.numel // _raw_dtype(dtype, self.big_endian).itemsize
        return self.numel

    def read(self, dtype: Any) -> np.ndarray:
        raw_dtype = _raw_dtype(dtype, self.big_endian)
        count = self.count(dtype)
        with zipfile.ZipFile(self.path) as archive:
            raw = archive.read(self.member)
        if len(raw) < count * raw_dtype.itemsize:
            raise ValueError(f"torch checkpoint storage {self.member} is truncated")
        values = np.frombuffer(raw, dtype=raw_dtype, count=count).astype(raw_dtype.newbyteorder("="))
        return _widen(values, dtype)


def _widen(values: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype is _BF16:  # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


class TensorRef(LazyArray):
    """A tensor of the checkpoint, declared but not read: `shape` costs nothing, `materialize()` reads it."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], dtype: Any):
        self.storage, self.offset, self.shape, self.stride, self.dtype = storage, offset, size, stride, dtype

    def materialize(self) -> np.ndarray:
        out_dtype = np.float32 if self.dtype is _BF16 else self.dtype
        if 0 in self.shape:
            return np.zeros(self.shape, dtype=out_dtype)
        flat = self.storage.read(self.dtype)
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.shape,
                                               tuple(s * item for s in self.stride), writeable=False)
        return np.array(view)  # own the memory: the storage may be shared by several tensors


def _rebuild(storage: Any, offset: Any, size: Any, stride: Any, dtype: Any) -> TensorRef:
    if not isinstance(storage, _Storage):
        raise ValueError("tensor without storage")
    if dtype is None:
        dtype = storage.dtype
    if dtype is _UNTYPED or dtype is None:
        raise ValueError("tensor of unknown element type")
    if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list) and len(size) == len(stride) <= 8):
        raise ValueError("tensor with invalid size/stride")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(offset)
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise ValueError("tensor with invalid size/stride")
    if 0 not in size:  # the view must lie inside the storage: pure arithmetic, nothing is read
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.count(dtype):
            raise ValueError("tensor view outside its storage")
    return TensorRef(storage, offset, size, stride, dtype)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_rest: Any) -> TensorRef:
    return _rebuild(storage, offset, size, stride, None)


def _rebuild_tensor_v3(storage: Any, offset: int, size: tuple, stride: tuple, requires_grad: Any,
                       hooks: Any, dtype: Any, *_rest: Any) -> TensorRef:
    if not isinstance(dtype, _TorchDtype):
        raise ValueError("tensor of unknown element type")
    return _rebuild(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _torch_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
        ("torch.storage", "UntypedStorage"): _StorageType(_UNTYPED),
        ("torch", "UntypedStorage"): _StorageType(_UNTYPED),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(dtype)
    for name, dtype in _TORCH_DTYPES.items():
        table[("torch", name)] = _TorchDtype(dtype)
    return table


def check_zip_sizes(path: str, limit: int) -> None:
    """Refuse a zip whose members would inflate to more than `limit` bytes in all (read from its directory)."""
    with zipfile.ZipFile(path) as archive:
        total = sum(info.file_size for info in archive.infolist())
    if total > limit:
        raise ValueError(f"its contents would take {total / 1e9:.1f} GB, far more than a FLAME model")


def load_pt_zip(path: str) -> Any:
    """Nested dicts/lists of `TensorRef`s (read with `.materialize()` or safepickle.to_array) from a zip-format .pt
    file; raises ValueError/UnsafePickleError. Only the pickle is read here, no tensor data."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl_names = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise ValueError("not a torch checkpoint (no data.pkl)")
        prefix = pkl_names[0][: -len("data.pkl")]
        big_endian = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() == b"big"
        cache: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise ValueError("unknown persistent record in torch checkpoint")
            storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType | _TorchDtype) else None
            if dtype is None:
                raise ValueError("storage of unknown type in torch checkpoint")
            if numel < 0:
                raise ValueError(f"torch checkpoint storage {key} has a negative size")
            if key not in cache:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise ValueError(f"torch checkpoint lacks storage {key}")
                member_bytes = archive.getinfo(member).file_size
                if member_bytes > _MAX_MEMBER_BYTES:  # refuse zip bombs before inflating
                    raise ValueError(f"torch checkpoint storage {key} is implausibly large")
                item = 1 if dtype is _UNTYPED else _raw_dtype(dtype, big_endian).itemsize
                if numel * item > member_bytes:
                    raise ValueError(f"torch checkpoint storage {key} is truncated")
                cache[key] = _Storage(path, member, dtype, numel, big_endian, member_bytes)
            return cache[key]

        if archive.getinfo(pkl_names[0]).file_size > _MAX_MEMBER_BYTES:
            raise ValueError("torch checkpoint data.pkl is implausibly large")
        data = archive.read(pkl_names[0])
        return restricted_loads(data, extra=_torch_globals(), persistent_load=persistent_load)


def _numpy_safe_globals() -> list[Any]:
    from .safepickle import _BASE_GLOBALS  # the same numpy allow-list the plain reader uses

    return [obj for (module, _name), obj in _BASE_GLOBALS.items() if module.startswith("numpy")]


def load_pt_with_torch(path: str) -> Any:
    """torch.load(weights_only=True) with numpy's reconstructors allow-listed, tensors turned into numpy."""
    import torch  # optional dependency, only imported when the caller asked for it

    safe = [obj for obj in _numpy_safe_globals() if callable(obj)]
    with torch.serialization.safe_globals(safe):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return _tensors_to_numpy(obj, torch)


def _tensors_to_numpy(obj: Any, torch: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            if tensor.numel() > MAX_ELEMENTS:  # widening would allocate: refuse absurd sizes first
                raise ValueError(f"a tensor of {tensor.numel():,} values, more than any FLAME array")
            tensor = tensor.float()
        # No copy: an expanded tensor (stride 0) stays a view, so a declared (10^8, 3) costs nothing until the
        # reader has checked its shape.
        return tensor.numpy()
    if isinstance(obj, dict):
        return OrderedDict((k, _tensors_to_numpy(v, torch)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
    return obj
