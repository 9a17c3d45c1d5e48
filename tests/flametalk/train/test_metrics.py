"""LVE / FDD / MOD on a hand-computed case; the masks file is read with the restricted unpickler."""

import pickle

import numpy as np
import pytest
from flametalk.errors import FlameTalkError
from flametalk.train.metrics import MetricAccumulator, load_masks, split_lips, upper_face

# Six vertices: an upper lip (0, 1), a lower lip (2, 3), a forehead vertex (4) and an eye-region vertex (5).
TEMPLATE = np.array([[-1, 1, 0], [1, 1, 0], [-1, -1, 0], [1, -1, 0], [0, 5, 0], [0, 4, 0]], dtype=np.float64)
MASKS = {"lips": np.array([0, 1, 2, 3]), "forehead": np.array([4]), "eye_region": np.array([5])}


def hand_case():
    true = np.stack([TEMPLATE, TEMPLATE]).copy()
    true[1, 2:4, 1] -= 1.0  # frame 1: the lower lip drops by 1 (mouth opens from 2 to 3)
    true[1, 4, 2] += 2.0  # frame 1: the forehead vertex moves 2 along z
    pred = np.stack([TEMPLATE, TEMPLATE]).copy()
    pred[0, 0, 0] += 3.0  # frame 0: one upper-lip vertex off by 3 along x; frame 1: no motion at all
    return pred, true


def test_metrics_match_hand_computed_values():
    pred, true = hand_case()
    upper_lip, lower_lip = split_lips(TEMPLATE, MASKS["lips"])
    assert upper_lip.tolist() == [0, 1] and lower_lip.tolist() == [2, 3]
    acc = MetricAccumulator(MASKS["lips"], upper_face(MASKS), upper_lip, lower_lip)
    acc.add("clip", pred, true, TEMPLATE)
    r = acc.result()
    # LVE: frame 0 max lip error 3 (squared 9), frame 1 max lip error 1 (squared 1).
    assert r["LVE"] == pytest.approx((9 + 1) / 2)
    assert r["LVE_dist"] == pytest.approx((3 + 1) / 2)
    # FDD: truth's forehead vertex has squared displacement [0, 4] (std 2), distance [0, 2] (std 1); the eye vertex
    # and every predicted vertex stay still; mean over the two upper-face vertices.
    assert r["FDD"] == pytest.approx((2 + 0) / 2 - 0)
    assert r["FDD_dist"] == pytest.approx((1 + 0) / 2 - 0)
    # MOD: truth opening [2, 3]; prediction: upper centroid (1.5, 1) vs lower (0, -1) -> 2.5, then 2.
    assert r["MOD"] == pytest.approx((abs(2.5 - 2) + abs(2 - 3)) / 2)
    assert r["frames"] == 2 and r["clips"] == 1


def test_dataset_totals_weight_frames_and_average_fdd_over_clips():
    pred, true = hand_case()
    upper_lip, lower_lip = split_lips(TEMPLATE, MASKS["lips"])
    acc = MetricAccumulator(MASKS["lips"], upper_face(MASKS), upper_lip, lower_lip)
    acc.add("a", pred, true, TEMPLATE)
    acc.add("b", true[:1], true[:1], TEMPLATE)  # one perfect frame (FDD 0: no motion)
    r = acc.result()
    assert r["LVE"] == pytest.approx((9 + 1 + 0) / 3)
    assert r["MOD"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert r["FDD"] == pytest.approx((1.0 + 0.0) / 2)


def test_masks_file_loads_numpy_arrays_and_refuses_code(tmp_path):
    path = tmp_path / "FLAME_masks.pkl"
    path.write_bytes(pickle.dumps({k: v.astype(np.int64) for k, v in MASKS.items()}, protocol=2))
    masks = load_masks(path)
    assert masks["lips"].tolist() == [0, 1, 2, 3] and masks["forehead"].dtype == np.int64

    from fixtures.hostile_files import write_malicious_pkl

    sentinel = tmp_path / "pwned"
    bad = write_malicious_pkl(str(tmp_path / "evil.pkl"), str(sentinel))
    with pytest.raises(FlameTalkError, match="refused"):
        load_masks(bad)
    assert not sentinel.exists()
    missing = tmp_path / "nolips.pkl"
    missing.write_bytes(pickle.dumps({"forehead": np.arange(3)}, protocol=2))
    with pytest.raises(FlameTalkError, match="lips"):
        load_masks(missing)
