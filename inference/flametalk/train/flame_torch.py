"""Differentiable FLAME forward pass in torch (vertex losses in stage 1).

The same maths as flametalk.flame.lbs (numpy, used by evaluation and the add-on): identity + expression
blendshapes, joints regressed from the shaped mesh, pose correctives driven by (R_j - I) of the non-root joints
(row-major, 36 values for FLAME), Rodrigues rotations, and linear blend skinning over the kinematic chain
(FLAME: root, neck, jaw, eye_L, eye_R with parents -1, 0, 1, 1, 1).

Joints only need J_regressor @ (template + blendshapes), so the regression is precomputed on the blendshape bases
and the output may be limited to a vertex subset (e.g. the lips) without computing the whole mesh.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT
from ..flame.reader import FlameModel


def rodrigues(aa_N3: torch.Tensor) -> torch.Tensor:
    """Axis-angle (N, 3) -> rotation matrices (N, 3, 3): I + a K + b K^2 with K the cross-product matrix of the
    (unnormalised) vector, a = sin t / t, b = (1 - cos t) / t^2; Taylor series near 0 keep gradients finite."""
    theta2 = (aa_N3 * aa_N3).sum(-1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = aa_N3.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=aa_N3.dtype, device=aa_N3.device).expand_as(K)
    return eye + a[:, None, None] * K + b[:, None, None] * (K @ K)


class FlameTorch(nn.Module):
    """FLAME as buffers (float32 by default). `vertex_ids` limits the output vertices (joints stay exact)."""

    def __init__(self, model: FlameModel, vertex_ids: np.ndarray | None = None, n_expr: int = 100,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        ids = np.arange(model.n_verts) if vertex_ids is None else np.asarray(vertex_ids, dtype=np.int64)
        n_expr = min(n_expr, model.n_expr)
        dirs = np.concatenate([model.shape_dirs, model.expr_dirs[:, :, :n_expr]], axis=2)  # (V, 3, S + E)
        jreg = model.j_regressor
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)
        self.n_shape, self.n_expr = model.n_shape, n_expr
        self.parents = [int(p) for p in model.parents]
        self.register_buffer("v_template", as_t(model.v_template[ids]))
        self.register_buffer("dirs", as_t(dirs[ids]))
        self.register_buffer("posedirs", as_t(model.posedirs[ids].reshape(len(ids) * 3, -1).T))  # (P, V'*3)
        self.register_buffer("weights", as_t(model.weights[ids]))
        self.register_buffer("j_template", as_t(jreg @ model.v_template))  # (J, 3)
        self.register_buffer("j_dirs", as_t(np.einsum("jv,vcd->jcd", jreg, dirs)))  # (J, 3, S + E)

    def coefficients(self, expression_NE: torch.Tensor, shape_NS: torch.Tensor | None) -> torch.Tensor:
        N = expression_NE.shape[0]
        beta = expression_NE.new_zeros(N, self.n_shape + self.n_expr)
        if shape_NS is not None:
            beta[:, : shape_NS.shape[-1]] = shape_NS.expand(N, -1)
        beta[:, self.n_shape : self.n_shape + expression_NE.shape[1]] = expression_NE[:, : self.n_expr]
        return beta

    def forward(self, full_pose_N3J: torch.Tensor, expression_NE: torch.Tensor,
                shape_NS: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed vertices (N, V', 3) and posed joints (N, J, 3). full_pose: axis-angle per joint in file order."""
        N, J = full_pose_N3J.shape[0], len(self.parents)
        beta = self.coefficients(expression_NE.to(self.dirs.dtype), shape_NS)
        v_shaped = self.v_template + torch.einsum("vcd,nd->nvc", self.dirs, beta)
        joints = self.j_template + torch.einsum("jcd,nd->njc", self.j_dirs, beta)
        rots = rodrigues(full_pose_N3J.reshape(N * J, 3).to(self.dirs.dtype)).view(N, J, 3, 3)
        eye = torch.eye(3, dtype=rots.dtype, device=rots.device)
        pose_feature = (rots[:, 1:] - eye).reshape(N, -1)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(N, -1, 3)
        world_rot, world_loc = [], []
        for j, p in enumerate(self.parents):
            if p < 0:
                world_rot.append(rots[:, j])
                world_loc.append(joints[:, j])
            else:
                world_rot.append(world_rot[p] @ rots[:, j])
                world_loc.append(world_loc[p] + (world_rot[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
        R = torch.stack(world_rot, dim=1)  # (N, J, 3, 3)
        loc = torch.stack(world_loc, dim=1)  # (N, J, 3)
        offset = loc - (R @ joints[..., None])[..., 0]  # joint j maps v -> R_j (v - J_j) + loc_j
        blend_R = torch.einsum("vj,njab->nvab", self.weights, R)
        blend_t = torch.einsum("vj,nja->nva", self.weights, offset)
        verts = (blend_R @ v_posed[..., None])[..., 0] + blend_t
        return verts, loc

    def forward_motion(self, motion_ND: torch.Tensor, shape_NS: torch.Tensor | None = None,
                       head_pose: bool = True) -> torch.Tensor:
        """ARTalk motion frames (N, 106) -> vertices (N, V', 3); neck and eyes stay 0 (as the release)."""
        N, J = motion_ND.shape[0], len(self.parents)
        pose = motion_ND.new_zeros(N, 3 * J)
        if head_pose:
            pose[:, 0:3] = motion_ND[:, HEAD_ROT]
        pose[:, 6:9] = motion_ND[:, JAW_ROT]
        return self(pose, motion_ND[:, EXPR], shape_NS)[0]
