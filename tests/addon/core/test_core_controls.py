"""core/controls.py (no bpy): intensities, smoothing, and the simplification's error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core import controls
from blender_addon.flame.contract import MOTION_DIM, MOTION_FPS


def _motion(frames: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / MOTION_FPS
    motion = np.sin(2 * np.pi * rng.uniform(0.3, 3, (1, MOTION_DIM)) * t + rng.uniform(0, 6, (1, MOTION_DIM)))
    motion += noise * rng.normal(size=motion.shape)
    motion[:, 100:] *= 0.2
    return motion.astype(np.float32)


def test_intensities_scale_their_channel_groups_only() -> None:
    motion = _motion(40)
    out = controls.apply_controls(motion, controls.Controls(jaw=1.5, expression=0.5, head=0.0))
    np.testing.assert_allclose(out[:, :100], 0.5 * motion[:, :100], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 100:103], 0.0)  # head 0 = off
    np.testing.assert_allclose(out[:, 103:], 1.5 * motion[:, 103:], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(controls.apply_controls(motion, controls.Controls()), motion)
    with pytest.raises(ValueError, match="jaw"):
        controls.apply_controls(motion, controls.Controls(jaw=-1))


def test_smoothing_is_a_normalised_gaussian_with_mirrored_ends() -> None:
    constant = np.full((30, 106), 0.7, dtype=np.float32)
    np.testing.assert_allclose(controls.apply_controls(constant, controls.Controls(smoothing=2.0)), constant,
                               rtol=1e-6)  # no drift at the ends
    line = np.linspace(-1, 1, 50)[:, None].repeat(3, axis=1)
    np.testing.assert_allclose(controls.gaussian_smooth(line, 1.5)[10:-10], line[10:-10], atol=1e-12)
    noisy = np.random.default_rng(3).normal(size=(200, 106)).astype(np.float32)
    smoothed = controls.apply_controls(noisy, controls.Controls(smoothing=2.0))
    assert np.std(np.diff(smoothed, axis=0)) < 0.5 * np.std(np.diff(noisy, axis=0))
    spike = np.zeros(21)
    spike[10] = 1.0
    kernel = controls.gaussian_smooth(spike, 1.0)
    assert abs(kernel.sum() - 1.0) < 1e-12 and np.argmax(kernel) == 10


@pytest.mark.parametrize("tolerance", [0.0, 0.01, 0.05, 0.2])
def test_simplification_keeps_the_error_bound_and_drops_keys(tolerance: float) -> None:
    frames = 1 + np.arange(250) * 30 / 25  # fractional frames, as in a 30 fps scene
    values = _motion(250, seed=5, noise=0.0)[:, 7].astype(np.float64)
    kept = controls.simplify_indices(frames, values, tolerance)
    assert kept[0] == 0 and kept[-1] == 249 and np.all(np.diff(kept) > 0)
    error = controls.max_interpolation_error(frames, values, kept)
    assert error <= tolerance + 1e-12
    # Between motion frames both curves are straight, so checking a fine grid adds nothing beyond the bound.
    fine = np.linspace(frames[0], frames[-1], 5000)
    exact = np.interp(fine, frames, values)
    assert np.max(np.abs(np.interp(fine, frames[kept], values[kept]) - exact)) <= tolerance + 1e-12
    if tolerance >= 0.05:
        assert len(kept) < 0.5 * len(frames)


def test_simplification_of_joint_channels_and_flat_curves() -> None:
    frames = np.arange(100, dtype=np.float64)
    assert list(controls.simplify_indices(frames, np.full(100, 0.3), 0.01)) == [0, 99]
    quats = np.stack([np.cos(frames / 40), np.sin(frames / 40), 0 * frames, 0 * frames], axis=1)
    tol = controls.quaternion_tolerance(0.5)
    kept = controls.simplify_indices(frames, quats, tol)
    assert controls.max_interpolation_error(frames, quats, kept) <= tol + 1e-12 and len(kept) < 40
    assert math.isclose(tol, math.radians(0.5) / 4)
