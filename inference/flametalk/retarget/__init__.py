"""Retarget FLAME motion onto any character head with shape keys (no bpy: numpy + scipy, runs in the worker).

    result = retarget(flame, character, motion, keys="arkit", jaw_bone=False)
    result.weights  # (T, K) float32, one column per result.names entry, within each key's slider range

Pieces: `Character` (the mesh and its shape keys), `fit` (FLAME head -> character correspondence, `Fit`),
`Transfer` (FLAME's deformation at the character's face vertices), `solve` (bounded regularised least squares),
`names` (ARKit names, key selection, left/right pairs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import FlameTalkError
from ..flame.reader import FlameModel
from .character import Character
from .fit import Fit, fit
from .names import ARKIT_52, arkit_name, is_arkit, select_keys, symmetry_pairs
from .solve import SolveOptions, box_qp, solve
from .transfer import Transfer, check_motion


@dataclass
class Result:
    """weights: (T, K) float32 for the keys `names`; head_rotation, jaw_rotation: (T, 3) axis-angle vectors
    (radians) in the character's object frame; jaw_rotation_local: (T, 3) the jaw rotation in the jaw bone's rest
    axes (character.jaw_axes), or None; residual_mm: (T,) RMS over the face vertices of what the keys could not
    express (with jaw_bone, the jaw's share is excluded); fit: the fit used; seconds: wall time of the stages
    ("fit": 0 when a fit was given, "transfer", "solve")."""

    weights: np.ndarray
    names: list[str]
    head_rotation: np.ndarray
    jaw_rotation: np.ndarray
    jaw_rotation_local: np.ndarray | None
    residual_mm: np.ndarray
    fit: Fit
    seconds: dict[str, float] = field(default_factory=dict)


def retarget(flame: FlameModel, character: Character, motion: np.ndarray, keys: str | list[str] = "all",
             jaw_bone: bool = False, fitted: Fit | None = None, options: SolveOptions | None = None,
             jaw_intensity: float = 1.0) -> Result:
    """Solve the character's shape key weights for FLAME motion (T, 106). keys: "all", "arkit" or names;
    jaw_bone: the jaw rotation goes to a bone (returned, scaled by jaw_intensity) instead of the shape keys;
    fitted: a stored fit (else the character is fitted now). Raises FlameTalkError (one line) on bad input."""
    motion = check_motion(motion)
    chosen = select_keys(character.names, keys)
    names = [character.names[i] for i in chosen]
    seconds = {"fit": 0.0}
    clock = time.perf_counter()
    if fitted is None:
        fitted = fit(flame, character)
        seconds["fit"] = time.perf_counter() - clock
    if fitted.tri.shape[0] != character.n_verts:
        raise FlameTalkError("the fit belongs to a different mesh (vertex count changed): fit the character again")
    clock = time.perf_counter()
    transfer = Transfer(flame, fitted, jaw_bone=jaw_bone)
    deltas = character.deltas[chosen][:, transfer.face]
    gram, rhs, norms = transfer.project(deltas, motion)
    seconds["transfer"] = time.perf_counter() - clock
    clock = time.perf_counter()
    weights, residual = solve(gram, rhs, norms, character.ranges[chosen], len(transfer.face), fitted.mm_per_unit,
                              symmetry_pairs(names), options)
    seconds["solve"] = time.perf_counter() - clock
    head, jaw = transfer.rotations(motion)
    jaw = jaw * jaw_intensity
    local = jaw @ character.jaw_axes if character.jaw_axes is not None else None  # axes^T v, row-wise
    return Result(weights=weights, names=names, head_rotation=head, jaw_rotation=jaw, jaw_rotation_local=local,
                  residual_mm=residual, fit=fitted, seconds=seconds)

__all__ = [
    "ARKIT_52", "Character", "Fit", "Result", "SolveOptions", "Transfer", "arkit_name", "box_qp", "check_motion", "fit",
    "is_arkit", "retarget", "select_keys", "solve", "symmetry_pairs",
]
