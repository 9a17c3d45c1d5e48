"""Read a torch zip-format checkpoint (`torch.save` since 1.6) without torch.

Blender's Python has no torch, yet users hold FLAME as `FLAME_with_eye.pt`. The zip holds `<prefix>/data.pkl` (a
pickle whose tensors refer to storages by persistent id) and `<prefix>/data/<key>` (raw little-endian storage
bytes). We unpickle data.pkl with the restricted unpickler, allowing only the tensor/storage rebuilders that such a
file uses, and return nested dicts of numpy arrays. When torch is available `load_pt_with_torch` is used instead
(weights_only=True with numpy's reconstructors allow-listed); both give the same arrays.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from .safepickle import restricted_loads

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
    "uint8": np.uint8, "bool": np.bool_,
}


class _StorageType:
    """What `torch.FloatStorage` etc. resolve to: only their element type matters."""

    def __init__(self, dtype: Any):
        self.dtype = dtype


class _TorchDtype:
    """What `torch.float32` etc. resolve to (used by _rebuild_tensor_v3)."""

    def __init__(self, dtype: Any):
        self.dtype = dtype


class _Storage:
    def __init__(self, values: np.ndarray):
        self.values = values  # flat array of the storage's element type


def _widen(values: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype is _BF16:  # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_rest: Any) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise ValueError("tensor without storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    flat = storage.values
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError("tensor with invalid size/stride")
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= flat.size:
        raise ValueError("tensor view outside its storage")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, tuple(s * item for s in stride), writeable=False)
    return np.array(view)  # own the memory: the storage may be shared by several tensors


def _rebuild_tensor_v3(storage: Any, offset: int, size: tuple, stride: tuple, requires_grad: Any,
                       hooks: Any, dtype: Any, *_rest: Any) -> np.ndarray:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _torch_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(dtype)
    for name, dtype in _TORCH_DTYPES.items():
        table[("torch", name)] = _TorchDtype(dtype)
    return table


def load_pt_zip(path: str) -> Any:
    """Nested dicts/lists of numpy arrays from a zip-format .pt file; raises ValueError/UnsafePickleError."""
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
            if key not in cache:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise ValueError(f"torch checkpoint lacks storage {key}")
                raw_dtype = np.dtype(np.uint16 if dtype is _BF16 else dtype)
                raw_dtype = raw_dtype.newbyteorder(">" if big_endian else "<")
                if archive.getinfo(member).file_size > _MAX_MEMBER_BYTES:  # refuse zip bombs before inflating
                    raise ValueError(f"torch checkpoint storage {key} is implausibly large")
                raw = archive.read(member)
                if len(raw) < numel * raw_dtype.itemsize:
                    raise ValueError(f"torch checkpoint storage {key} is truncated")
                values = np.frombuffer(raw, dtype=raw_dtype, count=numel).astype(raw_dtype.newbyteorder("="))
                cache[key] = _Storage(_widen(values, dtype))
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
            tensor = tensor.float()
        return tensor.numpy().copy()
    if isinstance(obj, dict):
        return OrderedDict((k, _tensors_to_numpy(v, torch)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
    return obj
