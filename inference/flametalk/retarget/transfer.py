"""FLAME's per-frame deformation carried to the character's face vertices, and its projection on a shape-key basis.

For motion frame t, FLAME's displacement from its (identity-shaped) rest pose, head rotation excluded, is
    D_t = E psi_t + P f_t + K_t
with E the expression basis, psi_t the expression coefficients, P the pose correctives, f_t = (R_j - I) of the
non-root joints, and K_t what skinning adds: nonzero only on vertices weighted to a rotated joint (the jaw).
A character face vertex i moves by d_t,i = A (sum_k bary_ik D_t,v_k) with A = scale * R_fit @ FLAME_TO_BLENDER:
the displacement of its foot point on FLAME's surface (its offset along the normal is carried along unrotated,
a second-order effect for vertices that lie on the fitted surface).

The solve only needs B^T d_t and |d_t|^2 for its basis B. Both are linear/quadratic in z_t = (psi_t, f_t) plus the
skinning part, which is bilinear in the rotated joints' transforms and z_t (skinning.py), so everything comes
from matrices precomputed once (FLAME-vertex sized) and per-frame work is O(components^2), independent of the
mesh sizes. Memory grows with face vertices x keys, never frames x vertices.
"""

from __future__ import annotations

import numpy as np

from ..errors import FlameTalkError
from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT, MOTION_DIM
from ..flame.lbs import FLAME_TO_BLENDER, rodrigues
from ..flame.reader import FlameModel
from .fit import Fit
from .skinning import SkinMoments, augmented_transforms

CHUNK = 256  # frames per chunk for the per-frame transforms (bounds the (chunk, 9 x components) temporaries)


def check_motion(motion: np.ndarray) -> np.ndarray:
    """(T, 106) float64 motion or one FlameTalkError line."""
    motion = np.asarray(motion)
    if motion.ndim != 2 or motion.shape[1] != MOTION_DIM or motion.shape[0] == 0:
        raise FlameTalkError(f"motion must be (frames, {MOTION_DIM}), got {motion.shape}")
    if not np.issubdtype(motion.dtype, np.number):
        raise FlameTalkError("motion is not numeric")
    motion = motion.astype(np.float64)
    if not np.all(np.isfinite(motion)):
        raise FlameTalkError("motion contains NaN or infinity: nothing was retargeted")
    return motion


class Transfer:
    """The map from FLAME motion to the character's face displacements (character frame and units).

    flame: the model the fit was made with; jaw_bone=True leaves the jaw rotation out of the deformation (a bone
    takes it: see `rotations`)."""

    def __init__(self, flame: FlameModel, fit: Fit, jaw_bone: bool = False):
        if fit.flame_vertices.shape[0] != flame.n_verts or fit.shape.shape[0] != flame.n_shape:
            raise FlameTalkError("the fit was made with a different FLAME model: fit the character again")
        self.flame, self.fit, self.jaw_bone = flame, fit, jaw_bone
        self.face = fit.face_index  # (Nf,) character vertices
        corners = flame.faces[fit.tri[self.face]]  # (Nf, 3) FLAME vertices
        self.used, local = np.unique(corners, return_inverse=True)  # (U,) FLAME vertices the face touches
        n_face, n_used = len(self.face), len(self.used)
        import scipy.sparse as sp  # imported on use: the package itself must import without scipy

        rows = np.repeat(np.arange(n_face), 3)
        self.interp = sp.csr_matrix((fit.bary[self.face].astype(np.float64).ravel(), (rows, local.ravel())),
                                    shape=(n_face, n_used))  # (Nf, U) barycentric weights
        self.linear = fit.flame_to_character  # (3, 3) FLAME-native vectors -> character vectors
        self.n_expr = min(flame.n_expr, EXPR.stop - EXPR.start)
        rest = flame.v_template + flame.shape_dirs @ fit.shape  # identity-shaped rest pose, FLAME native
        expr = flame.expr_dirs[:, :, : self.n_expr]
        self.basis = np.concatenate([expr[self.used], flame.posedirs[self.used]], axis=2)  # (U, 3, nz)
        self.rest_used = rest[self.used]
        self.joints0 = flame.j_regressor @ rest  # (J, 3)
        self.joints_expr = np.einsum("jv,vak->jak", flame.j_regressor, expr)  # joints move with expression
        self.weights_used = flame.weights[self.used]  # (U, J)

    def pose(self, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(psi (T, n_expr), full pose (T, 3J)) with the head rotation (and the jaw, for a jaw bone) zeroed."""
        pose = np.zeros((motion.shape[0], 3 * self.flame.n_joints))
        if not self.jaw_bone:
            pose[:, 6:9] = motion[:, JAW_ROT]
        return motion[:, : self.n_expr], pose

    def rotations(self, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(head, jaw) rotations (T, 3) as axis-angle vectors in the character's frame (FLAME's axis-angle
        rotated by the fit; the angle is unchanged)."""
        rot = self.fit.rotation @ FLAME_TO_BLENDER
        return motion[:, HEAD_ROT] @ rot.T, motion[:, JAW_ROT] @ rot.T

    def _rotated_joints(self, pose: np.ndarray) -> np.ndarray:
        parents = self.flame.parents
        moving = np.any(pose.reshape(len(pose), -1, 3) != 0, axis=(0, 2))
        for j in range(1, len(parents)):  # a child of a rotated joint moves too (joints are in tree order)
            moving[j] |= moving[parents[j]]
        return np.nonzero(moving)[0]

    def _world(self, psi: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rots, world_rot (T, J, 3, 3), world_loc, joints (T, J, 3)): FLAME's kinematic chain, joints
        regressed from the expression-shaped mesh."""
        c, n_j = len(psi), self.flame.n_joints
        rots = rodrigues(pose.reshape(c, n_j, 3))
        joints = self.joints0 + np.einsum("jak,tk->tja", self.joints_expr, psi)
        world_rot, world_loc = np.empty_like(rots), np.empty_like(joints)
        for j, p in enumerate(self.flame.parents):
            if p < 0:
                world_rot[:, j], world_loc[:, j] = rots[:, j], joints[:, j]
            else:
                world_rot[:, j] = world_rot[:, p] @ rots[:, j]
                world_loc[:, j] = world_loc[:, p] + np.einsum("tab,tb->ta", world_rot[:, p],
                                                              joints[:, j] - joints[:, p])
        return rots, world_rot, world_loc, joints

    def _skinning(self, psi: np.ndarray, pose: np.ndarray, sel: np.ndarray) -> np.ndarray:
        """(c, |sel|, 3) what skinning adds to the posed vertices `sel` (indices into `used`), FLAME native
        (explicit, for `displacements`)."""
        c, n_j = len(psi), self.flame.n_joints
        rots, world_rot, world_loc, joints = self._world(psi, pose)
        feature = (rots[:, 1:] - np.eye(3)).reshape(c, -1)
        z = np.concatenate([psi, feature], axis=1)
        n_sel = len(sel)
        posed = self.rest_used[sel] + (z @ self.basis[sel].reshape(n_sel * 3, -1).T).reshape(c, n_sel, 3)
        w = self.weights_used[sel]  # (S, J)
        out = -posed  # sum_j w_j (R_j (v - J_j) + L_j) - v, with sum_j w_j = 1; one joint at a time keeps
        for j in range(n_j):  # the temporaries (c, S, 3)
            if np.any(w[:, j]):
                moved = (posed - joints[:, j, None]) @ world_rot[:, j].transpose(0, 2, 1) + world_loc[:, j, None]
                out += w[:, j, None] * moved
        return out

    def _features(self, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        psi, pose = self.pose(motion)
        rots = rodrigues(pose.reshape(len(pose), -1, 3))
        z = np.concatenate([psi, (rots[:, 1:] - np.eye(3)).reshape(len(pose), -1)], axis=1)
        joints = self._rotated_joints(pose)
        sel = np.nonzero(self.weights_used[:, joints].sum(axis=1) > 0)[0] if len(joints) else np.zeros(0, int)
        return z, pose, sel

    def displacements(self, motion: np.ndarray) -> np.ndarray:
        """(T, Nf, 3) face vertex displacements, character frame and units (explicit: for checks and short
        motions; the solve uses `project`)."""
        motion = check_motion(motion)
        z, pose, sel = self._features(motion)
        disp = (z @ self.basis.reshape(-1, self.basis.shape[2]).T).reshape(len(z), -1, 3)
        if len(sel):
            disp[:, sel] += self._skinning(motion[:, : self.n_expr], pose, sel)
        out = np.stack([self.interp @ d for d in disp])  # (T, Nf, 3) FLAME native
        return out @ self.linear.T

    def project(self, deltas: np.ndarray, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a basis `deltas` (K, Nf, 3) (the chosen keys at the face vertices, character units):
        (H = B^T B (K, K), B^T d_t (T, K), |d_t|^2 (T,)) without forming d_t."""
        motion = check_motion(motion)
        z, pose, _sel = self._features(motion)
        deltas = np.ascontiguousarray(deltas, dtype=np.float64)  # C order: the reshapes below are views
        flat = deltas.reshape(len(deltas), -1)
        gram = flat @ flat.T
        # G = W^T (B A): each key's deltas rotated back into FLAME's frame and gathered on FLAME's vertices
        back = [np.einsum("kia,a->ik", deltas, self.linear[:, b]) for b in range(3)]  # 3 x (Nf, K)
        g = np.ascontiguousarray(np.stack([self.interp.T @ bb for bb in back], axis=1))  # (U, 3, K)
        # components the motion never uses, or that move none of these vertices, cost nothing
        live = np.nonzero(np.any(z != 0, axis=0) & np.any(self.basis != 0, axis=(0, 1)))[0]
        z_live, basis = z[:, live], np.ascontiguousarray(self.basis[:, :, live])
        n_used, nz = len(self.used), len(live)
        basis_flat = basis.reshape(n_used * 3, nz)
        rhs = z_live @ (basis_flat.T @ g.reshape(n_used * 3, -1))  # (T, K)
        metric = (self.fit.scale**2) * (self.interp.T @ self.interp).tocsr()  # |A x|^2 = scale^2 |x|^2
        mb = np.stack([metric @ basis[:, a, :] for a in range(3)], axis=1)  # (U, 3, nz)
        quad = basis_flat.T @ mb.reshape(n_used * 3, nz)
        norms = np.sum((z_live @ quad) * z_live, axis=1)
        moving = self._rotated_joints(pose)
        moving = moving[np.any(self.weights_used[:, moving] > 0, axis=0)] if len(moving) else moving
        if len(moving):
            moments = SkinMoments(moving, self.rest_used, basis, self.weights_used, g, metric)
            psi = motion[:, : self.n_expr]
            for start in range(0, len(motion), CHUNK):
                stop = min(len(motion), start + CHUNK)
                _, world_rot, world_loc, joints = self._world(psi[start:stop], pose[start:stop])
                moments.add(augmented_transforms(world_rot, world_loc, joints), z_live[start:stop],
                            rhs[start:stop], norms[start:stop])
        return gram, rhs, norms
