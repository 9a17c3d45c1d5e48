"""Shape key weights per frame by bounded, regularised least squares.

With B the chosen keys' deltas at the face vertices and d_t the face displacement of frame t, the weights w
(T, K) minimise, within lo <= w_t <= hi,
    sum_t |B w_t - d_t|^2 + l2 sum_t,k e_k w_t,k^2 + l1 sum_t,k e_k |w_t,k|
    + symmetry sum_t sum_pairs (sqrt(e_L) w_t,L - sqrt(e_R) w_t,R)^2 + smooth sum_t,k e_k (w_t,k - w_t-1,k)^2
where e_k = |B_k|^2 is key k's energy (its deltas over the face vertices, squared: what weight 1 of it explains).
The data term and every e_k scale with the head's size squared (and the number of face vertices), so the same
defaults hold in cm and in m, for dense and sparse meshes, for big and small keys. Only B^T B (K, K),
B^T d_t (T, K) and |d_t|^2 (T,) enter.

The frames are coupled by the smoothness term: red-black Gauss-Seidel sweeps (every other frame at once, anchored
to its two neighbours) approach the joint optimum over all frames; each frame is a small box-constrained QP solved
exactly by a primal active-set method, batched over the frames of a half-sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FlameTalkError


@dataclass
class SolveOptions:
    """Weights of the regularisers, relative to each key's energy (see the module docstring); sweeps: red-black
    Gauss-Seidel sweeps over the frames for the smoothness coupling (0 = frames independent)."""

    l2: float = 3e-4
    l1: float = 3e-4
    symmetry: float = 3e-3
    smooth: float = 3e-2
    sweeps: int = 2


_GROUP = 16  # problems sharing a matrix and free set are solved together from this many on
_BATCH = 256  # the other problems go to LAPACK in batches of this many (memory: _BATCH x K x K)


def box_qp(q_mats: np.ndarray, q_vec: np.ndarray, lo: np.ndarray, hi: np.ndarray, which: np.ndarray | None = None,
           x0: np.ndarray | None = None, max_iter: int = 500) -> np.ndarray:
    """argmin 1/2 x^T Q x - q^T x subject to lo <= x <= hi, for a batch of n independent problems at once.

    q_mats: (G, K, K) or (K, K) symmetric positive definite; which: (n,) index of each problem's matrix (default
    0); q_vec: (n, K); lo, hi: (K,); x0: (n, K) warm start, default the unconstrained optimum clipped (its active
    set is usually nearly the final one). The primal active-set method: fix a variable when a step reaches its
    bound; when the free ones are optimal, release the fixed one whose gradient points inside most; exact at
    convergence. Problems sharing a matrix and a free set are solved together (one factorisation, many right-hand
    sides), and converged problems drop out."""
    q_mats = np.asarray(q_mats, dtype=np.float64)
    q_mats = q_mats[None] if q_mats.ndim == 2 else q_mats
    q_vec = np.atleast_2d(np.asarray(q_vec, dtype=np.float64))
    n, k = q_vec.shape
    which = np.zeros(n, dtype=np.int64) if which is None else np.asarray(which, dtype=np.int64)
    if x0 is None:
        x0 = np.empty((n, k))
        for m in range(len(q_mats)):
            rows = which == m
            x0[rows] = np.linalg.solve(q_mats[m], q_vec[rows].T).T
        x0 = _pivot(q_mats, which, q_vec, lo, hi, x0)
    x = np.clip(np.asarray(x0, dtype=np.float64), lo, hi)
    grad = _grad(q_mats, which, q_vec, x, np.arange(n))
    fixed = ((x <= lo) & (grad > 0)) | ((x >= hi) & (grad < 0))
    active = np.arange(n)
    for _ in range(max_iter):
        if not len(active):
            break
        free = ~fixed[active]
        target = x[active].copy()
        keys = np.column_stack([which[active, None], np.packbits(free, axis=1).astype(np.int64)])
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        lone = []
        for gi in np.nonzero(counts >= _GROUP)[0]:  # many problems, one matrix and free set: one factorisation
            rows = order[starts[gi] : starts[gi + 1]]
            f = free[rows[0]]
            if not f.any():
                continue
            q = q_mats[which[active[rows[0]]]]
            xr = x[active[rows]]
            rhs = q_vec[active[rows]][:, f] - xr[:, ~f] @ q[np.ix_(f, ~f)].T
            target[rows[:, None], np.nonzero(f)[0]] = np.linalg.solve(q[np.ix_(f, f)], rhs.T).T
        for gi in np.nonzero(counts < _GROUP)[0]:
            lone.append(order[starts[gi] : starts[gi + 1]])
        if lone:
            _solve_free(np.concatenate(lone), active, free, x, q_mats, which, q_vec, target)
        xa = x[active]
        step = target - xa
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(step < 0, (lo - xa) / step, np.where(step > 0, (hi - xa) / step, np.inf))
        ratio = np.where(free & (step != 0), ratio, np.inf)
        block = np.argmin(ratio, axis=1)
        alpha = ratio[np.arange(len(active)), block]
        blocked = alpha < 1.0
        rows = np.nonzero(blocked)[0]
        if len(rows):  # go to the bound that blocks the step, and fix that variable there
            idx, var = active[rows], block[rows]
            x[idx] = xa[rows] + np.maximum(alpha[rows], 0.0)[:, None] * step[rows]
            x[idx, var] = np.where(step[rows, var] < 0, lo[var], hi[var])
            fixed[idx, var] = True
        rows = np.nonzero(~blocked)[0]
        done = np.zeros(len(active), dtype=bool)
        if len(rows):  # the free variables are optimal: release a fixed one that would move inside, or stop
            idx = active[rows]
            x[idx] = target[rows]
            g = _grad(q_mats, which, q_vec, x, idx)
            wrong = fixed[idx] & (((x[idx] <= lo) & (g < 0)) | ((x[idx] >= hi) & (g > 0)))
            release = np.argmax(np.where(wrong, np.abs(g), -1.0), axis=1)
            any_wrong = wrong.any(axis=1)
            fixed[idx[any_wrong], release[any_wrong]] = False
            done[rows[~any_wrong]] = True
        active = active[~done]
    return np.clip(x, lo, hi)


def _pivot(q_mats: np.ndarray, which: np.ndarray, q_vec: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           x0: np.ndarray, max_iter: int = 8) -> np.ndarray:
    """A start for the active-set method from the unconstrained optimum x0: block principal pivoting (every
    variable that is infeasible — free outside its bounds, or held at a bound its gradient points away from —
    changes side at once, per problem, all problems batched). Usually exact after a few rounds where the active-set
    method would add one bound per iteration; problems still infeasible after max_iter rounds keep their last
    (clipped) point. Only a start: box_qp's own iterations make the result exact either way."""
    free = (x0 > lo) & (x0 < hi)
    x = np.clip(x0, lo, hi)
    active = np.nonzero(~free.all(axis=1))[0]  # problems whose unconstrained optimum is feasible are done
    for _ in range(max_iter):
        if not len(active):
            break
        target = x[active].copy()
        _solve_free(np.arange(len(active)), active, free[active], x, q_mats, which, q_vec, target)
        x[active] = target
        g = _grad(q_mats, which, q_vec, x, active)
        fa, xa = free[active], target
        below, above = fa & (xa < lo), fa & (xa > hi)
        release = ~fa & (((xa <= lo) & (g < 0)) | ((xa >= hi) & (g > 0)))
        wrong = below | above | release
        done = ~wrong.any(axis=1)
        fa = (fa & ~below & ~above) | release
        xa = np.where(below, lo, np.where(above, hi, xa))
        free[active], x[active] = fa, xa
        active = active[~done]
    return np.clip(x, lo, hi)


def _solve_free(rows: np.ndarray, active: np.ndarray, free: np.ndarray, x: np.ndarray, q_mats: np.ndarray,
                which: np.ndarray, q_vec: np.ndarray, target: np.ndarray) -> None:
    """target[rows, free] = the free variables' optimum with the fixed ones held, for problems `rows` (indices
    into `active`), batched: each problem's free variables are gathered into a compact system padded to a
    multiple of 8 (padding pinned by identity rows), so the cost follows the free count, not K."""
    n_free = free[rows].sum(axis=1)
    size = np.minimum(-(-n_free // 8) * 8, free.shape[1])
    for m in np.unique(size):
        if m == 0:
            continue
        for chunk in np.array_split(rows[size == m], max(1, int(np.ceil(np.sum(size == m) / _BATCH)))):
            fr, xr, mat = free[chunk], x[active[chunk]], which[active[chunk]]
            idx = np.argsort(~fr, axis=1, kind="stable")[:, :m]  # free variables first
            valid = np.arange(m)[None, :] < fr.sum(axis=1)[:, None]
            rhs = -_grad(q_mats, mat, q_vec[active[chunk]], np.where(fr, 0.0, xr), np.arange(len(chunk)))
            sub = q_mats[mat[:, None, None], idx[:, :, None], idx[:, None, :]]  # (n, m, m), gathered directly
            sub = np.where(valid[:, :, None] & valid[:, None, :], sub, np.eye(m))
            sub_rhs = np.where(valid, np.take_along_axis(rhs, idx, axis=1), 0.0)
            sol = np.linalg.solve(sub, sub_rhs[:, :, None])[:, :, 0]
            out = target[chunk]
            # padding slots hold fixed variables (sorted after the free ones): they keep their values
            np.put_along_axis(out, idx, np.where(valid, sol, np.take_along_axis(out, idx, axis=1)), axis=1)
            target[chunk] = out


def _grad(q_mats: np.ndarray, which: np.ndarray, q_vec: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Q x - q for the problems idx."""
    out = np.empty((len(idx), x.shape[1]))
    for m in range(len(q_mats)):
        sel = which[idx] == m
        out[sel] = x[idx[sel]] @ q_mats[m].T - q_vec[idx[sel]]
    return out


def solve(gram: np.ndarray, rhs: np.ndarray, norms: np.ndarray, ranges: np.ndarray, n_face: int,
          mm_per_unit: float, pairs: list[tuple[int, int]] | None = None,
          options: SolveOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights (T, K) float32 and per-frame face residual RMS (T,) in mm.

    gram: B^T B (K, K); rhs: B^T d_t (T, K); norms: |d_t|^2 (T,) (character units^2); ranges: (K, 2) slider
    (min, max); n_face: face vertices in B; mm_per_unit: millimetres per character unit; pairs: (left, right)
    key index pairs for the symmetry term."""
    opt = options or SolveOptions()
    gram = np.asarray(gram, dtype=np.float64)
    rhs = np.atleast_2d(np.asarray(rhs, dtype=np.float64))
    n_frames, n_keys = rhs.shape
    lo, hi = np.asarray(ranges, dtype=np.float64).T
    if gram.shape != (n_keys, n_keys) or lo.shape != (n_keys,):
        raise FlameTalkError(f"solve: {n_keys} keys in the right-hand side, basis {gram.shape}, ranges {lo.shape}")
    energy = np.diag(gram)
    if not np.any(energy > 0):
        raise FlameTalkError("none of the chosen shape keys moves a face vertex: nothing can be solved")
    # Each key's regularisers are scaled by its own energy (its B column's |.|^2): a unit weight costs the same
    # fraction of what the key can explain for a 4-cm jawOpen and a 2-mm eyeLookIn, in any unit.
    scale = np.maximum(energy, 1e-6 * energy.max())
    root = np.sqrt(scale)
    reg = opt.l2 * np.eye(n_keys)
    for i, j in pairs or []:
        reg[i, i] += opt.symmetry
        reg[j, j] += opt.symmetry
        reg[i, j] -= opt.symmetry
        reg[j, i] -= opt.symmetry
    # keys that move nothing on the face get a firm pull to 0 (or their range's nearest value), not a free ride
    dead = energy <= 1e-12 * energy.max()
    reg[dead, dead] += 1.0
    base = gram + reg * np.outer(root, root)
    l1 = 0.5 * opt.l1 * scale * (lo >= 0)  # |w| = w where w >= 0; keys that can go negative get only L2
    smooth = opt.smooth * scale
    # Frames first solved independently, then red-black Gauss-Seidel sweeps: even frames (anchored to their odd
    # neighbours) all at once, then odd frames; each half-sweep is one batch of independent box QPs.
    neighbours = np.full(n_frames, 2)
    neighbours[0] -= 1
    neighbours[-1] -= 1
    w = box_qp(base, rhs - l1, lo, hi)
    systems = np.stack([base + n * np.diag(smooth) for n in (1, 2)])  # frames with one or two neighbours
    for _ in range(opt.sweeps if n_frames > 1 else 0):
        for parity in (0, 1):
            t = np.arange(parity, n_frames, 2)
            anchor = np.zeros((len(t), n_keys))
            anchor[t > 0] += w[t[t > 0] - 1]
            anchor[t < n_frames - 1] += w[t[t < n_frames - 1] + 1]
            w[t] = box_qp(systems, rhs[t] - l1 + smooth * anchor, lo, hi, neighbours[t] - 1, w[t])
    sq = np.asarray(norms, dtype=np.float64) - 2 * np.sum(w * rhs, axis=1) + np.einsum("tk,kl,tl->t", w, gram, w)
    residual_mm = np.sqrt(np.maximum(sq, 0.0) / max(n_face, 1)) * mm_per_unit
    return w.astype(np.float32), residual_mm
