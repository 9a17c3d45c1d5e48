"""Release post-processing: Savitzky-Golay (5, 2) on all channels, head rotation (9, 3) from the raw values, jaw
roll/yaw zeroed; short clips handled."""

from __future__ import annotations

import numpy as np
import pytest
from flametalk.decode.postprocess import effective_window, postprocess_motion
from scipy.signal import savgol_filter


def polynomial_motion(frames: int, degree: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.linspace(-1.0, 1.0, frames)[:, None]
    coeffs = rng.standard_normal((degree + 1, 106))
    return sum(coeffs[k] * t**k for k in range(degree + 1)).astype(np.float32)


def test_quadratics_and_head_cubics_pass_unchanged_and_jaw_roll_yaw_is_zeroed():
    raw = polynomial_motion(40, degree=2)
    raw[:, 100:103] = polynomial_motion(40, degree=3, seed=1)[:, 100:103]  # order-3 pass keeps cubics
    out = postprocess_motion(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    # A least-squares polynomial of degree >= the signal's reproduces it, interior and ('interp') edges alike.
    np.testing.assert_allclose(out[:, :104], raw[:, :104], atol=2e-5)
    assert not out[:, 104:106].any()


def test_hand_checked_impulse_response():
    raw = np.zeros((21, 106), np.float32)
    raw[10, 0] = 35.0
    raw[10, 101] = 231.0
    out = postprocess_motion(raw)
    # Savitzky-Golay window 5, order 2 smoothing weights: (-3, 12, 17, 12, -3) / 35.
    np.testing.assert_allclose(out[8:13, 0], [-3, 12, 17, 12, -3], atol=1e-4)
    assert not out[:8, 0].any() and not out[13:, 0].any()
    # Window 9, order 3 (same as order 2 for the central value): (-21, 14, 39, 54, 59, 54, 39, 14, -21) / 231.
    np.testing.assert_allclose(out[6:15, 101], [-21, 14, 39, 54, 59, 54, 39, 14, -21], atol=1e-3)


def test_matches_the_release_recipe_on_random_motion():
    raw = np.random.default_rng(3).standard_normal((57, 106)).astype(np.float32)
    before = raw.copy()
    out = postprocess_motion(raw)
    np.testing.assert_array_equal(raw, before)  # input untouched
    smooth = savgol_filter(raw, window_length=5, polyorder=2, axis=0)
    head = savgol_filter(raw[:, 100:103], window_length=9, polyorder=3, axis=0)  # from the RAW head channels
    np.testing.assert_array_equal(out[:, :100], smooth[:, :100])
    np.testing.assert_array_equal(out[:, 100:103], head)
    np.testing.assert_array_equal(out[:, 103], smooth[:, 103])
    assert not out[:, 104:].any()
    chained = savgol_filter(smooth[:, 100:103], window_length=9, polyorder=3, axis=0)
    assert np.abs(out[:, 100:103] - chained).max() > 1e-3  # not filtered twice


@pytest.mark.parametrize("frames", range(9))
def test_short_clips_do_not_crash(frames):
    raw = np.random.default_rng(frames).standard_normal((frames, 106)).astype(np.float32)
    out = postprocess_motion(raw)
    assert out.shape == (frames, 106) and out.dtype == np.float32 and np.isfinite(out).all()
    assert not out[:, 104:].any()
    if frames <= 4:  # every pass is skipped or uses an exact fit: the values come through unchanged
        np.testing.assert_allclose(out[:, :104], raw[:, :104], atol=1e-5)
    if frames >= 5:  # the first pass is the release's own
        np.testing.assert_array_equal(out[:, :100], savgol_filter(raw, 5, 2, axis=0)[:, :100])


@pytest.mark.parametrize(
    "frames,window,order,expected",
    [(100, 9, 3, 9), (9, 9, 3, 9), (8, 9, 3, 7), (5, 9, 3, 5), (4, 9, 3, None), (4, 5, 2, 3), (3, 5, 2, 3),
     (2, 5, 2, None), (1, 5, 2, None), (0, 5, 2, None)],
)  # fmt: skip
def test_effective_window_rule(frames, window, order, expected):
    assert effective_window(frames, window, order) == expected


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        postprocess_motion(np.zeros((10, 105), np.float32))
