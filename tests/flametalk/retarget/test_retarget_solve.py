"""Transfer and solve: the projected normal equations match the explicit FLAME forward pass; the box QP is exact;
known weights are recovered through a re-meshed, rescaled, moved ICT head; a jaw-only motion drives jawOpen."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.ict_flame import CM_DEGREES, cached_fit, ict, ict_flame, rotation, smooth_weights
from flametalk.errors import FlameTalkError
from flametalk.flame import forward, motion_to_pose
from flametalk.retarget import Fit, SolveOptions, Transfer, box_qp, retarget, solve
from flametalk.testing.synthetic_flame import make_arrays, model_from_arrays, random_motion
from scipy.optimize import lsq_linear, minimize

# The FLAME-format model's expression basis: 27 of the ICT head's 53 shapes (both sides of some pairs, one side
# of others), so the other 26 keys must come out 0.
EXPR_KEYS = tuple(ict().names[i] for i in range(0, 53, 2))


def _fake_fit(model, n_char: int, seed: int = 0) -> Fit:
    rng = np.random.default_rng(seed)
    tri = rng.integers(0, len(model.faces), n_char).astype(np.int32)
    tri[::7] = -1  # some vertices are not face
    bary = rng.random((n_char, 3))
    bary /= bary.sum(axis=1, keepdims=True)
    return Fit(scale=37.0, rotation=rotation((10.0, -20.0, 30.0)), translation=np.array([1.0, 2.0, 3.0]),
               shape=rng.normal(size=model.n_shape) * 0.5, flame_vertices=np.zeros((model.n_verts, 3), np.float32),
               tri=tri, bary=bary.astype(np.float32), offset=np.zeros(n_char, np.float32), mm_per_unit=10.0,
               rms_mm=0.0, max_mm=0.0, n_used=int(np.sum(tri >= 0)))


def test_transfer_matches_the_flame_forward_pass():
    """Expression, jaw skinning and pose correctives (a random FLAME-like model has all of them) carried to the
    character equal FLAME's own forward pass, head rotation excluded; the projection equals B^T d and |d|^2."""
    model = model_from_arrays(make_arrays(n_verts=400, n_faces=800, seed=2))
    fitted = _fake_fit(model, 300)
    motion = random_motion(9, seed=4).astype(np.float64)
    transfer = Transfer(model, fitted)
    disp = transfer.displacements(motion)
    expression, pose = motion_to_pose(motion)
    pose[:, :3] = 0.0  # head rotation goes elsewhere
    posed = forward(model, pose, expression, fitted.shape)[0]
    rest = forward(model, np.zeros((1, 15)), None, fitted.shape)[0]
    corners = model.faces[fitted.tri[transfer.face]]
    expect = np.einsum("fk,tfka->tfa", fitted.bary[transfer.face], (posed - rest)[:, corners])
    expect = expect @ fitted.flame_to_character.T
    np.testing.assert_allclose(disp, expect, atol=1e-9 * np.abs(expect).max())
    deltas = np.random.default_rng(1).normal(size=(5, len(transfer.face), 3))
    gram, rhs, norms = transfer.project(deltas, motion)
    np.testing.assert_allclose(rhs, np.einsum("kfa,tfa->tk", deltas, disp), rtol=1e-9, atol=1e-9 * np.abs(rhs).max())
    np.testing.assert_allclose(norms, np.sum(disp**2, axis=(1, 2)), rtol=1e-9)
    np.testing.assert_allclose(gram, np.einsum("kfa,lfa->kl", deltas, deltas), rtol=1e-12)
    head, _jaw = transfer.rotations(motion)
    np.testing.assert_allclose(np.linalg.norm(head, axis=1), np.linalg.norm(motion[:, 100:103], axis=1))
    # a jaw bone takes the jaw: the shapes then see only expressions (+ no pose correctives)
    no_jaw = motion.copy()
    no_jaw[:, 103:] = 0.0
    np.testing.assert_allclose(Transfer(model, fitted, jaw_bone=True).displacements(motion),
                               Transfer(model, fitted).displacements(no_jaw), atol=1e-12)


class _AllJointsTransfer(Transfer):
    """Also rotates the neck and the eyes (ARTalk motion never does): several moving joints, nested."""

    def pose(self, motion):
        psi, pose = super().pose(motion)
        pose[:, 3:6] = 0.3 * motion[:, 100:103]
        pose[:, 9:15] = 0.5 * np.concatenate([motion[:, 103:106], motion[:, 100:103]], axis=1)
        return psi, pose


def test_projection_with_several_rotated_joints():
    model = model_from_arrays(make_arrays(n_verts=300, n_faces=600, seed=5))
    fitted = _fake_fit(model, 200, seed=3)
    motion = random_motion(7, seed=8).astype(np.float64)
    transfer = _AllJointsTransfer(model, fitted)
    disp = transfer.displacements(motion)
    deltas = np.random.default_rng(2).normal(size=(4, len(transfer.face), 3))
    _, rhs, norms = transfer.project(deltas, motion)
    np.testing.assert_allclose(rhs, np.einsum("kfa,tfa->tk", deltas, disp), rtol=1e-9, atol=1e-9 * np.abs(rhs).max())
    np.testing.assert_allclose(norms, np.sum(disp**2, axis=(1, 2)), rtol=1e-9)
    # and the explicit path is FLAME's forward pass with that pose
    psi, pose = transfer.pose(motion)
    posed = forward(model, pose, psi, fitted.shape)[0]
    rest = forward(model, np.zeros((1, 15)), None, fitted.shape)[0]
    corners = model.faces[fitted.tri[transfer.face]]
    expect = np.einsum("fk,tfka->tfa", fitted.bary[transfer.face], (posed - rest)[:, corners])
    np.testing.assert_allclose(disp, expect @ fitted.flame_to_character.T, atol=1e-9 * np.abs(disp).max())


def test_box_qp_is_exact():
    rng = np.random.default_rng(0)
    lo, hi = np.array([0.0, 0.0, -1.0, 0.0, 0.2, 0.0]), np.array([1.0, 1.0, 1.0, 2.0, 0.8, 1.0])
    mats, vecs, expected = [], [], []
    for _ in range(12):
        a = rng.normal(size=(20, 6)) @ np.diag([1, 1, 1, 1, 1, 1e-2])  # one nearly redundant column
        b = rng.normal(size=20) * 2
        mats.append(a.T @ a)
        vecs.append(a.T @ b)
        expected.append(lsq_linear(a, b, bounds=(lo, hi), tol=1e-12, method="bvls").x)
    got = box_qp(np.stack(mats), np.stack(vecs), lo, hi, which=np.arange(12))
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-7)
    # one shared matrix, 60 nearby problems: most share a free set and go through the grouped path
    a = rng.normal(size=(20, 6))
    targets = rng.normal(size=20) + 0.05 * rng.normal(size=(60, 20))
    got = box_qp(a.T @ a, targets @ a, lo, hi)
    expected = [lsq_linear(a, b, bounds=(lo, hi), tol=1e-12, method="bvls").x for b in targets]
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-7)


def test_pivoting_start_is_mostly_exact_and_box_qp_stays_exact():
    """The block-pivoting start (box_qp's default) already solves most problems with many bounds active; box_qp's
    result matches BVLS and the result from a plain clipped start."""
    from flametalk.retarget.solve import _pivot

    rng = np.random.default_rng(7)
    k = 24
    a = rng.normal(size=(60, k)) @ np.diag(rng.uniform(0.2, 2.0, k))
    truth = np.clip(rng.normal(0.3, 0.6, size=(80, k)), 0.0, 1.0)  # many weights at a bound
    targets = truth @ a.T + 0.3 * rng.normal(size=(80, 60))
    lo, hi = np.zeros(k), np.ones(k)
    q, vec = a.T @ a, targets @ a
    expected = np.stack([lsq_linear(a, b, bounds=(lo, hi), tol=1e-12, method="bvls").x for b in targets])
    start = _pivot(q[None], np.zeros(80, dtype=np.int64), vec, lo, hi, np.linalg.solve(q, vec.T).T)
    exact = np.abs(start - expected).max(axis=1) < 1e-7
    assert exact.mean() > 0.9 and ((expected < 1e-12) | (expected > 1 - 1e-12)).mean() > 0.2
    np.testing.assert_allclose(box_qp(q, vec, lo, hi), expected, atol=1e-7)
    plain = box_qp(q, vec, lo, hi, x0=np.clip(np.linalg.solve(q, vec.T).T, lo, hi))
    np.testing.assert_allclose(plain, expected, atol=1e-7)


def test_smoothness_sweeps_reach_the_joint_optimum():
    rng = np.random.default_rng(3)
    k, frames = 4, 7
    basis = rng.normal(size=(30, k))
    target = rng.normal(size=(frames, 30))
    gram, rhs, norms = basis.T @ basis, target @ basis, np.sum(target**2, axis=1)
    ranges = np.tile([0.0, 1.0], (k, 1))
    opt = SolveOptions(l2=0.01, l1=0.02, symmetry=0.1, smooth=0.5, sweeps=60)
    w, _ = solve(gram, rhs, norms, ranges, 30, 1.0, [(0, 1)], opt)
    e = np.diag(gram)

    def energy(flat: np.ndarray) -> float:
        x = flat.reshape(frames, k)
        val = np.sum((x @ basis.T - target) ** 2) + opt.l2 * np.sum(e * x**2) + opt.l1 * np.sum(e * x)
        val += opt.symmetry * np.sum((np.sqrt(e[0]) * x[:, 0] - np.sqrt(e[1]) * x[:, 1]) ** 2)
        return val + opt.smooth * np.sum(e * np.diff(x, axis=0) ** 2)

    ref = minimize(energy, np.full(frames * k, 0.5), method="L-BFGS-B", bounds=[(0, 1)] * (frames * k),
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000})
    assert energy(w.astype(np.float64).ravel()) <= ref.fun + 1e-5 * abs(ref.fun)
    np.testing.assert_allclose(w.ravel(), ref.x, atol=2e-3)


@pytest.fixture(scope="module")
def recovery():
    character, fitted = cached_fit(100.0)
    frames = 150
    truth = smooth_weights(frames, len(EXPR_KEYS))
    motion = np.zeros((frames, 106))
    motion[:, : len(EXPR_KEYS)] = truth
    result = retarget(ict_flame(EXPR_KEYS), character, motion, keys="all", fitted=fitted)
    return truth, motion, result


def test_known_weights_are_recovered(recovery):
    truth, _, result = recovery
    known = [result.names.index(k) for k in EXPR_KEYS]
    others = [i for i in range(len(result.names)) if i not in known]
    assert len(result.names) == 53 and result.weights.shape == (150, 53) and result.weights.dtype == np.float32
    err = np.abs(result.weights[:, known] - truth)
    assert err.mean() < 0.03, err.mean()
    assert np.abs(result.weights[:, others]).mean() < 0.03
    assert result.residual_mm.max() < 0.5
    assert result.weights.min() >= 0.0 and result.weights.max() <= 1.0


def test_metres_and_centimetres_give_the_same_weights(recovery):
    _truth, motion, result_cm = recovery
    character_m, fitted_m = cached_fit(1.0)
    result_m = retarget(ict_flame(EXPR_KEYS), character_m, motion, keys="all", fitted=fitted_m)
    np.testing.assert_allclose(result_m.weights, result_cm.weights, atol=2e-3)
    np.testing.assert_allclose(result_m.residual_mm, result_cm.residual_mm, rtol=0.05, atol=0.01)


def test_jaw_only_motion_drives_jaw_open():
    """The model's jaw joint rotates the lower face (LBS, weights from ICT's jawOpen: see fixtures/ict_flame.py)."""
    character, fitted = cached_fit(100.0)
    frames = 100
    angle = 0.12 * (1 - np.cos(2 * np.pi * np.arange(frames) / 40))  # 0 .. 0.24 rad
    motion = np.zeros((frames, 106))
    motion[:, 103] = angle
    result = retarget(ict_flame(EXPR_KEYS), character, motion, keys="arkit", fitted=fitted)
    jaw = result.weights[:, result.names.index("jawOpen")]
    assert np.corrcoef(jaw, angle)[0, 1] > 0.9
    assert jaw.max() > 0.5
    blinks = [i for i, n in enumerate(result.names) if n.startswith("eyeBlink")]
    assert len(blinks) == 2 and np.abs(result.weights[:, blinks]).max() < 0.05
    # with a jaw bone the rotation goes to the bone, in the character's frame, and the keys stay at rest
    boned = retarget(ict_flame(EXPR_KEYS), character, motion, keys="arkit", fitted=fitted, jaw_bone=True)
    assert np.abs(boned.weights).max() < 1e-3
    expect = np.outer(angle, rotation(CM_DEGREES)[:, 0])  # FLAME's +x is Blender's +x, then the fit's rotation
    np.testing.assert_allclose(boned.jaw_rotation, expect, atol=1e-4)


def test_bad_motion_is_one_line():
    character, fitted = cached_fit(100.0)
    motion = np.zeros((10, 106))
    motion[3, 5] = np.nan
    with pytest.raises(FlameTalkError, match="NaN") as err:
        retarget(ict_flame(EXPR_KEYS), character, motion, fitted=fitted)
    assert "\n" not in str(err.value)
    with pytest.raises(FlameTalkError, match=r"motion must be \(frames, 106\)"):
        retarget(ict_flame(EXPR_KEYS), character, np.zeros((10, 50)), fitted=fitted)
