"""Frame-rate arithmetic (no bpy): scene rates, where motion frames and sound land on the timeline.

Blender's scene rate is `render.fps / render.fps_base` (29.97 = 30 / 1.001). A 25 fps motion frame i starts at
i / 25 s after the sound does, so with the sound strip starting at scene frame S it is keyed at the (generally
fractional) frame S + i * scene_fps / 25. Nothing is resampled: keys carry the generated values exactly and
linear interpolation gives whole frames (what exporters sample) the in-between values.
"""

from __future__ import annotations

import math

from ..flame.contract import MOTION_FPS

NTSC_BASE = 1.001


def fps_settings(rate: float) -> tuple[int, float]:
    """(render.fps, render.fps_base) for a rate: 25 -> (25, 1.0); 29.97 / 30000/1001 -> (30, 1.001)."""
    if not (math.isfinite(rate) and 0 < rate <= 1000):
        raise ValueError(f"frame rate must be a positive number, got {rate:g}")
    ntsc = round(rate * NTSC_BASE)
    if abs(rate - round(rate)) > 1e-6 and ntsc >= 1 and abs(rate * NTSC_BASE - ntsc) < 2e-3:
        return int(ntsc), NTSC_BASE
    whole = max(1, round(rate))
    return int(whole), whole / rate


def scene_rate(fps: int, fps_base: float) -> float:
    return fps / fps_base


def motion_frame(index: float, scene_fps: float, start: float, motion_fps: float = MOTION_FPS) -> float:
    """Scene frame of motion frame `index` (its start time)."""
    return start + index * scene_fps / motion_fps


def seconds_to_frames(seconds: float, scene_fps: float) -> float:
    return seconds * scene_fps
