"""The torch FLAME forward (vertex losses) against the numpy one (flametalk.flame.lbs)."""

import numpy as np
import torch
from flametalk.flame import lbs
from flametalk.testing import synthetic_flame as synthetic
from flametalk.train.flame_torch import FlameTorch, rodrigues


def test_torch_flame_matches_numpy_lbs_with_shape_pose_and_expression():
    model = synthetic.model_from_arrays(synthetic.make_arrays(n_verts=300, n_faces=400, seed=3))
    motion = synthetic.random_motion(6, seed=2).astype(np.float64)
    motion[2, 100:] = 0.0  # a frame with zero rotations (series branch of Rodrigues)
    shape = np.random.default_rng(0).normal(size=300)
    ref = lbs.forward_motion(model, motion, shape)
    flame = FlameTorch(model, dtype=torch.float64)
    ours = flame.forward_motion(torch.from_numpy(motion), torch.from_numpy(shape)[None])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)
    ids = np.array([5, 17, 250])  # a vertex subset gives the same vertices (joints stay exact)
    sub = FlameTorch(model, vertex_ids=ids, dtype=torch.float64)
    np.testing.assert_allclose(sub.forward_motion(torch.from_numpy(motion), torch.from_numpy(shape)[None]).numpy(),
                               ref[:, ids], atol=1e-12)


def test_rodrigues_gradients_are_finite_at_zero():
    aa = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    rodrigues(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()
    x = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(rodrigues(x)[0].numpy(), lbs.rodrigues(x.numpy())[0], atol=1e-14)


def test_stage1_trains_with_lip_and_all_vertex_losses(tmp_path):
    import pickle

    from fixtures.training import stage1_dict, train

    arrays = synthetic.make_arrays(n_verts=150, n_faces=200, seed=5)
    flame = synthetic.write_npz(str(tmp_path / "flame.npz"), arrays)
    masks = {"lips": np.arange(10, 40), "forehead": np.arange(100, 120), "eye_region": np.arange(120, 140)}
    (tmp_path / "FLAME_masks.pkl").write_bytes(pickle.dumps(masks, protocol=2))
    cfg = stage1_dict(tmp_path / "run", steps=8, loss={"lip_vertex": 1.0, "vertex": 1.0},
                      flame={"flame_path": flame, "masks_path": str(tmp_path / "FLAME_masks.pkl")})
    history = train(cfg, resume=False).history
    lips = [h["lip_vertex"] for h in history]
    assert all(np.isfinite(lips)) and lips[0] > 0 and history[-1]["vertex"] < history[0]["vertex"]
    assert all(h["lip_vertex"] >= 0 for h in history)
