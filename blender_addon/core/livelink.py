"""ARKit weights as Live Link Face's CSV (what Unreal's and Unity's face importers read); stdlib + numpy, no bpy.

Columns: Timecode (HH:MM:SS:FF.mmm at the motion's 25 fps), BlendShapeCount (61), the 52 ARKit shapes in Live Link's
order with capitalised names, then head and eye yaw/pitch/roll (0: the head rotation is keyed on the character).
Keys named in the variants rigs use map to ARKit names (flame/arkit.py: `mouthSmile_L` -> MouthSmileLeft); the two
halves of an unsided shape (`browInnerUp_L`, `browInnerUp_R`) are averaged; shapes the character lacks are 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..flame.arkit import LIVE_LINK_EXTRA, LIVE_LINK_ORDER, arkit_name
from ..flame.contract import MOTION_FPS


def arkit_columns(names: Sequence[str]) -> dict[str, list[int]]:
    """{ARKit name: indices of the keys standing for it}."""
    columns: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        canon = arkit_name(name)
        if canon is not None:
            columns.setdefault(canon, []).append(i)
    return columns


def timecode(frame: int, fps: int = MOTION_FPS) -> str:
    seconds, sub = divmod(int(frame), fps)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{sec:02d}:{sub:02d}.000"


def live_link_rows(names: Sequence[str], weights: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the CSV; ValueError when no key has an ARKit name."""
    columns = arkit_columns(names)
    if not columns:
        raise ValueError("--csv needs ARKit-named shape keys (e.g. jawOpen, eyeBlinkLeft or eyeBlink_L); the "
                         "character has none")
    weights = np.asarray(weights, np.float64)
    header = ["Timecode", "BlendShapeCount"] + [n[0].upper() + n[1:] for n in LIVE_LINK_ORDER] + list(LIVE_LINK_EXTRA)
    table = np.zeros((len(weights), len(LIVE_LINK_ORDER)))
    for j, name in enumerate(LIVE_LINK_ORDER):
        if name in columns:
            table[:, j] = weights[:, columns[name]].mean(axis=1)
    count = str(len(LIVE_LINK_ORDER) + len(LIVE_LINK_EXTRA))
    rows = [[timecode(t), count] + [f"{v:.6f}" for v in row] + ["0"] * len(LIVE_LINK_EXTRA)
            for t, row in enumerate(table)]
    return header, rows


def write_live_link_csv(path: str | os.PathLike[str], names: Sequence[str], weights: np.ndarray) -> None:
    header, rows = live_link_rows(names, weights)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(header) + "\n")
        for row in rows:
            handle.write(",".join(row) + "\n")
