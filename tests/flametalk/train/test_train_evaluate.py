"""`python -m flametalk evaluate`: a trained tiny checkpoint scored on the synthetic test split with a synthetic
FLAME model and masks file; the numbers equal the metrics recomputed by hand from the same motions."""

import json
import pickle

import numpy as np
import pytest
from fixtures.training import dataset, stage2_quick
from flametalk.commands.main import main
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.flame import lbs, load_flame
from flametalk.io.checkpoint import load_checkpoint
from flametalk.testing import synthetic_flame as synthetic
from flametalk.train.data import load_split
from flametalk.train.evaluate import score_motions
from flametalk.train.metrics import load_masks, lve, mod, split_lips

pytestmark = pytest.mark.filterwarnings("ignore:stage 2 runs on a randomly initialised audio encoder")


@pytest.fixture(scope="module")
def flame_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    arrays = synthetic.make_arrays(n_verts=150, n_faces=200, seed=5)
    flame = synthetic.write_npz(str(folder / "flame.npz"), arrays)
    y = arrays["v_template"][:, 1]
    order = np.argsort(y)  # "lips" low on the head, upper face high: any index sets work for the metrics
    masks = {"lips": order[10:40], "forehead": order[-20:], "eye_region": order[-40:-20], "nose": order[60:70]}
    (folder / "FLAME_masks.pkl").write_bytes(pickle.dumps(masks, protocol=2))
    return flame, str(folder / "FLAME_masks.pkl")


def test_identical_motion_scores_zero(flame_files):
    flame, masks = load_flame(flame_files[0]), load_masks(flame_files[1])
    motion = synthetic.random_motion(20, seed=4)
    r = score_motions([("a", motion, motion, None)], flame, masks)
    assert r["LVE"] == r["MOD"] == r["FDD"] == 0.0 and r["frames"] == 20


@pytest.mark.slow
def test_evaluate_command_prints_table_and_json(flame_files, tmp_path, capsys):
    export = stage2_quick().export_dir
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(export), "--data", str(dataset()), "--flame", flame_files[0],
            "--masks", flame_files[1], "--json", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["metric", "value"] and any(line.startswith("LVE ") for line in lines)
    printed = json.loads(lines[-1])
    full = json.loads(out.read_text())
    assert printed["clips"] == 1 and len(full["per_clip"]) == 1 and full["per_clip"][0]["clip"] == "clip_05"

    # The same numbers by hand: generate + post-process, FLAME without head rotation, metrics on the lips.
    clip = load_split(dataset(), "test")[0][0]
    pred = postprocess_motion(generate_motion(load_checkpoint(export), clip.audio))
    flame, masks = load_flame(flame_files[0]), load_masks(flame_files[1])
    p, t = pred.astype(np.float64), clip.motion.astype(np.float64)
    p[:, 100:103] = t[:, 100:103] = 0.0
    vp, vt = lbs.forward_motion(flame, p), lbs.forward_motion(flame, t)
    upper, lower = split_lips(lbs.forward_motion(flame, np.zeros((1, 106)))[0], masks["lips"])
    assert printed["LVE"] == pytest.approx(lve(vp, vt, masks["lips"]), rel=1e-9)
    assert printed["MOD"] == pytest.approx(mod(vp, vt, upper, lower), rel=1e-9)
    assert np.isfinite(printed["FDD"]) and printed["frames"] == clip.motion.shape[0]
