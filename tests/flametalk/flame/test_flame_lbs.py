"""numpy FLAME forward pass against independent, straightforward computations."""

from __future__ import annotations

import numpy as np
import pytest
from flametalk.testing import synthetic_flame as synthetic

from blender_addon.flame import (
    axis_angle_to_quaternion,
    flame_to_blender,
    forward,
    forward_motion,
    motion_to_pose,
    rodrigues,
    validate,
)


@pytest.fixture(scope="module")
def model():
    return synthetic.model_from_arrays(synthetic.make_arrays(n_verts=200, n_faces=300, seed=11))


def _expm_skew(aa: np.ndarray) -> np.ndarray:
    """Rotation as the matrix exponential of the skew matrix, by a long Taylor series (independent of Rodrigues)."""
    k = np.array([[0, -aa[2], aa[1]], [aa[2], 0, -aa[0]], [-aa[1], aa[0], 0]])
    out, term = np.eye(3), np.eye(3)
    for n in range(1, 40):
        term = term @ k / n
        out = out + term
    return out


def test_rodrigues_matches_matrix_exponential() -> None:
    rng = np.random.default_rng(0)
    vecs = np.concatenate([rng.normal(size=(20, 3)), rng.normal(size=(5, 3)) * 1e-9, np.zeros((1, 3))])
    got = rodrigues(vecs)
    for v, r in zip(vecs, got):
        np.testing.assert_allclose(r, _expm_skew(v), atol=1e-13)


def test_quaternion_matches_rodrigues() -> None:
    rng = np.random.default_rng(1)
    vecs = np.concatenate([rng.normal(size=(20, 3)), np.zeros((1, 3)), [[1e-8, 0, 0]]])
    for v, (w, x, y, z) in zip(vecs, axis_angle_to_quaternion(vecs)):
        r = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ])
        np.testing.assert_allclose(r, rodrigues(v), atol=1e-13)
        assert abs(w * w + x * x + y * y + z * z - 1) < 1e-14


def test_zero_pose_is_template_plus_blendshapes(model) -> None:
    rng = np.random.default_rng(2)
    shape, expr = rng.normal(size=300), rng.normal(size=(3, 100))
    verts, joints = forward(model, np.zeros((3, 15)), expr, shape)
    for t in range(3):
        expected = model.v_template + np.tensordot(model.shapedirs, np.concatenate([shape, expr[t]]), axes=(2, 0))
        np.testing.assert_allclose(verts[t], expected, atol=1e-12)
        np.testing.assert_allclose(joints[t], model.j_regressor @ expected, atol=1e-12)


def _tiny_model(posedirs: np.ndarray | None = None):
    """Five vertices, each one the (one-hot regressed) location of a joint and skinned 100% to it, plus a
    sixth vertex one unit in front of the jaw, skinned to the jaw."""
    joints = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1], [0.5, 2, 1], [-0.5, 2, 1]], dtype=float)
    verts = np.concatenate([joints, [[0, 1, 2]]])
    weights = np.zeros((6, 5))
    weights[np.arange(5), np.arange(5)] = 1
    weights[5, 2] = 1
    arrays = {
        "v_template": verts, "f": np.array([[0, 1, 2]]), "shapedirs": np.zeros((6, 3, 301)),
        "posedirs": np.zeros((6, 3, 36)) if posedirs is None else posedirs,
        "J_regressor": np.eye(5, 6), "weights": weights,
        "kintree_table": np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
    }
    return validate(arrays)


def test_jaw_rotation_90_degrees_moves_vertex_about_jaw_joint() -> None:
    model = _tiny_model()
    pose = np.zeros(15)
    pose[6:9] = [np.pi / 2, 0, 0]  # jaw: +90 degrees about x turns +z into -y
    verts, joints = forward(model, pose)
    np.testing.assert_allclose(verts[0, 5], [0, 0, 1], atol=1e-12)  # jaw (0,1,1) + R (0,0,1) = (0,0,1)
    np.testing.assert_allclose(verts[0, :5], model.v_template[:5], atol=1e-12)
    # With a 90-degree root turn about y on top, everything turns about the root joint at the origin.
    pose[0:3] = [0, np.pi / 2, 0]
    verts, joints = forward(model, pose)
    ry = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    np.testing.assert_allclose(verts[0, 5], ry @ [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(joints[0, 2], ry @ [0, 1, 1], atol=1e-12)


def test_pose_correctives_follow_r_minus_i_row_major() -> None:
    posedirs = np.zeros((6, 3, 36))
    posedirs[5, 0, 9 + 3 * 2 + 1] = 1.0  # jaw (joint 2 -> block 1), entry (2, 1), moves vertex 5 along x
    model = _tiny_model(posedirs)
    angle = 0.3
    pose = np.zeros(15)
    pose[6] = angle
    verts, _ = forward(model, pose)
    r21 = np.sin(angle)  # R_x(angle)[2, 1]
    rest_offset = np.array([r21, 0, 0])  # added before skinning, then rotated with the jaw
    expected = [0, 1, 1] + rodrigues(pose[6:9]) @ (np.array([0, 0, 1]) + rest_offset)
    np.testing.assert_allclose(verts[0, 5], expected, atol=1e-12)


def test_joints_move_with_expression() -> None:
    model = _tiny_model()
    model.shapedirs[2, 2, 300] = 0.1  # the expression moves the jaw's regressor vertex forward
    pose = np.zeros(15)
    pose[6] = np.pi / 2
    verts, joints = forward(model, pose, np.array([[1.0]]))
    np.testing.assert_allclose(joints[0, 2], [0, 1, 1.1], atol=1e-12)
    np.testing.assert_allclose(verts[0, 5], [0, 0.1, 1.1], atol=1e-12)  # pivots about the moved joint


def test_chunked_batches_equal_single_frames(model) -> None:
    rng = np.random.default_rng(3)
    pose, expr = rng.normal(size=(300, 15)) * 0.3, rng.normal(size=(300, 100))
    verts, _ = forward(model, pose, expr)
    for t in (0, 127, 128, 299):
        np.testing.assert_allclose(verts[t], forward(model, pose[t], expr[t])[0][0], atol=1e-13)


def test_motion_layout_and_blender_axes(model) -> None:
    motion = synthetic.random_motion(4)
    expr, pose = motion_to_pose(motion)
    np.testing.assert_array_equal(expr, motion[:, :100])
    np.testing.assert_array_equal(pose[:, 0:3], motion[:, 100:103])
    np.testing.assert_array_equal(pose[:, 6:9], motion[:, 103:106])
    assert not pose[:, 3:6].any() and not pose[:, 9:].any()
    np.testing.assert_allclose(forward_motion(model, motion), forward(model, pose, expr)[0])
    np.testing.assert_array_equal(flame_to_blender(np.array([1.0, 2.0, 3.0])), [1.0, -3.0, 2.0])
