"""Restricted unpickling for FLAME model files.

A FLAME file is data. The official `generic_model.pkl` is a Python 2 pickle that names classes from chumpy and
scipy.sparse; neither may be needed (chumpy does not even install on current Python), and a pickle can name any
callable, so we never resolve a global through an import. Only these names resolve:

- numpy's array/dtype/scalar reconstructors (they build arrays from bytes and run nothing else);
- a few harmless builtins (set, frozenset, object, OrderedDict) and a latin-1-only stand-in for `_codecs.encode`
  (Python 3 writes bytes that way in protocol-2 pickles);
- `copy_reg._reconstructor`, replaced by a version that only instantiates our own stand-in classes;
- chumpy classes and scipy.sparse matrix classes, replaced by inert `StandIn` records whose pickled state is kept
  as plain data and converted to numpy afterwards by `to_array`;
- whatever a caller adds through `extra` (the torch-free .pt reader adds its storage/tensor rebuilders).

Any other global raises `UnsafePickleError` before anything is called.

Nothing here allocates more than a file declares *after* checking the declaration: `declared_shape` reads the
shape of any value (array, stand-in, lazy tensor, nested list) without building it, and `to_array` refuses more
than `MAX_ELEMENTS` values before allocating, so a small file cannot ask for gigabytes (a sparse matrix declaring
(5, 1e10), a list repeating one reference a million times).
"""

from __future__ import annotations

import importlib
import io
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# The largest array a FLAME file holds is shapedirs, (V, 3, components): 5,023 x 3 x 400 in FLAME 2020. The reader
# accepts up to 50,000 vertices and 1,000 components; nothing it reads may hold more values than that.
MAX_ELEMENTS = 50_000 * 3 * 1_000
_MAX_NESTING = 8  # nested lists deeper than any array a FLAME file holds


class LazyArray:
    """An array described by a file but not read yet (e.g. a tensor in a torch zip): `shape` is what the file
    declares; `materialize()` allocates and reads it (callers check `shape` first)."""

    shape: tuple[int, ...] = ()

    def materialize(self) -> np.ndarray:
        raise NotImplementedError


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that a FLAME file never contains (nothing was called)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class StandIn:
    """Inert record of a pickled chumpy / scipy.sparse object: remembers its class name, args and state."""

    pickle_module = ""
    pickle_name = ""
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args); __new__ kept them
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state as data, never interpret it here
        self.state = state

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls.pickle_module}.{cls.pickle_name}"


_STANDIN_CLASSES: dict[tuple[str, str], type[StandIn]] = {}
_SPARSE_NAMES = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}


def _standin_class(module: str, name: str) -> type[StandIn]:
    key = (module, name)
    if key not in _STANDIN_CLASSES:
        _STANDIN_CLASSES[key] = type(f"StandIn_{name}", (StandIn,), {"pickle_module": module, "pickle_name": name})
    return _STANDIN_CLASSES[key]


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copy_reg._reconstructor limited to our stand-ins (py2 protocol 0/1 pickles of new-style objects)."""
    if isinstance(cls, type) and issubclass(cls, StandIn) and base is object and state is None:
        return cls.__new__(cls)
    raise UnsafePickleError("copy_reg", f"_reconstructor({getattr(cls, '__name__', cls)!r})")


def _safe_codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 pickles bytes as _codecs.encode(latin-1 text, 'latin1') in protocols < 3."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise UnsafePickleError("_codecs", f"encode(..., {encoding!r})")
    return text.encode("latin1")


def _numpy_module(suffix: str) -> Any:
    """numpy's internal module under either name (numpy 2 renamed numpy.core to numpy._core)."""
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{prefix}.{suffix}")
        except ImportError:
            continue
    return None


def checked_dtype(dtype: Any) -> np.dtype:
    """`dtype` if it is a plain numeric dtype exactly as numpy itself would build it, else UnpicklingError.

    A pickled dtype's BUILD state sets its flags directly: one flipped byte (found by the fuzz test) marked float64
    items as object references (NPY_ITEM_REFCOUNT), and an array of that dtype would then treat the file's numbers
    as pointers when it is freed. FLAME needs no object, structured or sub-array dtype, so any dtype whose flags or
    layout differ from the canonical one of its type string is refused before an array or scalar is made with it."""
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"{type(dtype).__name__} where a numpy dtype was expected")
    canonical = np.dtype(dtype.str)
    if dtype.flags != canonical.flags or dtype.itemsize != canonical.itemsize:
        raise pickle.UnpicklingError(f"numpy dtype {dtype.str!r} has altered flags ({dtype.flags})")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"numpy dtype {dtype.str!r} is not a plain number type")
    return dtype


class _CheckedArray(np.ndarray):
    """What the pickle's array reconstructor makes: BUILD's state is checked (its dtype above) before numpy's own
    __setstate__ fills the array."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        checked_dtype(state[-3])  # (version,) shape, dtype, is_fortran, data
        super().__setstate__(state)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")

    def reconstruct(cls: Any, shape: Any, typecode: Any) -> Any:
        if cls is not np.ndarray:
            raise UnsafePickleError("numpy", f"_reconstruct({getattr(cls, '__name__', cls)!r})")
        return multiarray._reconstruct(_CheckedArray, shape, typecode)

    def scalar(dtype: Any, *args: Any) -> Any:
        return multiarray.scalar(checked_dtype(dtype), *args)

    def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
        return numeric._frombuffer(buf, checked_dtype(dtype), shape, order)

    for prefix in ("numpy.core", "numpy._core"):  # files written by numpy 1.x or 2.x
        table[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = scalar
        if numeric is not None and hasattr(numeric, "_frombuffer"):
            table[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 exposes the dtype classes that BUILD may target
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                table[("numpy.dtypes", name)] = getattr(dtypes, name)
    return table


_BASE_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("collections", "OrderedDict"): OrderedDict,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): _safe_codecs_encode,
}


def _is_standin_global(module: str, name: str) -> bool:
    if module == "chumpy" or module.startswith("chumpy."):
        return True  # chumpy objects only carry their state; to_array decides what is usable
    return (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_NAMES


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class only knows the allow-list above (plus `extra`)."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        extra: Mapping[tuple[str, str], Any] | None = None,
        persistent_load: Callable[[Any], Any] | None = None,
    ):
        # latin1: Python 2 `str` payloads (array bytes) must come back byte-for-byte.
        super().__init__(file, encoding="latin1")
        self._extra = dict(extra or {})
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._extra:
            return self._extra[key]
        if key in _BASE_GLOBALS:
            return _BASE_GLOBALS[key]
        if _is_standin_global(module, name):
            return _standin_class(module, name)
        raise UnsafePickleError(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def restricted_loads(
    data: bytes,
    extra: Mapping[tuple[str, str], Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    # Fuzz finds: the C unpickler allocates a counted bytes argument's declared size before reading it (a 4-GB claim
    # in a 1-KB file) and grows (and zero-fills) its memo up to any PUT index. Walk the opcodes first in pure Python,
    # which reads only what is there (ValueError past the end), and bound memo indices by the opcodes so far (a
    # pickler numbers them from 0).
    for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (isinstance(arg, int) and 0 <= arg <= count):
            raise pickle.UnpicklingError(f"memo index {arg} at opcode {count} is out of range")
    return RestrictedUnpickler(io.BytesIO(data), extra, persistent_load).load()


def _state_dict(obj: StandIn) -> dict[str, Any]:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = {**state[0], **(state[1] or {})}  # (dict state, slot state) form
    if not isinstance(state, dict):
        raise ValueError(f"{obj.qualified_name()} object without readable state")
    return state


def _sparse_shape(obj: StandIn) -> tuple[int, int]:
    shape = _state_dict(obj).get("_shape", _state_dict(obj).get("shape"))
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, int | np.integer) for n in shape)):
        raise ValueError(f"{obj.qualified_name()} without a 2-d shape")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 0 or cols < 0:
        raise ValueError(f"{obj.qualified_name()} with a negative shape")
    return rows, cols


def _sparse_to_dense(obj: StandIn) -> np.ndarray:
    state = _state_dict(obj)
    rows, cols = _sparse_shape(obj)
    data = np.asarray(to_array(state["data"]), dtype=np.float64).ravel()
    fmt = obj.pickle_name[:3]
    if fmt == "coo":
        coords = state.get("coords")
        row_idx, col_idx = (coords[0], coords[1]) if coords is not None else (state["row"], state["col"])
    else:
        indices = np.asarray(to_array(state["indices"]), dtype=np.int64).ravel()
        indptr = np.asarray(to_array(state["indptr"]), dtype=np.int64).ravel()
        outer = cols if fmt == "csc" else rows
        if indptr.shape != (outer + 1,) or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
            raise ValueError(f"{obj.qualified_name()} with inconsistent index arrays")
        outer_idx = np.repeat(np.arange(outer), np.diff(indptr))
        row_idx, col_idx = (indices, outer_idx) if fmt == "csc" else (outer_idx, indices)
    row_idx = np.asarray(to_array(row_idx), dtype=np.int64).ravel()
    col_idx = np.asarray(to_array(col_idx), dtype=np.int64).ravel()
    if not (row_idx.size == col_idx.size == data.size):
        raise ValueError(f"{obj.qualified_name()} with inconsistent index arrays")
    if data.size and (row_idx.min() < 0 or row_idx.max() >= rows or col_idx.min() < 0 or col_idx.max() >= cols):
        raise ValueError(f"{obj.qualified_name()} with out-of-range indices")
    dense = np.zeros((rows, cols), dtype=np.float64)
    np.add.at(dense, (row_idx, col_idx), data)  # duplicates sum, as scipy's todense does
    return dense


def _chumpy_value(obj: StandIn) -> Any:
    state = _state_dict(obj)
    if obj.pickle_name != "Ch" or "x" not in state:
        # Derived chumpy expressions would need chumpy to evaluate; FLAME files store plain Ch arrays.
        raise ValueError(f"unsupported chumpy object {obj.qualified_name()}")
    return state["x"]


def _unwrap(obj: Any) -> Any:
    """Follow chumpy stand-ins to the value they hold (iteratively: a pickle may nest them deeply)."""
    for _ in range(_MAX_NESTING):
        if not (isinstance(obj, StandIn) and obj.pickle_module.startswith("chumpy")):
            return obj
        obj = _chumpy_value(obj)
    raise ValueError("chumpy objects nested too deeply")


def _is_sparse(obj: Any) -> bool:
    return (isinstance(obj, StandIn) and obj.pickle_name in _SPARSE_NAMES
            and obj.pickle_module.startswith("scipy.sparse"))


def _sequence_shape(obj: list | tuple) -> tuple[int, ...]:
    """numpy's shape for a nested list, read along the first elements (nothing is built)."""
    shape: list[int] = []
    item: Any = obj
    while isinstance(item, list | tuple):
        if len(shape) == _MAX_NESTING:
            raise ValueError("lists nested too deeply for an array")
        shape.append(len(item))
        if not item:
            break
        item = item[0]
    return tuple(shape)


def _check_list_size(obj: list | tuple, budget: int) -> None:
    """Raise ValueError when nested lists hold more than about `budget` values (at most ~2 x budget steps), before
    numpy walks them: a list may repeat one reference to a long list a million times."""
    limit = 2 * budget + _MAX_NESTING + 1
    stack: list[Any] = [obj]
    visited = 0
    while stack:
        item = stack.pop()
        visited += 1
        if isinstance(item, list | tuple):
            if visited + len(stack) + len(item) > limit:
                raise ValueError("nested lists hold more values than their shape says")
            stack.extend(item)


def declared_shape(obj: Any) -> tuple[int, ...]:
    """The shape `to_array(obj)` would have, read from the file's declarations without allocating it."""
    obj = _unwrap(obj)
    if _is_sparse(obj):
        return _sparse_shape(obj)
    if isinstance(obj, StandIn):
        raise ValueError(f"unsupported object {obj.qualified_name()}")
    if isinstance(obj, LazyArray | np.ndarray):
        return tuple(int(n) for n in obj.shape)
    if isinstance(obj, list | tuple):
        return _sequence_shape(obj)
    if isinstance(obj, int | float | np.generic):
        return ()
    raise ValueError(f"{type(obj).__name__} where an array was expected")


def _elements(shape: tuple[int, ...]) -> int:
    total = 1
    for n in shape:
        total *= int(n)  # Python ints: no overflow for absurd declarations
    return total


def to_array(obj: Any, max_elements: int = MAX_ELEMENTS) -> np.ndarray:
    """numpy array from an ndarray, a chumpy stand-in (its `x`), a scipy.sparse stand-in (densified) or a lazy
    tensor (read now). Raises ValueError, before allocating, when it would hold more than `max_elements` values."""
    shape = declared_shape(obj)
    count = _elements(shape)
    if count > max_elements:
        dims = " x ".join(f"{n:,}" for n in shape)
        raise ValueError(f"declares {dims} = {count:,} values, more than any FLAME array ({max_elements:,})")
    obj = _unwrap(obj)
    if _is_sparse(obj):
        return _sparse_to_dense(obj)
    if isinstance(obj, LazyArray):
        return obj.materialize()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise ValueError("object array where numbers were expected")
        return np.asarray(obj)  # a plain ndarray view of the unpickler's _CheckedArray
    if isinstance(obj, list | tuple):
        _check_list_size(obj, max(count, 1))
        arr = np.asarray(obj)
        if arr.dtype == object:
            raise ValueError("object array where numbers were expected")
        return arr
    return np.asarray(obj)
