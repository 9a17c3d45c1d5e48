"""Parity with the official release on the shared parity vector (recorded on CPU, fp32, argmax decoding)."""

import subprocess
import sys

import pytest
import torch
from fixtures.common import PARITY_VECTOR
from fixtures.parity import MOTION_TOL, assert_matches
from flametalk.commands.reference import compute_outputs, load_vector, model_from_vector
from flametalk.decode.autoregressive import GPU_AUDIO_BATCH

VECTOR = PARITY_VECTOR


@pytest.fixture(scope="module")
def vector():
    if not VECTOR.is_file():
        pytest.fail(f"parity vector missing: {VECTOR} (../shared must sit beside the checkout)")
    return load_vector(VECTOR)


@pytest.mark.parametrize("recompute, prepare, audio_batch", [(False, True, 1), (False, False, 1), (True, False, 1),
                                                           (False, True, GPU_AUDIO_BATCH)],
                         ids=["cached-packed", "cached", "release-order", "audio-windows-batched"])
def test_every_output_matches_the_release(vector, recompute, prepare, audio_batch):
    """audio-windows-batched: the GPU default (several windows per encoder call), checked here on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = model_from_vector(vector)
    out = compute_outputs(model, vector["inputs"], recompute=recompute, prepare=prepare, audio_batch=audio_batch)
    assert_matches(out, vector["outputs"])
    # decoded motions are not all-zero placeholders: they move, and style changes them
    assert out["motion_with_style"].std() > 0.01
    assert not torch.equal(out["motion_with_style"], out["motion_without_style"])


def test_a_perturbed_model_is_detected(vector):
    """The comparison can fail: one flipped weight sign in the AR head changes bits."""
    state = dict(vector["state_dict"])
    state["logits_head.bias"] = -state["logits_head.bias"]
    model = model_from_vector({**vector, "state_dict": state})
    out = compute_outputs(model, vector["inputs"])
    assert (out["motion_without_style"] - vector["outputs"]["motion_without_style"]).abs().max() > MOTION_TOL


def test_reference_run_cli_never_reads_outputs(vector, tmp_path):
    stripped = {k: v for k, v in vector.items() if k not in ("outputs", "min_logit_margin")}
    vec_path, out_path = tmp_path / "vector.pt", tmp_path / "out.pt"
    torch.save(stripped, vec_path)
    proc = subprocess.run([sys.executable, "-m", "flametalk", "reference-run", str(vec_path), str(out_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_matches(torch.load(out_path, weights_only=True), vector["outputs"])


def test_the_first_windows_previous_motion_is_kept_only_by_a_prepared_model(vector):
    """Its codes are a constant of the weights: a prepared model keeps them (the parity runs above use them for
    the second clip), a model that may still be trained recomputes them."""
    model = model_from_vector(vector)
    compute_outputs(model, vector["inputs"])
    assert getattr(model, "_zero_motion_codes", None) is None
    compute_outputs(model, vector["inputs"], prepare=True)
    with torch.inference_mode():
        zeros = torch.zeros(1, model.cfg.window_frames, model.cfg.motion_dim)
        assert torch.equal(model._zero_motion_codes, model.basic_vae.encode_single(zeros))
