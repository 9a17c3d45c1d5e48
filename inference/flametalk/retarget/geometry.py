"""Geometry helpers for the fit: similarity transforms, closest points on triangles, mesh graph Laplacians."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy is imported where used, so importing the package does not need it
    import scipy.sparse as sp
    from scipy.spatial import cKDTree


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
            with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum w |s R src + t - dst|^2 (Umeyama 1991). src, dst: (M, 3)."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a rotation
        fix[2, 2] = -1.0
    rot = u @ fix @ vt
    var = float(w @ np.sum(a * a, axis=1))
    scale = float(np.sum(sig * np.diag(fix)) / var) if with_scale else 1.0
    return scale, rot, mu_d - scale * rot @ mu_s


def similarity_matrix(scale: float, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """4x4 matrix of x -> scale * rot @ x + trans."""
    out = np.eye(4)
    out[:3, :3] = scale * rot
    out[:3, 3] = trans
    return out


def decompose_similarity(matrix: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) closest to a 4x4 affine matrix (a hand-placed object: uniform scale assumed, shear dropped)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError("the initial placement must be a finite 4x4 matrix")
    lin = m[:3, :3]
    det = np.linalg.det(lin)
    if det <= 0:
        raise ValueError("the initial placement is mirrored or degenerate")
    u, _, vt = np.linalg.svd(lin)
    return float(det ** (1.0 / 3.0)), u @ vt, m[:3, 3].copy()


def closest_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                         c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points (M, 3) on triangles (a, b, c) (each (M, 3)) to `points` (M, 3), and their barycentric
    coordinates (M, 3). Degenerate triangles fall back to their nearest corner/edge through the same clamping."""
    ab, ac, ap = b - a, c - a, points - a
    d00, d01, d11 = _dot(ab, ab), _dot(ab, ac), _dot(ac, ac)
    d20, d21 = _dot(ap, ab), _dot(ap, ac)
    den = d00 * d11 - d01 * d01
    ok = den > 1e-30 * np.maximum(d00 * d11, 1e-300)
    den = np.where(ok, den, 1.0)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1.0 - v - w, v, w], axis=1)
    inside = ok & (v >= 0) & (w >= 0) & (v + w <= 1)
    best_bary = np.where(inside[:, None], bary, 0.0)
    best_d = np.where(inside, np.sum((bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c - points) ** 2, 1),
                      np.inf)
    # outside (or degenerate): the nearest point lies on one of the three edges
    for i, (p0, p1) in enumerate(((a, b), (b, c), (c, a))):
        e = p1 - p0
        ee = _dot(e, e)
        u = np.clip(_dot(points - p0, e) / np.where(ee > 0, ee, 1.0), 0.0, 1.0)
        q = p0 + u[:, None] * e
        d = np.sum((q - points) ** 2, axis=1)
        better = ~inside & (d < best_d)
        eb = np.zeros((len(points), 3))
        eb[:, i], eb[:, (i + 1) % 3] = 1.0 - u, u
        best_bary = np.where(better[:, None], eb, best_bary)
        best_d = np.where(better, d, best_d)
    closest = best_bary[:, :1] * a + best_bary[:, 1:2] * b + best_bary[:, 2:] * c
    return closest, best_bary


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


def closest_on_mesh(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, k: int = 6,
                    tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (M, 3): the index of the nearest triangle among those around its k nearest mesh vertices,
    the barycentric coordinates (M, 3) and the closest point (M, 3). Exact wherever the true closest triangle
    touches one of those vertices (always, on a reasonably even mesh)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(vertices) if tree is None else tree
    k = min(k, len(vertices))
    _, near = tree.query(points, k=k)
    near = near.reshape(len(points), k)
    # triangles around each vertex, as a padded (V, max_valence) table
    order = np.argsort(triangles.ravel(), kind="stable")
    tri_of = order // 3
    counts = np.bincount(triangles.ravel(), minlength=len(vertices))
    start = np.concatenate([[0], np.cumsum(counts)])
    width = max(int(counts.max()), 1)
    table = np.full((len(vertices), width), -1, dtype=np.int64)
    col = np.arange(len(order)) - start[triangles.ravel()[order]]
    table[triangles.ravel()[order], col] = tri_of
    best_tri = np.full(len(points), -1, dtype=np.int64)
    best_bary = np.zeros((len(points), 3))
    best_pt = np.zeros((len(points), 3))
    best_d = np.full(len(points), np.inf)
    for j in range(k):
        for m in range(width):
            tri = table[near[:, j], m]
            has = tri >= 0
            if not np.any(has):
                continue
            idx = np.nonzero(has)[0]
            corners = vertices[triangles[tri[idx]]]
            q, bary = closest_on_triangles(points[idx], corners[:, 0], corners[:, 1], corners[:, 2])
            d = np.sum((q - points[idx]) ** 2, axis=1)
            better = d < best_d[idx]
            sel = idx[better]
            best_tri[sel], best_bary[sel], best_pt[sel], best_d[sel] = tri[idx][better], bary[better], q[better], \
                d[better]
    return best_tri, best_bary, best_pt


def edge_laplacian(triangles: np.ndarray, n_verts: int) -> sp.csr_matrix:
    """Graph Laplacian (V, V) of the mesh's edges (uniform weights): x^T L x = sum over edges |x_a - x_b|^2."""
    import scipy.sparse as sp

    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    a, b = edges[:, 0], edges[:, 1]
    adj = sp.coo_matrix((np.ones(len(edges)), (a, b)), shape=(n_verts, n_verts))
    adj = (adj + adj.T).tocsr()
    return (sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()


def point_to_plane_step(y: np.ndarray, q: np.ndarray, n: np.ndarray, damping: float = 1e-6
                        ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """One linearised point-to-plane similarity step: (sigma, rot, centre, tau) such that
    y' = (1 + sigma) rot (y - centre) + centre + tau moves points y (M, 3) toward the planes through q with
    normals n, minimising sum ((y' - q) . n)^2 (damped: directions the planes do not pin stay put)."""
    from ..flame.lbs import rodrigues

    centre = y.mean(axis=0)
    rel = y - centre
    size2 = float(np.mean(np.sum(rel * rel, axis=1)))
    # unknowns: sigma, omega (3), tau (3); columns scaled to comparable units (rel is ~head size)
    jac = np.column_stack([np.sum(rel * n, axis=1), np.cross(rel, n), n])
    res = -np.sum((y - q) * n, axis=1)
    norm = np.ones(7)
    norm[:4] = np.sqrt(size2)
    jac = jac / norm
    lhs = jac.T @ jac + damping * len(y) * np.eye(7)
    x = np.linalg.solve(lhs, jac.T @ res) / norm
    return float(x[0]), rodrigues(x[1:4]), centre, x[4:7]
