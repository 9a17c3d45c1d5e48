"""core/timing.py (no bpy): scene frame rates as Blender's (fps, fps_base)."""

from __future__ import annotations

import pytest

from blender_addon.core import timing


@pytest.mark.parametrize(("rate", "expected"), [(24, (24, 1.0)), (25, (25, 1.0)), (30, (30, 1.0)),
                                                (29.97, (30, 1.001)), (30000 / 1001, (30, 1.001)),
                                                (23.976, (24, 1.001)), (12.5, (12, 12 / 12.5))])
def test_fps_settings(rate: float, expected: tuple[int, float]) -> None:
    fps, base = timing.fps_settings(rate)
    assert (fps, base) == pytest.approx(expected)
    assert abs(fps / base - rate) < 1e-3
