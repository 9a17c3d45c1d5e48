"""FLAME forward pass in numpy (for tests, metrics and the add-on's checks).

The standard FLAME/SMPL pipeline: identity + expression blendshapes, joints regressed from that shaped mesh (so
joints move with expression), pose correctives driven by (R_j - I) of every non-root joint, then linear blend
skinning where each joint rotates about its own (shaped) location. Axis-angle vectors are in FLAME's frame.
"""

from __future__ import annotations

import numpy as np

from .contract import EXPR, HEAD_ROT, JAW_ROT, MOTION_DIM
from .reader import FlameModel

_CHUNK = 128  # frames per forward-pass chunk

# FLAME (x, y, z) -> Blender (x, -z, y): FLAME is +Y up / face +Z, Blender is +Z up / front view looking along +Y.
FLAME_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def flame_to_blender(points: np.ndarray) -> np.ndarray:
    """Convert (..., 3) FLAME-frame points/vectors to Blender's frame."""
    points = np.asarray(points)
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from axis-angle vectors (..., 3); exact near zero (series for sin/cos)."""
    aa = np.asarray(axis_angle, dtype=np.float64)
    theta2 = np.sum(aa * aa, axis=-1)[..., None, None]
    theta = np.sqrt(theta2)
    small = theta2 < 1e-12
    safe = np.where(small, 1.0, theta)
    # sin(t)/t and (1-cos t)/t^2 with their Taylor series where t is tiny, to avoid 0/0.
    a = np.where(small, 1.0 - theta2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(safe)) / (safe * safe))
    x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape((*aa.shape[:-1], 3, 3))
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + a * k + b * (k @ k)


def axis_angle_to_quaternion(axis_angle: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) as (w, x, y, z) from axis-angle vectors (..., 3)."""
    aa = np.asarray(axis_angle, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(t/2)/t -> 1/2 - t^2/48 near zero
    scale = np.where(theta < 1e-6, 0.5 - theta * theta / 48.0, np.sin(half) / np.where(theta < 1e-6, 1.0, theta))
    return np.concatenate([np.cos(half), aa * scale], axis=-1)


def shaped_vertices(model: FlameModel, shape: np.ndarray | None, expression: np.ndarray) -> np.ndarray:
    """(T, V, 3) template + identity + expression offsets. expression: (T, <= n_expr)."""
    expression = np.atleast_2d(np.asarray(expression, dtype=np.float64))
    n_exp = expression.shape[1]
    if n_exp > model.n_expr:
        raise ValueError(f"{n_exp} expression coefficients for a model with {model.n_expr}")
    base = model.v_template.copy()
    if shape is not None:
        shape = np.asarray(shape, dtype=np.float64).ravel()
        base = base + model.shape_dirs[:, :, : shape.size] @ shape
    n_verts = model.n_verts
    dirs = model.expr_dirs[:, :, :n_exp].reshape(n_verts * 3, n_exp)
    return base[None] + (expression @ dirs.T).reshape(-1, n_verts, 3)


def forward(
    model: FlameModel,
    full_pose: np.ndarray,
    expression: np.ndarray | None = None,
    shape: np.ndarray | None = None,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Posed vertices (T, V, 3) and posed joint locations (T, J, 3), FLAME frame.

    full_pose: (T, 3 * J) axis-angle per joint in file order (root, neck, jaw, eye_L, eye_R for FLAME);
    expression: (T, <= n_expr) or None; shape: (<= n_shape,) identity coefficients or None.
    """
    full_pose = np.atleast_2d(np.asarray(full_pose, dtype=np.float64))
    frames, n_joints = full_pose.shape[0], model.n_joints
    if full_pose.shape[1] != 3 * n_joints:
        raise ValueError(f"full_pose must have {3 * n_joints} columns, got {full_pose.shape[1]}")
    expression = np.zeros((frames, 0)) if expression is None else np.atleast_2d(expression)
    if expression.shape[0] not in (1, frames):
        raise ValueError(f"{expression.shape[0]} expression frames for {frames} pose frames")
    expression = np.broadcast_to(expression, (frames, expression.shape[1]))
    verts: list[np.ndarray] = []
    joints: list[np.ndarray] = []
    for start in range(0, frames, _CHUNK):  # bounded memory: the blend tensors are (chunk, V, 3, 3)
        stop = min(frames, start + _CHUNK)
        v, j = _forward_chunk(model, full_pose[start:stop], expression[start:stop], shape)
        verts.append(v.astype(dtype, copy=False))
        joints.append(j.astype(dtype, copy=False))
    return np.concatenate(verts), np.concatenate(joints)


def _forward_chunk(
    model: FlameModel, full_pose: np.ndarray, expression: np.ndarray, shape: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    frames, n_joints = full_pose.shape[0], model.n_joints
    v_shaped = shaped_vertices(model, shape, expression)
    joints = np.einsum("jv,tvc->tjc", model.j_regressor, v_shaped)
    rots = rodrigues(full_pose.reshape(frames, n_joints, 3))
    pose_feature = (rots[:, 1:] - np.eye(3)).reshape(frames, -1)  # row-major (R - I) of every non-root joint
    n_verts = model.n_verts
    pose_offsets = (pose_feature @ model.posedirs.reshape(n_verts * 3, -1).T).reshape(frames, n_verts, 3)
    v_posed = v_shaped + pose_offsets

    # World rotation and location of every joint along the chain; each joint pivots about its shaped location.
    world_rot = np.empty_like(rots)
    world_loc = np.empty_like(joints)
    for j in range(n_joints):
        p = model.parents[j]
        if p < 0:
            world_rot[:, j] = rots[:, j]
            world_loc[:, j] = joints[:, j]
        else:
            world_rot[:, j] = world_rot[:, p] @ rots[:, j]
            world_loc[:, j] = world_loc[:, p] + np.einsum("tab,tb->ta", world_rot[:, p], joints[:, j] - joints[:, p])
    # Skinning transform of joint j: v -> R_j (v - J_j) + t_j, blended linearly with the weights.
    offset = world_loc - np.einsum("tjab,tjb->tja", world_rot, joints)
    blend_rot = np.einsum("vj,tjab->tvab", model.weights, world_rot)
    blend_off = np.einsum("vj,tja->tva", model.weights, offset)
    verts = np.einsum("tvab,tvb->tva", blend_rot, v_posed) + blend_off
    return verts, world_loc


def motion_to_pose(motion: np.ndarray, n_joints: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """ARTalk motion (T, 106) -> (expression (T, 100), full_pose (T, 3 * n_joints)); neck and eyes stay 0."""
    motion = np.atleast_2d(np.asarray(motion, dtype=np.float64))
    if motion.shape[1] != MOTION_DIM:
        raise ValueError(f"motion must have {MOTION_DIM} channels, got {motion.shape[1]}")
    pose = np.zeros((motion.shape[0], 3 * n_joints))
    pose[:, 0:3] = motion[:, HEAD_ROT]
    pose[:, 6:9] = motion[:, JAW_ROT]
    return motion[:, EXPR], pose


def forward_motion(model: FlameModel, motion: np.ndarray, shape: np.ndarray | None = None,
                   dtype: type = np.float64) -> np.ndarray:
    """Posed vertices (T, V, 3), FLAME frame, for ARTalk motion frames."""
    expression, pose = motion_to_pose(motion, model.n_joints)
    return forward(model, pose, expression[:, : model.n_expr], shape, dtype)[0]
