"""Animator controls applied to a motion before it is keyed (numpy only: no bpy, no scipy inside Blender).

Motion layout (T, 106) at 25 fps: 0:100 FLAME expression coefficients, 100:103 head (root) rotation, 103:106 jaw
rotation, both axis-angle in FLAME's frame.

- Intensities scale channel groups: `jaw` scales the jaw rotation vector (its angle), `expression` the 100
  expression coefficients, `head` the head rotation vector. 1 = as generated, 0 = off (rest), > 1 exaggerates.
- `smoothing` is the standard deviation, in motion frames, of a Gaussian filter along time (0 = off). The ends are
  mirrored so a clip does not drift towards zero at its first and last frames.
- Simplification (done while keying, see keyframes.write_take) keeps the fewest keys whose LINEAR interpolation
  stays within a tolerance of every generated frame: Ramer-Douglas-Peucker on (frame, value) with the error taken
  as the value difference at the same frame. Both curves are piecewise linear with corners only at motion frames,
  so the largest difference over all (also fractional) frames is reached at a motion frame: the bound is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT, MOTION_DIM


@dataclass(frozen=True)
class Controls:
    jaw: float = 1.0
    expression: float = 1.0
    head: float = 1.0
    smoothing: float = 0.0  # Gaussian sigma in motion frames; 0 = off
    simplify: bool = False
    expression_tolerance: float = 0.02  # coefficient units
    rotation_tolerance_deg: float = 0.25  # bound on the rotation angle error, roughly (see quaternion_tolerance)

    def check(self) -> None:
        for name in ("jaw", "expression", "head", "smoothing", "expression_tolerance", "rotation_tolerance_deg"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"control '{name}' must be a number >= 0, got {value}")

    @property
    def is_identity(self) -> bool:
        return (self.jaw, self.expression, self.head, self.smoothing) == (1.0, 1.0, 1.0, 0.0)


def apply_controls(motion: np.ndarray, controls: Controls) -> np.ndarray:
    """(T, 106) float32 motion with intensities and smoothing applied (a new array)."""
    controls.check()
    motion = np.asarray(motion, dtype=np.float64)
    if motion.ndim != 2 or motion.shape[1] != MOTION_DIM:
        raise ValueError(f"motion must have shape (T, {MOTION_DIM}), got {motion.shape}")
    out = motion.copy()
    out[:, EXPR] *= controls.expression
    out[:, HEAD_ROT] *= controls.head
    out[:, JAW_ROT] *= controls.jaw
    if controls.smoothing > 0:
        out = gaussian_smooth(out, controls.smoothing)
    return out.astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0 of (T,) or (T, C) values, ends mirrored (numpy's 'reflect' padding)."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    flat = values.reshape(len(values), -1)
    padded = np.pad(flat, ((radius, radius), (0, 0)), mode="reflect")
    # One matrix product over sliding windows: (T, K) windows per channel, cheap for a few thousand frames.
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=0)  # (T, C, K)
    return (windows @ kernel).reshape(values.shape)


def quaternion_tolerance(rotation_deg: float) -> float:
    """Per-component quaternion tolerance for a rotation error of about `rotation_deg`.

    If each of the 4 components is off by at most e, the quaternion is off by at most 2e, and the rotation angle
    by about twice that: 4e. So e = angle / 4 (small angles, unit quaternions).
    """
    return math.radians(rotation_deg) / 4.0


def simplify_indices(frames: np.ndarray, values: np.ndarray, tolerance: float | np.ndarray) -> np.ndarray:
    """Indices of the keys to keep so linear interpolation between them stays within `tolerance` of `values`.

    frames: (T,) increasing; values: (T,) or (T, C) (C curves keyed together, e.g. a quaternion's 4 components
    share their keys); tolerance: scalar or (C,), >= 0. The first and last keys are always kept.
    """
    x = np.asarray(frames, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    if n <= 2:
        return np.arange(n)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (y.shape[1],))
    if np.any(tol < 0) or not np.all(np.isfinite(tol)):
        raise ValueError("simplification tolerance must be a finite number >= 0")
    inv_tol = 1.0 / np.maximum(tol, 1e-12)  # 0 keeps every key that is not exactly on the line
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        t = (x[a + 1 : b] - x[a]) / (x[b] - x[a])
        line = y[a] + t[:, None] * (y[b] - y[a])
        err = np.max(np.abs(y[a + 1 : b] - line) * inv_tol, axis=1)
        k = int(np.argmax(err))
        if err[k] > 1.0:
            m = a + 1 + k
            keep[m] = True
            stack.append((a, m))
            stack.append((m, b))
    return np.nonzero(keep)[0]


def max_interpolation_error(frames: np.ndarray, values: np.ndarray, kept: np.ndarray) -> float:
    """Largest |values - linear interpolation through the kept keys| over all frames (for tests and reports)."""
    x = np.asarray(frames, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64).reshape(len(x), -1)
    worst = 0.0
    for c in range(y.shape[1]):
        approx = np.interp(x, x[kept], y[kept, c])
        worst = max(worst, float(np.max(np.abs(approx - y[:, c]))))
    return worst
