"""The paper's metrics on FLAME vertices (numpy): LVE, FDD, MOD. Vertices are (T, V, 3) in metres, FLAME frame.

Definitions (see also docs in evaluate.py's table):
- LVE (lip vertex error): for each frame the largest error over the lip vertices, averaged over frames. The
  published tables (VOCASET lineage, also torchmetrics' LipVertexError) use the squared L2 distance, so `LVE` is
  in m^2; `LVE_dist` is the same with the plain distance (m).
- FDD (upper-face dynamics deviation): for each upper-face vertex (FLAME masks 'eye_region' + 'forehead') the
  standard deviation over time of its motion magnitude (distance from the neutral template: same identity, zero
  expression and pose; squared for `FDD`, plain for `FDD_dist`), averaged over those vertices; FDD = truth minus
  prediction (positive: the prediction moves the upper face less than the truth). Per clip; clips are averaged.
- MOD (mouth opening difference): mouth opening = distance between the centroid of the upper-lip vertices and
  the centroid of the lower-lip vertices; MOD = mean over frames of |opening(pred) - opening(truth)| (m). The
  upper/lower lip sets split the 'lips' mask at the mean height (y) of the lips in the neutral template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import FlameTalkError

UPPER_FACE_KEYS = ("eye_region", "forehead")


def load_masks(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """FLAME_masks.pkl -> {region: vertex indices int64}, read with the restricted unpickler (numpy only)."""
    from ..flame.safepickle import UnsafePickleError, restricted_loads, to_array

    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = restricted_loads(fh.read())
    except FileNotFoundError as err:
        raise FlameTalkError(f"FLAME masks file not found: {path}") from err
    except UnsafePickleError as err:
        raise FlameTalkError(f"{path} refers to {err.qualified_name}, which a masks file never contains: "
                             "refused to load it (nothing in it was run)") from None
    except Exception as err:  # any malformed pickle is the user's file problem
        raise FlameTalkError(f"{path} is not a FLAME masks file ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(raw, dict):
        raise FlameTalkError(f"{path} is not a FLAME masks file (expected a dict of index arrays)")
    masks = {}
    for key, value in raw.items():
        arr = np.asarray(to_array(value)).reshape(-1)
        if not np.issubdtype(arr.dtype, np.integer):
            raise FlameTalkError(f"{path}: region {key!r} does not hold vertex indices")
        masks[str(key)] = arr.astype(np.int64)
    missing = [k for k in ("lips", *UPPER_FACE_KEYS) if k not in masks]
    if missing:
        raise FlameTalkError(f"{path} lacks the region(s) {', '.join(missing)} (is it FLAME_masks.pkl?)")
    return masks


def upper_face(masks: dict[str, np.ndarray]) -> np.ndarray:
    return np.unique(np.concatenate([masks[k] for k in UPPER_FACE_KEYS]))


def split_lips(template_V3: np.ndarray, lips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(upper lip, lower lip) vertex indices: above / below the lips' mean height in the neutral template."""
    y = template_V3[lips, 1]
    upper, lower = lips[y >= y.mean()], lips[y < y.mean()]
    if not upper.size or not lower.size:
        raise FlameTalkError("cannot split the 'lips' mask into upper and lower lip")
    return upper, lower


def lip_errors(pred: np.ndarray, true: np.ndarray, lips: np.ndarray, squared: bool = True) -> np.ndarray:
    """Per-frame max over lip vertices of the (squared) L2 error, (T,)."""
    d2 = ((pred[:, lips] - true[:, lips]) ** 2).sum(-1)
    return (d2 if squared else np.sqrt(d2)).max(axis=1)


def lve(pred: np.ndarray, true: np.ndarray, lips: np.ndarray, squared: bool = True) -> float:
    return float(lip_errors(pred, true, lips, squared).mean())


def face_dynamics(verts: np.ndarray, template: np.ndarray, idx: np.ndarray, squared: bool = True) -> float:
    """Mean over `idx` vertices of the std over time of their (squared) distance from the template."""
    d2 = ((verts[:, idx] - template[idx]) ** 2).sum(-1)
    return float((d2 if squared else np.sqrt(d2)).std(axis=0).mean())


def fdd(pred: np.ndarray, true: np.ndarray, template: np.ndarray, upper: np.ndarray, squared: bool = True) -> float:
    return face_dynamics(true, template, upper, squared) - face_dynamics(pred, template, upper, squared)


def mouth_opening(verts: np.ndarray, upper_lip: np.ndarray, lower_lip: np.ndarray) -> np.ndarray:
    return np.linalg.norm(verts[:, upper_lip].mean(axis=1) - verts[:, lower_lip].mean(axis=1), axis=-1)


def mouth_opening_errors(pred: np.ndarray, true: np.ndarray, upper_lip: np.ndarray,
                         lower_lip: np.ndarray) -> np.ndarray:
    return np.abs(mouth_opening(pred, upper_lip, lower_lip) - mouth_opening(true, upper_lip, lower_lip))


def mod(pred: np.ndarray, true: np.ndarray, upper_lip: np.ndarray, lower_lip: np.ndarray) -> float:
    return float(mouth_opening_errors(pred, true, upper_lip, lower_lip).mean())


@dataclass
class MetricAccumulator:
    """Dataset totals: LVE and MOD weighted by frames (every frame counts once), FDD averaged over clips."""

    lips: np.ndarray
    upper: np.ndarray
    upper_lip: np.ndarray
    lower_lip: np.ndarray
    frames: int = 0
    sums: dict[str, float] = field(default_factory=lambda: {"LVE": 0.0, "LVE_dist": 0.0, "MOD": 0.0})
    fdd: list[float] = field(default_factory=list)
    fdd_dist: list[float] = field(default_factory=list)
    per_clip: list[dict[str, float | str]] = field(default_factory=list)

    def add(self, name: str, pred: np.ndarray, true: np.ndarray, template: np.ndarray) -> dict[str, float | str]:
        T = min(pred.shape[0], true.shape[0])
        pred, true = pred[:T], true[:T]
        clip = {
            "clip": name, "frames": T,
            "LVE": lve(pred, true, self.lips), "LVE_dist": lve(pred, true, self.lips, squared=False),
            "FDD": fdd(pred, true, template, self.upper), "FDD_dist": fdd(pred, true, template, self.upper, False),
            "MOD": mod(pred, true, self.upper_lip, self.lower_lip),
        }
        self.frames += T
        for key in self.sums:
            self.sums[key] += float(clip[key]) * T
        self.fdd.append(float(clip["FDD"]))
        self.fdd_dist.append(float(clip["FDD_dist"]))
        self.per_clip.append(clip)
        return clip

    def result(self) -> dict[str, float]:
        if not self.frames:
            raise FlameTalkError("no frames were evaluated")
        out = {k: v / self.frames for k, v in self.sums.items()}
        out["FDD"] = float(np.mean(self.fdd))
        out["FDD_dist"] = float(np.mean(self.fdd_dist))
        return {"LVE": out["LVE"], "FDD": out["FDD"], "MOD": out["MOD"], "LVE_dist": out["LVE_dist"],
                "FDD_dist": out["FDD_dist"], "clips": float(len(self.per_clip)), "frames": float(self.frames)}
