"""The add-on's pure modules (no bpy): controls, simplification bound, style-from-action maths, paths, timing."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """Import blender_addon/<name>.py alone (the package's other modules need bpy)."""
    spec = importlib.util.spec_from_file_location(f"flametalk_addon_{name}", ROOT / "blender_addon" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


controls = _load("controls")
style = _load("style_from_action")
paths = _load("paths")
timing = _load("timing")


def _motion(frames: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / 25.0
    motion = np.sin(2 * np.pi * rng.uniform(0.3, 3, (1, 106)) * t + rng.uniform(0, 6, (1, 106)))
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


def test_cache_path_rule_matches_flametalk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assets = pytest.importorskip("flametalk.assets")
    for env in ({"FLAMETALK_CACHE": str(tmp_path / "c")}, {"XDG_CACHE_HOME": str(tmp_path / "x")},
                {"XDG_CACHE_HOME": "relative/ignored"}, {}):
        monkeypatch.delenv("FLAMETALK_CACHE", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert paths.cache_dir() == assets.cache_dir()
        assert paths.default_checkpoint_dir() == assets.default_checkpoint_dir()
        assert paths.style_dir() == assets.style_dir()


def test_checkpoint_and_file_problems(tmp_path: Path) -> None:
    assert "checkpoint not found" in paths.checkpoint_problem(tmp_path / "nope")
    assert "no weights file" in paths.checkpoint_problem(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    assert "config.json missing" in paths.checkpoint_problem(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert paths.checkpoint_problem(tmp_path) is None and paths.checkpoint_problem(tmp_path / "model.pt") is None
    (tmp_path / "style_motion").mkdir()
    (tmp_path / "style_motion" / "natural_0.pt").write_bytes(b"x")
    assert paths.release_styles(tmp_path) == ["natural_0"]
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "empty" in paths.file_problem(tmp_path / "empty.wav", "audio file")
    assert "not found" in paths.file_problem(tmp_path / "x.wav", "audio file")


@pytest.mark.parametrize(("rate", "expected"), [(24, (24, 1.0)), (25, (25, 1.0)), (30, (30, 1.0)),
                                                (29.97, (30, 1.001)), (30000 / 1001, (30, 1.001)),
                                                (23.976, (24, 1.001)), (12.5, (12, 12 / 12.5))])
def test_fps_settings(rate: float, expected: tuple[int, float]) -> None:
    fps, base = timing.fps_settings(rate)
    assert (fps, base) == pytest.approx(expected)
    assert abs(fps / base - rate) < 1e-3
