"""core/style_channels.py (no bpy): bone quaternions and shape-key values back to ARTalk's motion channels."""

from __future__ import annotations

import numpy as np

from blender_addon.core import style_channels as style


def test_quaternion_to_axis_angle_round_trip() -> None:
    rng = np.random.default_rng(1)
    aa = rng.normal(size=(200, 3)) * 0.8
    aa[:3] = [[0, 0, 0], [1e-9, 0, 0], [0, 0, 3.0]]
    half = np.linalg.norm(aa, axis=1, keepdims=True) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        axis = np.where(half > 0, aa / np.maximum(2 * half, 1e-300), 0)
    quats = np.concatenate([np.cos(half), axis * np.sin(half)], axis=1)
    np.testing.assert_allclose(style.quaternion_to_axis_angle(quats), aa, atol=1e-9)
    np.testing.assert_allclose(style.quaternion_to_axis_angle(-3.0 * quats), aa, atol=1e-9)  # sign and length
    motion = style.motion_from_channels(rng.normal(size=(4, 60)), quats[:4], quats[4:8])
    assert motion.shape == (4, 106) and np.all(motion[:, 60:100] == 0)
    np.testing.assert_allclose(motion[:, 103:], aa[4:8], atol=1e-6)
    np.testing.assert_allclose(style.style_frames(10, 30.0, 3), [10, 11.2, 12.4])
