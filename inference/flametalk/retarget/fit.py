"""Fit the FLAME head to a character's head and find, per character vertex, where it sits on FLAME's surface.

Frames: FLAME's native frame is metres, +Y up, face toward +Z; `P = flame_to_blender(v)` puts it in Blender's
axes (+Z up, face toward -Y), which is also the character's. The fit's similarity maps those Blender-axes FLAME
points to the character's object frame and units: x = scale * R @ P + t.

Steps: an initial similarity from the geometry (or the user's placement), similarity ICP on FLAME's face region
(trimmed, normal-checked: the character's hair, body, eyeballs and mouth socket find no partner), FLAME identity
coefficients by regularised least squares alternating with the similarity, a smooth non-rigid offset field, then
per character vertex its closest point on the fitted FLAME surface (triangle, barycentric coordinates, offset
along the normal) or "not face".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np

from ..errors import FlameTalkError
from ..flame import characterfile
from ..flame.lbs import FLAME_TO_BLENDER
from ..flame.reader import FlameModel
from .character import Character, vertex_normals
from .geometry import closest_on_mesh, decompose_similarity, edge_laplacian, point_to_plane_step, similarity_matrix

NORMAL_DOT = 0.5  # a correspondence whose normals differ by more than 60 degrees is a different surface
TRIM = 0.85  # ICP keeps this fraction of the nearest normal-consistent pairs


@dataclass
class Fit:
    """scale, rotation (3, 3), translation (3,): Blender-axes FLAME metres -> character frame and units;
    shape: (n_shape,) FLAME identity coefficients; flame_vertices: (V, 3) float32, the fitted FLAME head in the
    character frame (template + identity + non-rigid offsets, for display); tri: (N,) int32 FLAME triangle per
    character vertex, -1 = not face; bary: (N, 3) float32; offset: (N,) float32 distance along FLAME's normal,
    character units; mm_per_unit: millimetres per character unit; rms_mm, max_mm: distance of the used vertices
    to the fitted FLAME surface; n_used: vertices with a correspondence."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    shape: np.ndarray
    flame_vertices: np.ndarray
    tri: np.ndarray
    bary: np.ndarray
    offset: np.ndarray
    mm_per_unit: float
    rms_mm: float
    max_mm: float
    n_used: int

    @property
    def face_index(self) -> np.ndarray:
        """(Nf,) indices of the character vertices that have a FLAME correspondence."""
        return np.nonzero(self.tri >= 0)[0]

    @property
    def flame_to_character(self) -> np.ndarray:
        """(3, 3) linear part mapping FLAME-native vectors (metres) to character vectors (units)."""
        return self.scale * self.rotation @ FLAME_TO_BLENDER

    def matrix(self) -> np.ndarray:
        """4x4: Blender-axes FLAME (metres) -> character object frame (what a hand-placed FLAME object has)."""
        return similarity_matrix(self.scale, self.rotation, self.translation)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fit file (flame/characterfile.py: FIT_FIELDS, atomic)."""
        characterfile.write_fit(path, {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Fit:
        """Read a fit file; raises FlameTalkError (one line) on a missing, damaged or wrong file."""
        try:
            return cls(**characterfile.read_fit(path))
        except characterfile.CharacterFileError as err:
            raise FlameTalkError(str(err)) from None


def fit(flame: FlameModel, character: Character, face_weights: np.ndarray | None = None,
        init: np.ndarray | None = None, unit_m: float | None = None, max_dist_mm: float = 5.0,
        icp_iterations: int = 30, nonrigid_iterations: int = 3, shape_reg: float = 1.0,
        stiffness: float = 10.0, min_inliers: float = 0.6, max_turn: float = 30.0) -> Fit:
    """Fit FLAME to the character. face_weights: (N,) 0..1, overrides character.face_weights (> 0.5 = may be
    used); init: 4x4 matrix placing Blender-axes FLAME (metres) in the character's object frame (a hand
    placement); unit_m: metres per character unit (default: m or cm or mm, whichever power of ten is nearest the
    fitted scale); max_dist_mm: farther character vertices are "not face"; shape_reg: cost of a unit identity
    coefficient, as 1 mm of error at every face point; stiffness: the non-rigid field's edge smoothness;
    max_turn: degrees the fit may rotate away from the starting placement (automatic: facing -Y).
    Raises FlameTalkError when the character does not look like a head facing -Y: too few face matches, or the
    fit had to turn or scale the head far from where it started."""
    x = character.rest
    weights = character.face_weights if face_weights is None else np.asarray(face_weights, dtype=np.float64)
    allowed = np.ones(len(x), bool) if weights is None else weights > 0.5
    x_normals = vertex_normals(x, character.triangles)
    xa, xna = x[allowed], x_normals[allowed]
    edge = _boundary(character.triangles, allowed)[allowed]  # partners on an edge of the surface are no partners
    from scipy.spatial import cKDTree  # scipy is imported on use: character.py and names.py must not need it

    tree = cKDTree(xa)
    c = FLAME_TO_BLENDER
    shape_dirs = np.einsum("ab,vbk->vak", c, flame.shape_dirs)  # (V, 3, n_shape), Blender axes
    beta = np.zeros(flame.n_shape)
    p = flame.v_template @ c.T
    region = flame_face_region(p, vertex_normals(p, flame.faces))
    if init is not None:
        try:
            s, rot, t = decompose_similarity(init)
        except ValueError as err:
            raise FlameTalkError(str(err)) from None
    else:
        s, rot, t = initial_similarity(p, x)  # the whole mesh: a face group's extent is not the head's

    def pairs(points: np.ndarray, normals: np.ndarray, trim: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(kept mask, feet on the character's tangent planes, plane normals, distances) for points in the
        character frame: nearest character vertex, normals within 60 degrees, the nearest `trim` of those."""
        dist, j = tree.query(points)
        q, nq = xa[j], xna[j]
        foot = points - np.sum((points - q) * nq, axis=1, keepdims=True) * nq
        ok = (np.sum(normals * nq, axis=1) > NORMAL_DOT) & ~edge[j]
        keep = ok & (dist <= np.quantile(dist[ok], trim)) if np.count_nonzero(ok) >= 10 else ok
        return keep, foot, nq, dist

    s0, rot0 = s, rot
    p_shaped, shaped_normals = p, vertex_normals(p, flame.faces)
    identity_steps = 0
    for step in range(icp_iterations + 3):
        pr = p_shaped[region]
        normals = shaped_normals[region] @ rot.T
        y = s * pr @ rot.T + t
        keep, foot, nq, _ = pairs(y, normals, TRIM)
        if np.count_nonzero(keep) < 0.2 * len(region):
            break
        # point-to-plane similarity step (converges in a few iterations, also along the face's sliding directions)
        sigma, d_rot, centre, tau = point_to_plane_step(y[keep], foot[keep], nq[keep])
        sigma = float(np.clip(sigma, -0.05, 0.05))  # shrinking onto a flat patch also lowers the error: go slowly
        s, rot, t = (1 + sigma) * s, d_rot @ rot, (1 + sigma) * d_rot @ (t - centre) + centre + tau
        converged = abs(sigma) < 1e-6 and np.linalg.norm(tau) < 1e-6 * s and abs(np.trace(d_rot) - 3) < 1e-10
        if identity_steps or converged or step >= icp_iterations - 1:
            if identity_steps == 3:
                break
            # identity coefficients, alternating with the similarity
            target = (foot[keep] - t) @ rot / s - p[region][keep]
            beta = _fit_identity(shape_dirs[region][keep], target, shape_reg)
            p_shaped = p + np.einsum("vak,k->va", shape_dirs, beta)
            shaped_normals = vertex_normals(p_shaped, flame.faces)
            identity_steps += 1
        if not 0.5 < s / s0 < 2:
            break  # diverged: reported below
    p_shaped = p + np.einsum("vak,k->va", shape_dirs, beta)
    y = s * p_shaped @ rot.T + t
    y_normals = vertex_normals(p_shaped, flame.faces) @ rot.T
    mm_per_unit = 1000.0 * unit_m if unit_m else 1000.0 / 10.0 ** np.round(np.log10(max(s, 1e-12)))
    # Convergence: most of FLAME's face must lie on the character's surface, with matching normals.
    ok, _, nq, dist = pairs(y[region], y_normals[region], 1.0)
    near = ok & (dist * mm_per_unit < 2 * max_dist_mm)
    # FLAME face points beyond the edge of the character's surface (or face group) are not held against it
    inside = ~edge[tree.query(y[region])[1]]
    share = near.sum() / max(inside.sum(), 0.3 * len(region))
    turned = np.degrees(np.arccos(np.clip((np.trace(rot @ rot0.T) - 1) / 2, -1, 1)))
    if not (np.isfinite(s) and 0.5 < s / s0 < 2) or turned > max_turn:
        raise FlameTalkError(
            f"could not fit the FLAME head to character '{character.name}': the fit turned it by {turned:.0f} "
            f"degrees and scaled it by {s / s0:.2f} (is it a head, +Z up, facing -Y? place the FLAME head over "
            "it by hand first)")
    if share < min_inliers:
        raise FlameTalkError(
            f"could not fit the FLAME head to character '{character.name}': only {100 * share:.0f}% of "
            "FLAME's face lies on its surface (is it a head with a human face, +Z up, facing -Y? place the FLAME "
            "head over it by hand, or limit the fit with a face vertex group)")
    # the non-rigid step uses every FLAME vertex with a close, normal-consistent partner (not only the face), so
    # the whole correspondence improves; hair, body and mouth socket stay beyond the distance cap
    cap = 2 * max_dist_mm / mm_per_unit
    y = y + _nonrigid(y, y_normals, flame.faces, pairs, nonrigid_iterations, stiffness, cap)
    return _correspond(flame, character, allowed, x_normals, y, s, rot, t, beta, mm_per_unit, max_dist_mm)


def _boundary(triangles: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(N,) True on vertices at the edge of the allowed surface (open mesh borders, the face group's border):
    a FLAME point whose nearest character vertex is there usually has no true partner (ICP's classic rejection)."""
    tris = triangles[np.all(allowed[triangles], axis=1)]
    edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    out = np.zeros(len(allowed), dtype=bool)
    out[uniq[count == 1].ravel()] = True
    out[allowed & ~np.isin(np.arange(len(allowed)), tris.ravel())] = True  # allowed vertices in no allowed triangle
    return out


def flame_face_region(p: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Indices of FLAME's front-facing face vertices (Blender-axes metres): forehead to chin, cheek to cheek."""
    nose = p[np.argmin(p[:, 1])]
    rel = p - nose
    mask = (normals[:, 1] < -0.3) & (rel[:, 2] > -0.085) & (rel[:, 2] < 0.07) & (np.abs(rel[:, 0]) < 0.075)
    mask &= rel[:, 1] < 0.07
    return np.nonzero(mask)[0]


def initial_similarity(p: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, I, t) from geometry: both heads +Z up, facing -Y. Scale from the width of the top slab (skull and
    upper face, so a body, shoulders or arms below do not count), translation putting FLAME's nose tip (its
    front-most point) on the character's front-most point of that region."""
    nose_f = p[np.argmin(p[:, 1])]
    top_f = p[:, 2].max()
    slab_f = top_f - nose_f[2]  # top of head to nose tip
    width_f = _width(p[p[:, 2] >= nose_f[2]])
    top_c = x[:, 2].max()
    # The head's scale s is a fixed point of s -> width(top slab of height slab_f * s) / width_f. Iterating up
    # from a thin slab at the crown stops at the head, before the slab reaches shoulders or arms.
    scale = 0.02 * (top_c - x[:, 2].min()) / slab_f
    for _ in range(60):
        slab = x[x[:, 2] >= top_c - slab_f * scale]
        new = _width(slab) / width_f if len(slab) >= 4 else 2 * scale
        if abs(new - scale) < 1e-4 * scale:
            break
        scale = new
    region = x[(x[:, 2] >= top_c - 1.6 * slab_f * scale)]
    nose_c = region[np.argmin(region[:, 1])]
    trans = nose_c - scale * nose_f
    return float(scale), np.eye(3), trans


def _width(points: np.ndarray) -> float:
    lo, hi = np.percentile(points[:, 0], [1, 99])
    return float(max(hi - lo, 1e-12))


def _fit_identity(dirs: np.ndarray, target: np.ndarray, reg: float) -> np.ndarray:
    """argmin_b |dirs b - target|^2 + reg * M * (1 mm)^2 |b|^2; dirs: (M, 3, n_shape), target: (M, 3) metres."""
    a = dirs.reshape(-1, dirs.shape[2])
    lam = reg * len(target) * 1e-6
    return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ target.ravel())


def _nonrigid(y: np.ndarray, normals: np.ndarray, faces: np.ndarray, pairs, iterations: int, stiffness: float,
              cap: float) -> np.ndarray:
    """Offsets (V, 3) moving FLAME onto the character: per iteration, min over d of
    sum_kept |y_i + d_i - foot_i|^2 + stiffness * sum_edges |d_a - d_b|^2 + 1e-3 |d|^2 (all in character units,
    so the balance does not depend on them); kept: pairs closer than `cap` (character units)."""
    region = np.arange(len(y))
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    n = len(y)
    lap = edge_laplacian(faces, n)
    d = np.zeros_like(y)
    for _ in range(iterations):
        keep, foot, _, dist = pairs(y[region] + d[region], normals[region], TRIM)
        keep &= dist < cap
        idx = region[keep]
        w = np.zeros(n)
        w[idx] = 1.0
        rhs = np.zeros_like(y)
        rhs[idx] = foot[keep] - y[idx]
        solve = spla.factorized((sp.diags(w + 1e-3) + stiffness * lap).tocsc())
        d = np.stack([solve(rhs[:, k]) for k in range(3)], axis=1)
    return d


def _correspond(flame: FlameModel, character: Character, allowed: np.ndarray, x_normals: np.ndarray, y: np.ndarray,
                s: float, rot: np.ndarray, t: np.ndarray, beta: np.ndarray, mm_per_unit: float,
                max_dist_mm: float) -> Fit:
    """Per character vertex its closest point on the fitted FLAME surface `y` (V, 3), or "not face"."""
    x = character.rest
    n = len(x)
    tri = np.full(n, -1, dtype=np.int32)
    bary = np.zeros((n, 3), dtype=np.float32)
    offset = np.zeros(n, dtype=np.float32)
    idx = np.nonzero(allowed)[0]
    faces = flame.faces
    f_tri, f_bary, f_pt = closest_on_mesh(x[idx], y, faces)
    y_normals = vertex_normals(y, faces)
    normal = np.einsum("mk,mka->ma", f_bary, y_normals[faces[f_tri]])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    diff = x[idx] - f_pt
    dist = np.linalg.norm(diff, axis=1)
    ok = (dist * mm_per_unit <= max_dist_mm) & (np.sum(normal * x_normals[idx], axis=1) > NORMAL_DOT)
    used = idx[ok]
    tri[used] = f_tri[ok]
    bary[used] = f_bary[ok]
    offset[used] = np.sum(diff[ok] * normal[ok], axis=1)
    if len(used) < 100:
        raise FlameTalkError(f"could not fit the FLAME head to character '{character.name}': only {len(used)} "
                             "vertices lie on FLAME's face (is it a head with a human face, +Z up, facing -Y?)")
    err_mm = dist[ok] * mm_per_unit
    return Fit(scale=float(s), rotation=rot, translation=np.asarray(t, float), shape=beta,
               flame_vertices=y.astype(np.float32), tri=tri, bary=bary, offset=offset, mm_per_unit=float(mm_per_unit),
               rms_mm=float(np.sqrt(np.mean(err_mm**2))), max_mm=float(err_mm.max()), n_used=len(used))
