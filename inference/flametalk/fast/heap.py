"""glibc heap policy: hand converted weights' memory back once, keep generation's buffers in the process.

`release_free_heap` returns what model preparation freed (replaced, unpacked weights). `keep_activation_memory`
then keeps generation's activation memory in the process instead of handing it back to the OS after every op.

glibc serves each allocation of 128 KiB or more (raised on the fly up to 32 MiB) with its own mmap and unmaps it on
free, and trims the heap top back to the OS as soon as ~256 KiB lie free there. A 4-s window allocates and frees
hundreds of such buffers (a 20 MB im2col matrix, 3 MB quantised activations per layer, ...), so each one is
re-faulted page by page: ~55,000 minor faults per 20-s clip in fast mode, and on a virtual machine a fault costs
several microseconds (most of the feature extractor's first layer's time went to faults).
Serving buffers up to 32 MiB from the heap and not trimming it during generation removes nearly all of them.

Peak memory does not grow (the same buffers were resident while alive); the process keeps up to its peak after a
generation, which the warm worker does anyway for the loaded model. glibc Linux only; elsewhere nothing changes.
`FLAMETALK_HEAP_TUNE=0` leaves glibc's defaults (for A/B timing).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit; bigger buffers stay mmapped
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024  # free heap top kept for the next window instead of trimmed
ENV_SWITCH = "FLAMETALK_HEAP_TUNE"


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, looked up once (filepages.py uses its madvise)."""
    return ctypes.CDLL(None, use_errno=True)


def release_free_heap() -> None:
    """Give freed heap pages (e.g. replaced, unpacked weights) back to the OS; glibc keeps them otherwise (~30 MB
    RSS after packing). glibc Linux only."""
    if sys.platform.startswith("linux"):
        trim = getattr(libc(), "malloc_trim", None)
        if trim is not None:
            trim(0)


def keep_activation_memory() -> bool:
    """Apply the settings above once per process. Returns whether glibc accepted them (False elsewhere)."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    return _apply()


@functools.cache
def _apply() -> bool:
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # Order matters: setting either one turns off glibc's dynamic threshold; with only the trim threshold set,
    # every buffer over 128 KiB would be mmapped again (measured 1.9 M faults per clip).
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return mmap_ok and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        c = libc()
    except OSError:
        return None
    if not hasattr(c, "gnu_get_libc_version") or not hasattr(c, "mallopt"):
        return None  # musl and others: different allocator, no such knobs
    fn = c.mallopt
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn
