"""The character a motion is retargeted onto: a mesh with shape keys, as plain arrays (no bpy).

The Blender side extracts it (rest = the basis shape key's coordinates in object space, deltas = each key's
coordinates minus the basis, ranges = slider_min/slider_max, face weights = an optional vertex group) and hands it
over, e.g. as an .npz written with `Character.save`. Coordinates are in the object's frame and units (Blender axes:
+Z up, face toward -Y; metres or centimetres, any location).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import FlameTalkError
from ..flame import characterfile

MAX_KEYS = characterfile.MAX_KEYS


@dataclass
class Character:
    """rest: (N, 3) float64 rest vertices; triangles: (F, 3) int64 (quads triangulated by the caller);
    names: K shape key names (without the basis); deltas: (K, N, 3) float32, key minus basis;
    ranges: (K, 2) float64 slider (min, max), default (0, 1); face_weights: (N,) float64 in 0..1 or None
    (a vertex group limiting the fit to the face); jaw_pivot: (3,) or None, the jaw bone's head in object space;
    jaw_axes: (3, 3) or None, the jaw bone's rest orientation in object space (columns = bone x, y, z)."""

    rest: np.ndarray
    triangles: np.ndarray
    names: list[str]
    deltas: np.ndarray
    ranges: np.ndarray | None = None
    face_weights: np.ndarray | None = None
    jaw_pivot: np.ndarray | None = None
    jaw_axes: np.ndarray | None = None
    name: str = "character"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_verts(self) -> int:
        return int(self.rest.shape[0])

    @property
    def n_keys(self) -> int:
        return len(self.names)

    def validate(self) -> None:
        """Normalise dtypes and check sizes/finiteness; raises FlameTalkError (one line) on bad input."""
        who = f"character '{self.name}'"
        rest = np.asarray(self.rest, dtype=np.float64)
        if rest.ndim != 2 or rest.shape[1] != 3 or rest.shape[0] < 4:
            raise FlameTalkError(f"{who}: vertices must be (N, 3) with N >= 4, got {rest.shape}")
        _finite(rest, f"{who}: vertices")
        n = rest.shape[0]
        tris = np.asarray(self.triangles)
        if tris.ndim != 2 or tris.shape[1] != 3 or tris.shape[0] == 0 or not np.issubdtype(tris.dtype, np.integer):
            raise FlameTalkError(f"{who}: triangles must be (F, 3) integer vertex indices, got {tris.shape}")
        if tris.min() < 0 or tris.max() >= n:
            raise FlameTalkError(f"{who}: triangles refer to vertices that do not exist")
        names = [str(x) for x in self.names]
        if not names:
            raise FlameTalkError(f"{who} has no shape keys (besides the basis): nothing to retarget onto")
        if len(names) > MAX_KEYS:
            raise FlameTalkError(f"{who}: {len(names)} shape keys; at most {MAX_KEYS} are supported")
        if len(set(names)) != len(names):
            raise FlameTalkError(f"{who}: shape key names are not unique")
        deltas = np.asarray(self.deltas, dtype=np.float32)
        if deltas.shape != (len(names), n, 3):
            raise FlameTalkError(f"{who}: shape key deltas have shape {deltas.shape}, expected "
                                 f"({len(names)}, {n}, 3) for {len(names)} keys and {n} vertices")
        _finite(deltas, f"{who}: shape key deltas")
        ranges = np.tile([0.0, 1.0], (len(names), 1)) if self.ranges is None else np.asarray(self.ranges, float)
        if ranges.shape != (len(names), 2):
            raise FlameTalkError(f"{who}: slider ranges have shape {ranges.shape}, expected ({len(names)}, 2)")
        _finite(ranges, f"{who}: slider ranges")
        if np.any(ranges[:, 0] > ranges[:, 1]):
            raise FlameTalkError(f"{who}: a shape key's slider minimum is above its maximum")
        weights = None
        if self.face_weights is not None:
            weights = np.asarray(self.face_weights, dtype=np.float64)
            if weights.shape != (n,):
                raise FlameTalkError(f"{who}: face weights have shape {weights.shape}, expected ({n},)")
            _finite(weights, f"{who}: face weights")
            if not np.any(weights > 0.5):
                raise FlameTalkError(f"{who}: the face vertex group is empty (no weight above 0.5)")
        pivot = axes = None
        if self.jaw_pivot is not None:
            pivot = np.asarray(self.jaw_pivot, dtype=np.float64).reshape(-1)
            if pivot.shape != (3,):
                raise FlameTalkError(f"{who}: jaw pivot must be 3 numbers")
            _finite(pivot, f"{who}: jaw pivot")
        if self.jaw_axes is not None:
            axes = np.asarray(self.jaw_axes, dtype=np.float64)
            if axes.shape != (3, 3):
                raise FlameTalkError(f"{who}: jaw axes must be a 3x3 matrix")
            _finite(axes, f"{who}: jaw axes")
            u, _, vt = np.linalg.svd(axes)
            axes = u @ vt  # orthonormalise (a scaled bone matrix)
        self.rest, self.triangles, self.names, self.deltas = rest, tris.astype(np.int64), names, deltas
        self.ranges, self.face_weights, self.jaw_pivot, self.jaw_axes = ranges, weights, pivot, axes

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the character file (flame/characterfile.py: plain arrays, no pickles, atomic)."""
        characterfile.write_character(path, self.rest, self.triangles, self.names, self.deltas, self.ranges,
                                      self.face_weights, self.jaw_pivot, self.jaw_axes, self.name)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Character:
        """Read what `save` (or the add-on) wrote; raises FlameTalkError (one line) on a missing, damaged or wrong
        file."""
        try:
            return cls(**characterfile.read_character(path))
        except characterfile.CharacterFileError as err:
            raise FlameTalkError(str(err)) from None


def _finite(arr: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise FlameTalkError(f"{what} contain NaN or infinity")


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, 3) unit area-weighted vertex normals, oriented outward on average (a mesh wound the other way is
    flipped, so normal checks do not depend on the exporter's winding). Isolated vertices get (0, 0, 0)."""
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
    face_n = np.cross(b - a, c - a)
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)
    if np.sum(normals * (v - v.mean(axis=0))) < 0:
        normals = -normals
    return normals
