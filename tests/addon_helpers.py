"""Helpers shared by the add-on tests that run inside bpy."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import bpy  # noqa: E402

from blender_addon import compat  # noqa: E402


def write_wav(path: Path, seconds: float, rate: int = 16000, seed: int = 0, loud: float = 0.05) -> Path:
    """16-bit mono WAV of quiet noise (stdlib only)."""
    rng = np.random.default_rng(seed)
    samples = np.clip(rng.standard_normal(int(round(seconds * rate))) * loud, -1, 1)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def set_scene_fps(rate: float) -> float:
    from blender_addon.timing import fps_settings

    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = fps_settings(rate)
    return scene.render.fps / scene.render.fps_base


def curves_by_path(action: bpy.types.Action) -> dict[tuple[str, int], bpy.types.FCurve]:
    return {(fc.data_path, fc.array_index): fc for fc in compat.iter_action_fcurves(action)}


def keys(fcurve: bpy.types.FCurve) -> np.ndarray:
    co = np.empty(2 * len(fcurve.keyframe_points), dtype=np.float32)
    fcurve.keyframe_points.foreach_get("co", co)
    return co.reshape(-1, 2)


def scene_state() -> dict:
    """Everything a failed or cancelled Generate must leave as it was."""
    scene = bpy.context.scene
    editor = scene.sequence_editor
    state = {
        "objects": sorted(o.name for o in bpy.data.objects),
        "actions": sorted(a.name for a in bpy.data.actions),
        "strips": sorted(s.name for s in compat.all_strips(editor)),
        "range": (scene.frame_start, scene.frame_end),
        "sync": scene.sync_mode,
        "fps": (scene.render.fps, scene.render.fps_base),
        "sounds": len(bpy.data.sounds),
    }
    for obj in bpy.data.objects:
        adt = obj.animation_data
        state[f"active:{obj.name}"] = adt.action.name if adt and adt.action else None
        state[f"nla:{obj.name}"] = len(adt.nla_tracks) if adt else 0
        if obj.type == "MESH" and obj.data.shape_keys:
            kadt = obj.data.shape_keys.animation_data
            state[f"key:{obj.name}"] = kadt.action.name if kadt and kadt.action else None
    return state


def set_frame(frame: float) -> None:
    whole = int(np.floor(frame))
    bpy.context.scene.frame_set(whole, subframe=float(frame - whole))
