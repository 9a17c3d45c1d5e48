"""The release's post-processing of raw model motion (T, 106) at 25 fps.

What the release does (its inference script, read for facts):
  1. smoothed = savgol_filter(raw, window_length=5, polyorder=2, axis=0)            # all 106 channels
  2. smoothed[:, 100:103] = savgol_filter(raw[:, 100:103], window_length=9, polyorder=3, axis=0)
     -- the head-rotation pass reads the RAW head channels, not the output of step 1, and replaces them;
  3. channels 104:106 (jaw roll/yaw; 103 is the jaw opening) are set to 0.
Both calls use scipy's defaults otherwise: mode='interp' (a polynomial fitted to the first/last window gives the
edge values), deriv=0, delta=1. This module does the same, with the same scipy function.

Short clips (our choice; the release raises for T < 5, and for T < 9 in step 2): each pass shrinks its window to
the largest odd length <= T. If that window is not longer than the polynomial order, the pass is skipped: a
polynomial of degree `polyorder` through that few frames reproduces them exactly, so skipping is what the filter
converges to (e.g. T <= 2 for step 1, T <= 4 for step 2, T = 3 with window 3 order 2 is the identity too).
Clips of >= 9 frames are filtered exactly as in the release.
"""

from __future__ import annotations

import numpy as np

from ..flame.contract import HEAD_ROT, MOTION_DIM

SMOOTH_WINDOW = 5  # frames (0.2 s at 25 fps), all channels
SMOOTH_ORDER = 2
HEAD_WINDOW = 9  # frames (0.36 s at 25 fps), head rotation axis-angle channels 100:103
HEAD_ORDER = 3
ZEROED = slice(104, 106)  # jaw rotation y/z (roll/yaw) in radians: the release sets them to 0

__all__ = ["HEAD_ORDER", "HEAD_WINDOW", "SMOOTH_ORDER", "SMOOTH_WINDOW", "ZEROED", "postprocess_motion", "savgol"]


def effective_window(n_frames: int, window: int, polyorder: int) -> int | None:
    """Window length used for a clip of `n_frames`, or None when the pass is skipped (see module docstring)."""
    w = min(window, n_frames)
    if w % 2 == 0:
        w -= 1
    return w if w > polyorder else None


def savgol(x: np.ndarray, window: int, polyorder: int) -> np.ndarray:
    """scipy's Savitzky-Golay filter along axis 0 (mode 'interp'), with the short-clip rule; returns a new array."""
    from scipy.signal import savgol_filter

    w = effective_window(x.shape[0], window, polyorder)
    if w is None:
        return np.array(x, copy=True)
    return savgol_filter(x, window_length=w, polyorder=polyorder, axis=0)


def postprocess_motion(motion: np.ndarray) -> np.ndarray:
    """Release post-processing of raw motion (T, 106) -> new float32 array (T, 106). The input is not modified."""
    raw = np.asarray(motion)
    if raw.ndim != 2 or raw.shape[1] != MOTION_DIM:
        raise ValueError(f"motion must have shape (T, {MOTION_DIM}), got {tuple(raw.shape)}")
    if raw.shape[0] == 0:
        return np.zeros((0, MOTION_DIM), dtype=np.float32)
    # The release filters float32 numpy arrays (scipy computes in float64 internally and returns float64 for
    # float32 input); cast back to float32 at the end, as the release does with .type_as().
    raw32 = raw.astype(np.float32, copy=False)
    out = savgol(raw32, SMOOTH_WINDOW, SMOOTH_ORDER)
    out[:, HEAD_ROT] = savgol(raw32[:, HEAD_ROT], HEAD_WINDOW, HEAD_ORDER)
    out[:, ZEROED] = 0.0
    return out.astype(np.float32, copy=False)
