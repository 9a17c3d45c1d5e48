"""The rotated joints' share of B^T d_t and |d_t|^2, from moments precomputed once (no per-frame vertex work).

With the head rotation removed, skinning adds to FLAME's posed vertex x_v (= rest + basis z_t, FLAME native)
    k_v,t = sum_j w_vj (A_j,t x_v,t + c_j,t),   A_j = W_j - I,  c_j = L_j - W_j J_j
for the joints j whose world transform (W_j, L_j) is not the identity (the jaw; others only when rotated).
Written with the augmented x~ = (x, 1) and A~_j = [A_j | c_j] (3, 4), k is bilinear in A~_j,t and (1, z_t), so
    B^T k_t   = sum_j <A~_j,t, H0_j> + <A~_j,t (x) z_t, H1_j>
    2 D_lin^T M k_t and k_t^T M k_t   likewise, with moments over the joint's vertices
where M is the (sparse, symmetric) metric of |d|^2 on FLAME's vertices. Precomputation costs
O(jaw vertices x components^2); each frame costs O(components^2), whatever the mesh sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp


def augmented_transforms(world_rot: np.ndarray, world_loc: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(T, J, 3, 4): [W_j - I | L_j - W_j J_j] per frame and joint."""
    lin = world_rot - np.eye(3)
    off = world_loc - np.einsum("tjab,tjb->tja", world_rot, joints)
    return np.concatenate([lin, off[..., None]], axis=-1)


class SkinMoments:
    """Moments for the joints `moving`. rest: (U, 3); basis: (U, 3, nz); weights: (U, J); proj: (U, 3, K) the
    basis' back-projection G; metric: (U, U) sparse."""

    def __init__(self, moving: np.ndarray, rest: np.ndarray, basis: np.ndarray, weights: np.ndarray,
                 proj: np.ndarray, metric: sp.csr_matrix):
        nz, n_keys = basis.shape[2], proj.shape[2]
        self.moving = [int(j) for j in moving]
        self.sets, self.xr, self.xp = [], [], []
        self.h0, self.h1, self.k0, self.k1 = [], [], [], []
        for j in self.moving:
            s = np.nonzero(weights[:, j])[0]
            w = weights[s, j]
            xr = w[:, None] * np.concatenate([rest[s], np.ones((len(s), 1))], axis=1)  # (S, 4)
            # per coordinate, contiguous (BLAS needs unit inner strides): the augmented 4th row of the basis is 0
            xp = np.ascontiguousarray((w[:, None, None] * basis[s]).transpose(1, 0, 2))  # (3, S, nz)
            g = np.ascontiguousarray(proj[s].transpose(1, 0, 2))  # (3, S, K)
            ml = [np.ascontiguousarray(metric[:, s].T @ basis[:, a, :]) for a in range(3)]  # (S, nz)
            self.sets.append(s)
            self.xr.append(xr)
            self.xp.append(xp)
            self.h0.append(np.stack([g[a].T @ xr for a in range(3)]).transpose(0, 2, 1))  # (3, 4, K)
            h1 = np.empty((3, 3, nz, n_keys))
            k1 = np.empty((3, 3, nz, nz))
            for a in range(3):
                for b in range(3):
                    h1[a, b] = xp[b].T @ g[a]
                    k1[a, b] = ml[a].T @ xp[b]
            self.h1.append(h1.reshape(9 * nz, n_keys))
            self.k0.append(np.stack([ml[a].T @ xr for a in range(3)]).transpose(0, 2, 1))  # (3, 4, nz)
            self.k1.append(k1)
        # skin-skin moments per joint pair
        self.pairs = {}
        for p in range(len(self.moving)):
            for q in range(len(self.moving)):
                block = metric[self.sets[p]][:, self.sets[q]].tocsr()
                mxr = block @ self.xr[q]  # (Sp, 4)
                mxp = [np.ascontiguousarray(block @ self.xp[q][c]) for c in range(3)]  # 3 x (Sp, nz)
                s0 = self.xr[p].T @ mxr  # (4, 4)
                s1 = np.stack([self.xr[p].T @ mxp[c] for c in range(3)], axis=1)  # (4, 3, nz)
                s1t = np.stack([self.xp[p][b].T @ mxr for b in range(3)]).transpose(0, 2, 1)  # (3, 4, nz)
                s2 = np.empty((3, 3, nz, nz))
                for b in range(3):
                    for c in range(3):
                        s2[b, c] = self.xp[p][b].T @ mxp[c]
                self.pairs[(p, q)] = (s0, s1, s1t, s2)

    def add(self, transforms: np.ndarray, z: np.ndarray, rhs: np.ndarray, norms: np.ndarray) -> None:
        """Add the skinning share for frames with augmented transforms (T, J, 3, 4) and components z (T, nz)
        to rhs (T, K) and norms (T,) in place."""
        n_frames, nz = z.shape
        for p, j in enumerate(self.moving):
            at = transforms[:, j]  # (T, 3, 4)
            rhs += np.einsum("tab,abk->tk", at, self.h0[p])
            outer = (at[:, :, :3, None] * z[:, None, None, :]).reshape(n_frames, 9 * nz)
            rhs += outer @ self.h1[p]
            cross = np.einsum("tab,abm,tm->t", at, self.k0[p], z)
            for a in range(3):
                for b in range(3):
                    cross += at[:, a, b] * np.sum((z @ self.k1[p][a, b]) * z, axis=1)
            norms += 2 * cross
        for (p, q), (s0, s1, s1t, s2) in self.pairs.items():
            omega = np.einsum("tab,tac->tbc", transforms[:, self.moving[p]], transforms[:, self.moving[q]])
            val = np.einsum("tbc,bc->t", omega, s0)
            val += np.einsum("tbc,bcn,tn->t", omega[:, :, :3], s1, z)
            val += np.einsum("tbc,bcm,tm->t", omega[:, :3, :], s1t, z)
            for b in range(3):
                for c in range(3):
                    val += omega[:, b, c] * np.sum((z @ s2[b, c].T) * z, axis=1)
            norms += val
