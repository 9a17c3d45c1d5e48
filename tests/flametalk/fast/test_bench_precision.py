"""Benchmark command, numeric modes and drift report (small models: the full-size numbers are in BENCHMARKS.md)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fixtures.common import PARITY_VECTOR, run_flametalk
from flametalk.commands.drift import motion_drift
from flametalk.commands.reference import load_vector, model_from_vector
from flametalk.decode.pipeline import generate_motion, prepare_for_inference
from flametalk.fast import plan as plans
from flametalk.fast.precision import apply_mode
from flametalk.model.artalk import ARTalkModel
from flametalk.model.config import ARTalkConfig
from flametalk.model.random_init import random_init_model


@pytest.mark.parametrize("extra, mode", [(["--retake"], "exact"), (["--mode", "fast"], "fast"),
                                         (["--release-order"], "release-order")])
def test_bench_prints_one_json_line(parity_checkpoint_dir, extra, mode):
    run = run_flametalk("bench", "--checkpoint", str(parity_checkpoint_dir), "--seconds", "2", "--threads", "1",
                        "--json", *extra)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["mode"] == mode and result["device"] == "cpu" and result["frames"] == 50
    assert result["seconds_audio"] == 2.0 and 0 < result["seconds_compute"] < 120
    assert result["rtf"] == pytest.approx(result["seconds_compute"] / 2.0, abs=1e-4)  # both rounded for print
    assert 0 < result["rtf_min"] <= result["rtf"]
    assert result["peak_rss_mb"] > 100
    assert ("seconds_retake" in result) == ("--retake" in extra)  # its speed-up is measured in BENCHMARKS.md;
    # that the retake skips the encoder and keeps the bits is tested in test_condcache.py


def test_bench_needs_a_model():
    run = run_flametalk("bench", "--seconds", "2")
    assert run.returncode == 2 and "needs --random-init or --checkpoint" in run.stderr
    run = run_flametalk("bench", "--random-init", "--release-order", "--retake")
    assert run.returncode == 2 and "drop one of the two options" in run.stderr


def test_fast_mode_keeps_motion_statistics_and_style_encoder_in_fp32():
    """With a bf16 plan (a CPU with native bf16 packs it; unpacked it runs on any CPU, slowly)."""
    vector = load_vector(PARITY_VECTOR)
    bf16 = replace(plans.cpu_plan("generic", "fast"), dtype="bfloat16")
    exact, fast = model_from_vector(vector), apply_mode(model_from_vector(vector), "fast", plan=bf16)
    vae_transformers = ("basic_vae.encoder.", "basic_vae.decoder.")
    for name, p in fast.named_parameters():
        low = name.startswith(vae_transformers) or not name.startswith(("basic_vae.", "style_encoder."))
        assert p.dtype == (torch.bfloat16 if low else torch.float32), name
    assert fast.basic_vae.decoder.compute_dtype == torch.bfloat16 == fast.basic_vae.encoder.compute_dtype
    assert fast.basic_vae.motion_std.dtype == torch.float32 == fast.basic_vae.dec_pos_embed.dtype
    exact_params = dict(exact.named_parameters())
    kept = [(name, p) for name, p in fast.named_parameters() if p.dtype == torch.float32]
    assert len(kept) > 10
    for name, p in kept:
        assert torch.equal(exact_params[name], p), name  # never rounded through bf16 and back
    # the autoencoder's transformers run in bf16 between fp32 statistics: fp32 in, fp32 out, close to exact
    bits = exact.basic_vae.encode_single(torch.randn(1, 100, 106, generator=torch.Generator().manual_seed(0)))
    want, got = exact.basic_vae.decode_pair(bits, bits)[1], fast.basic_vae.decode_pair(bits, bits)[1]
    assert got.dtype == torch.float32
    assert 0 < float((got - want).norm() / want.norm()) < 0.03
    audio = vector["inputs"]["audio_16k"][0, :32000].numpy()
    motion = generate_motion(fast, audio)
    assert motion.dtype == np.float32 and motion.shape == (50, 106) and np.isfinite(motion).all()
    with pytest.raises(ValueError, match="before the model is prepared"):
        apply_mode(prepare_for_inference(fast), "exact")


def test_random_init_model_has_the_real_masks_and_finite_output():
    cfg = ARTalkConfig.from_release_dict({**load_vector(PARITY_VECTOR)["model_config"],
                                          "AUDIO_ENCODER_CONFIG": load_vector(PARITY_VECTOR)["wav2vec2_config"]})
    model = random_init_model(cfg, "exact")
    bias, lvl = ARTalkModel.scale_causal_bias(cfg.patch_nums, cfg.prev_ratio)
    assert torch.equal(model.attn_bias_for_masking, bias) and torch.equal(model.lvl_idx, lvl)
    mask = model.basic_vae.attn_mask[0, 0]
    assert torch.isinf(mask[:100, 100:]).all() and not mask[100:].any() and not mask[:100, :100].any()
    motion = generate_motion(model, np.zeros(16000, dtype=np.float32))
    assert motion.shape == (25, 106) and np.isfinite(motion).all()


def test_motion_drift_by_channel_group():
    a = np.zeros((4, 106), dtype=np.float32)
    b = a.copy()
    b[:, 0] = 2.0  # one of 100 expression channels off by 2 -> RMSE sqrt(4 / 100)
    b[:, 104] = 1.0  # one of 3 jaw channels off by 1 -> RMSE sqrt(1 / 3)
    drift = motion_drift(a, b)
    assert drift["rmse_expression"] == pytest.approx(0.2) and drift["rmse_head"] == 0.0
    assert drift["rmse_jaw"] == pytest.approx(np.sqrt(1 / 3))
