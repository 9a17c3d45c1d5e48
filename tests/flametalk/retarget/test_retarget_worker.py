"""The worker's `retarget` and `fit` commands: the same weights as the library, the fit stored and reused, the
result file's layout, bad input answered by one input error with no file written."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from fixtures.ict_flame import cached_fit, expr_keys, ict_flame, smooth_weights, write_ict_flame
from flametalk.commands.protocol import BadRequest, parse_request
from flametalk.flame import characterfile
from flametalk.retarget import Fit, retarget

from blender_addon.worker.client import WorkerClient, WorkerError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retarget_worker")
    keys = expr_keys()
    character, fitted = cached_fit(100.0)
    character.save(folder / "char.npz")
    fitted.save(folder / "fit.npz")
    truth = smooth_weights(40, len(keys), seed=11)
    motion = np.zeros((40, 106), np.float32)
    motion[:, : len(keys)] = truth
    np.savez(folder / "motion.npz", motion=motion, fps=np.float32(25))
    bad = motion.copy()
    bad[5, 3] = np.nan
    np.savez(folder / "nan.npz", motion=bad, fps=np.float32(25))
    return {"folder": folder, "flame": write_ict_flame(folder / "ict_flame.npz", keys), "character": character,
            "fit": fitted, "truth": truth, "motion": motion, "keys": keys}


@pytest.fixture(scope="module")
def client():
    c = WorkerClient(sys.executable)
    c.start()
    yield c
    c.stop()


def test_retarget_with_a_stored_fit_matches_the_library(client, files):
    folder = files["folder"]
    out = folder / "result.npz"
    seen = []
    rid = client.submit("retarget", flame=files["flame"], motion=str(folder / "motion.npz"),
                        character=str(folder / "char.npz"), out=str(out), keys="all", fit=str(folder / "fit.npz"))
    event = client.wait(rid, on_progress=seen.append, timeout=300)
    assert seen and {e["stage"] for e in seen} <= {"load", "fit", "solve"}  # wait() shows the latest of each poll
    expected = retarget(ict_flame(files["keys"]), files["character"], files["motion"], keys="all",
                        fitted=files["fit"])
    result = characterfile.read_result(out)
    assert result["names"] == expected.names and event["shape_keys"] == 53 and event["frames"] == 40
    np.testing.assert_allclose(result["weights"], expected.weights, atol=1e-5)
    known = [result["names"].index(k) for k in files["keys"]]
    assert np.abs(result["weights"][:, known] - files["truth"]).mean() < 0.03
    assert event["fit"]["vertices_used"] == files["fit"].n_used and event["fit_out"] is None
    assert result["report"]["frames"] == 40 and result["report"]["fit"]["rms_mm"] == pytest.approx(
        files["fit"].rms_mm, abs=1e-3)
    assert event["residual_rms_mm"] < 0.5 and set(event["seconds"]) >= {"load", "fit", "solve", "write", "total"}


def test_fit_command_then_retarget_with_a_jaw_bone(client, files):
    folder = files["folder"]
    char = files["character"]
    char.jaw_axes = np.eye(3)
    char.jaw_pivot = np.zeros(3)
    char.save(folder / "char_jaw.npz")
    rid = client.submit("fit", flame=files["flame"], character=str(folder / "char_jaw.npz"),
                        fit_out=str(folder / "fit2.npz"))
    event = client.wait(rid, timeout=600)
    fitted = Fit.load(folder / "fit2.npz")
    assert event["fit"]["vertices_used"] == fitted.n_used > 0.95 * char.n_verts and fitted.rms_mm < 0.05
    motion = np.zeros((20, 106), np.float32)
    motion[:, 103] = np.linspace(0, 0.2, 20)
    np.savez(folder / "jaw.npz", motion=motion, fps=np.float32(25))
    rid = client.submit("retarget", flame=files["flame"], motion=str(folder / "jaw.npz"),
                        character=str(folder / "char_jaw.npz"), out=str(folder / "jaw_result.npz"), keys="arkit",
                        jaw_bone=True, jaw_intensity=0.5, fit=str(folder / "fit2.npz"),
                        options={"smooth": 0.0, "sweeps": 0})
    client.wait(rid, timeout=300)
    result = characterfile.read_result(folder / "jaw_result.npz")
    assert np.abs(result["weights"]).max() < 1e-3  # the bone takes the jaw
    np.testing.assert_allclose(np.linalg.norm(result["jaw_rotation"], axis=1), 0.5 * motion[:, 103], atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("nan", "NaN or infinite"),
    ("missing_char", "character file not found"),
    ("bad_keys", "unknown shape key(s): nope"),
    ("missing_flame", "not found"),
])
def test_bad_input_is_one_input_error_and_no_file(client, files, case, message):
    folder = files["folder"]
    fields = {"flame": files["flame"], "motion": str(folder / "motion.npz"), "character": str(folder / "char.npz"),
              "out": str(folder / f"out_{case}.npz"), "fit": str(folder / "fit.npz")}
    if case == "nan":
        fields["motion"] = str(folder / "nan.npz")
    elif case == "missing_char":
        fields["character"] = str(folder / "nope.npz")
    elif case == "bad_keys":
        fields["keys"] = ["jawOpen", "nope"]
    elif case == "missing_flame":
        fields["flame"] = str(folder / "nope_flame.npz")
    rid = client.submit("retarget", **fields)
    with pytest.raises(WorkerError, match=re.escape(message)) as err:
        client.wait(rid, timeout=300)
    assert err.value.kind == "input" and "\n" not in str(err.value)
    assert not (folder / f"out_{case}.npz").exists()


@pytest.mark.parametrize("line, message", [
    ('{"id":1,"cmd":"retarget","flame":"f","character":"c","out":"o"}', "needs 'motion'"),
    ('{"id":1,"cmd":"retarget","flame":"f","character":"c","out":"o","motion":"m","jaw_bone":1}', "jaw_bone"),
    ('{"id":1,"cmd":"retarget","flame":"f","character":"c","out":"o","motion":"m","options":{"l9":1}}', "options"),
    ('{"id":1,"cmd":"retarget","flame":"f","character":"c","out":"o","motion":"m","options":{"l1":-1}}', "l1"),
    ('{"id":1,"cmd":"retarget","flame":"f","character":"c","out":"o","motion":"m","keys":[]}', "keys"),
    ('{"id":1,"cmd":"fit","flame":"f","character":"c"}', "fit_out"),
    ('{"id":1,"cmd":"fit","flame":"f","character":"c","fit_out":"x","init":[[1,2]]}', "4x4"),
])
def test_bad_requests(line, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(line)


def test_request_defaults():
    req = parse_request('{"id":1,"cmd":"retarget","flame":"f","character":"c","out":"o","motion":"m"}')
    assert req["keys"] == "all" and req["jaw_bone"] is False and req["options"] == {} and req["fit"] is None
