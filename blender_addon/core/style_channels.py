"""Turn animation already on a FLAME head back into ARTalk's 106-channel motion (numpy only, no bpy).

Used to take a style clip from the scene: the frames of an action (shape-key values + bone rotations), sampled at
25 fps, become a (T, 106) motion: 0:100 expression coefficients = the `exp_NNN` shape-key values, 100:103 the root
bone's rotation, 103:106 the jaw bone's rotation. The rig's bones have FLAME's axes as their local axes (scene/rig.py),
so a bone quaternion IS the FLAME joint rotation: it only needs converting to axis-angle, no change of axes.
"""

from __future__ import annotations

import numpy as np

from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT, MOTION_DIM, MOTION_FPS, STYLE_FRAMES

N_EXPR = EXPR.stop - EXPR.start


def quaternion_to_axis_angle(quats: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle vectors from (..., 4) quaternions (w, x, y, z), any length and sign.

    q and -q are the same rotation: the one with w >= 0 is used, so angles come out in [0, pi]. Near zero the
    series 2 / w * (1 - |v|^2 / (3 w^2)) replaces 2 * atan2(|v|, w) / |v| (no 0/0).
    """
    q = np.asarray(quats, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(q)):
        raise ValueError("a rotation quaternion is zero or not finite")
    q = q / norm
    q = np.where(q[..., :1] < 0, -q, q)
    w, v = q[..., 0:1], q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    small = s < 1e-7
    safe_s = np.where(small, 1.0, s)
    scale = np.where(small, 2.0 / np.maximum(w, 1e-12) * (1.0 - s * s / (3.0 * w * w)),
                     2.0 * np.arctan2(s, w) / safe_s)
    return v * scale


def motion_from_channels(expression: np.ndarray, root_quat: np.ndarray, jaw_quat: np.ndarray) -> np.ndarray:
    """(T, 106) float32 motion from (T, E <= 100) shape-key values and (T, 4) root/jaw bone quaternions."""
    expression = np.asarray(expression, dtype=np.float64)
    if expression.ndim != 2 or expression.shape[1] > N_EXPR:
        raise ValueError(f"expression values must be (T, <= {N_EXPR}), got {expression.shape}")
    count = expression.shape[0]
    for name, quat in (("root", root_quat), ("jaw", jaw_quat)):
        if np.shape(quat) != (count, 4):
            raise ValueError(f"{name} quaternions must be ({count}, 4), got {np.shape(quat)}")
    motion = np.zeros((count, MOTION_DIM), dtype=np.float64)
    motion[:, EXPR.start : EXPR.start + expression.shape[1]] = expression
    motion[:, HEAD_ROT] = quaternion_to_axis_angle(root_quat)
    motion[:, JAW_ROT] = quaternion_to_axis_angle(jaw_quat)
    return motion.astype(np.float32)


def style_frames(start_frame: float, scene_fps: float, count: int = STYLE_FRAMES) -> np.ndarray:
    """Scene frames at which to sample `count` motion frames (MOTION_FPS) starting at `start_frame`."""
    if scene_fps <= 0:
        raise ValueError(f"scene fps must be positive, got {scene_fps}")
    return float(start_frame) + np.arange(count, dtype=np.float64) * (scene_fps / MOTION_FPS)
