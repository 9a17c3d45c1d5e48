"""Hand back the memory of checkpoint weights once they have been converted (packed, cast to bf16, quantised).

`torch.load(mmap=True)` maps the whole weights file once (private, read-only use). Every page a conversion reads
stays resident, and counted in the process's memory, for as long as any tensor of the file lives, which the
autoencoder's fp32 weights do for the whole session: packing the 2 GB release file for exact mode peaked at
4.3 GB and stayed there in the warm worker. After a weight is converted, the pages wholly inside it are dropped
with madvise(MADV_DONTNEED): on a private, unmodified file mapping that only forgets the cached copy (a later read
would fetch the same bytes from the file again), so nothing is lost.

Safety: a weight's pages are dropped only if its storage lies inside the address range of the file's mapping as
/proc/self/maps lists it, and an anchor tensor keeps that mapping alive until the model is prepared (so no other
allocation can reuse those addresses meanwhile). Linux only; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch

from .heap import libc

MADV_DONTNEED = 4  # Linux <sys/mman.h>
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class FileWeights:
    anchor: torch.Tensor  # keeps the mapping alive while conversions may still drop pages of it
    lo: int
    hi: int


_ACTIVE: ContextVar[FileWeights | None] = ContextVar("flametalk_file_weights", default=None)


def mapped_range(path: Path, lo: int, hi: int) -> bool:
    """Whether one private mapping of `path` covers [lo, hi)."""
    target = str(path.resolve())
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() == target and parts[1].endswith("p"):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    if start <= lo and hi <= end:
                        return True
    except OSError:
        return False
    return False


def track(state: dict[str, torch.Tensor], weights: Path) -> FileWeights | None:
    """Describe the mapping behind a state dict from torch.load(mmap=True); None if it is not one (or not Linux)."""
    if not sys.platform.startswith("linux") or not state:
        return None
    spans = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in state.values()
             if t.device.type == "cpu"]
    if not spans:
        return None
    lo, hi = min(p for p, _ in spans), max(p + n for p, n in spans)
    if not mapped_range(weights, lo, hi):
        return None
    return FileWeights(next(iter(state.values())), lo, hi)


@contextmanager
def releasing(file_weights: FileWeights | None) -> Iterator[None]:
    """Within this block, done_with() drops the file pages of converted weights of `file_weights`."""
    token = _ACTIVE.set(file_weights)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def done_with(tensor: torch.Tensor | None) -> bool:
    """Drop the file pages wholly inside `tensor`'s storage if it lives in the active mapping. Returns whether."""
    fw = _ACTIVE.get()
    if fw is None or tensor is None or tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return False
    storage = tensor.untyped_storage()
    ptr, size = storage.data_ptr(), storage.nbytes()
    if not (fw.lo <= ptr and ptr + size <= fw.hi):
        return False
    start = -(-ptr // PAGE) * PAGE
    end = (ptr + size) // PAGE * PAGE
    if end <= start:
        return False
    return _madvise()(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0


@functools.cache
def _madvise():
    """libc's madvise with its argument types, set up once (a model has ~800 weights to hand back)."""
    fn = libc().madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn
