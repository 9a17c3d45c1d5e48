"""`python -m flametalk evaluate`: generate motion for every clip of a split and score it against the recorded
motion with LVE, FDD and MOD (metrics.py) on FLAME vertices.

Both motions go through the same FLAME forward pass (the clip's identity `shape` when its .npz has one). By
default the head rotation is left out (the metrics measure the face; head pose would dominate every vertex
distance): `head_pose=True` keeps it. Generation uses no style clip unless `style_from_clip`, which takes the
first 2 s of the recorded motion (the paper conditions on the speaker's own style).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..flame.contract import MOTION_DIM, STYLE_FRAMES
from .metrics import MetricAccumulator, load_masks, split_lips, upper_face

UNITS = {"LVE": "m^2", "FDD": "m^2", "MOD": "m", "LVE_dist": "m", "FDD_dist": "m"}


def flame_vertices(flame: Any, motion: np.ndarray, shape: np.ndarray | None, head_pose: bool) -> np.ndarray:
    from ..flame.lbs import forward_motion

    motion = np.array(motion, dtype=np.float64)
    if not head_pose:
        motion[:, 100:103] = 0.0
    return forward_motion(flame, motion, shape)


def neutral(flame: Any, shape: np.ndarray | None) -> np.ndarray:
    from ..flame.lbs import forward_motion

    return forward_motion(flame, np.zeros((1, MOTION_DIM)), shape)[0]


def score_motions(pairs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], flame: Any,
                  masks: dict[str, np.ndarray], head_pose: bool = False) -> dict[str, Any]:
    """pairs: (name, predicted motion, recorded motion, shape or None) -> metrics (+ per clip)."""
    template0 = neutral(flame, None)
    upper_lip, lower_lip = split_lips(template0, masks["lips"])
    acc = MetricAccumulator(masks["lips"], upper_face(masks), upper_lip, lower_lip)
    for name, pred, true, shape in pairs:
        template = neutral(flame, shape)
        acc.add(name, flame_vertices(flame, pred, shape, head_pose), flame_vertices(flame, true, shape, head_pose),
                template)
    return {**acc.result(), "per_clip": acc.per_clip}


def evaluate(checkpoint: str, data: str, flame_path: str, masks_path: str, split: str = "test",
             split_file: str = "split.json", device: str = "cpu", postprocess: bool = True,
             head_pose: bool = False, style_from_clip: bool = False,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from ..decode.pipeline import generate_motion
    from ..decode.postprocess import postprocess_motion
    from ..flame import load_flame
    from ..io.checkpoint import load_checkpoint
    from .data import load_split

    flame = load_flame(flame_path)  # cheap checks before the model load
    masks = load_masks(masks_path)
    clips, report = load_split(data, split, split_file)
    model = load_checkpoint(checkpoint, device=device)
    pairs = []
    for i, clip in enumerate(clips):
        style = clip.motion[:STYLE_FRAMES] if style_from_clip and clip.motion.shape[0] >= STYLE_FRAMES else None
        pred = generate_motion(model, clip.audio, style)
        if postprocess:
            pred = postprocess_motion(pred)
        pairs.append((clip.name, pred, clip.motion, clip.shape))
        if progress:
            progress(i + 1, len(clips))
    result = score_motions(pairs, flame, masks, head_pose)
    result["skipped_bad_clips"] = sorted(n for n in report.splits.get(split, []) if n in report.bad)
    result["settings"] = {"checkpoint": str(checkpoint), "data": str(data), "split": split,
                          "postprocess": postprocess, "head_pose": head_pose, "style_from_clip": style_from_clip}
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'metric':<10} {'value':>14}  unit", f"{'-' * 10} {'-' * 14}  ----"]
    for key in ("LVE", "FDD", "MOD", "LVE_dist", "FDD_dist"):
        lines.append(f"{key:<10} {result[key]:>14.6e}  {UNITS[key]}")
    lines.append(f"{int(result['clips'])} clips, {int(result['frames'])} frames")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1, sort_keys=True))
