"""Fast mode on CPU: int8 linear layers (oneDNN u8 x s8 where the CPU has VNNI, fbgemm elsewhere on x86),
time-major feature extractor, bmm attention."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.common import PARITY_VECTOR
from flametalk.commands.reference import load_vector, model_from_vector
from flametalk.decode.pipeline import generate_motion, prepare_for_inference
from flametalk.fast import plan as plans
from flametalk.fast.fastattn import BmmEncoderSelfAttention, bmm_attention
from flametalk.fast.featext import TimeMajorFeatureExtractor, supports_time_major
from flametalk.fast.int8 import (
    FbgemmInt8Linear,
    Int8Linear,
    SharedInput,
    onednn_int8_available,
    quantize_input,
    worst_case_error,
)
from flametalk.fast.packed import PackedLinear, onednn_available
from flametalk.fast.precision import apply_mode
from flametalk.model.audio_encoder import build_audio_encoder

_cpu = plans.detect()
# oneDNN's u8 x s8 kernels without VNNI add pairs of products in 16 bits (saturating): exactness needs VNNI
needs_int8 = pytest.mark.skipif(not (onednn_int8_available() and (_cpu.avx512_vnni or _cpu.avx_vnni)),
                                reason="oneDNN int8 needs VNNI (AVX-512 VNNI or AVX-VNNI); this CPU has neither")
needs_fbgemm = pytest.mark.skipif(not _cpu.fbgemm, reason="fbgemm int8 needs an x86 CPU (torch's fbgemm engine)")


def integer_linear(n_in: int, n_out: int, seed: int = 0) -> torch.nn.Linear:
    """Weights that int8 represents exactly: integers in [-127, 127], each output row reaching +-127 (scale 1)."""
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        w = torch.randint(-127, 128, (n_out, n_in), generator=gen).float()
        w[:, 0] = 127.0
        layer.weight.copy_(w)
        layer.bias.copy_(torch.randint(-50, 50, (n_out,), generator=gen).float())
    return layer



@needs_int8
@pytest.mark.parametrize("per_token", [True, False])
def test_int8_linear_is_exact_on_representable_values(per_token):
    layer = integer_linear(64, 48)
    gen = torch.Generator().manual_seed(1)
    scale_per_row = torch.tensor([1.0, 0.5, 2.0])[:, None] if per_token else torch.ones(3, 1)
    x = torch.randint(-127, 128, (3, 64), generator=gen).float()
    x[:, 5] = 127.0  # every row reaches the top of the int8 range: its quantisation scale is exact
    x = x * scale_per_row  # halves and doubles stay exact in fp32
    expected = x.double() @ layer.weight.double().T + layer.bias.double()
    before = x.clone()
    got = Int8Linear(layer, per_token=per_token)(x[None])  # leading dims are kept
    assert torch.equal(x, before)  # the input is never written (fp32 .float() is the same tensor)
    assert got.shape == (1, 3, 48) and got.dtype == torch.float32
    assert torch.equal(got[0].double(), expected)


@pytest.mark.parametrize("per_token", [True, False])
def test_quantisation_of_bf16_inputs_rounds_like_fp32(per_token):
    """x / scale + 128 must be formed in fp32: in bf16 (resolution 1 above 128) codes would be off by one and
    the top code 255.5 would wrap to 0."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 128, generator=gen) * torch.tensor([0.1, 1.0, 3.0, 10.0, 0.5, 2.0])[:, None]).bfloat16()
    q, scale = quantize_input(x, per_token)
    q32, scale32 = quantize_input(x.float(), per_token)
    assert q.dtype == torch.uint8 and scale.dtype == torch.float32
    assert torch.equal(q, q32) and torch.equal(scale, scale32)
    assert int(q.max()) == 255 and int(q.min()) >= 1  # the row / tensor maximum lands on the top code


@needs_int8
def test_int8_linear_error_is_small_on_random_values_and_keeps_bf16():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 512).requires_grad_(False)
    x = torch.randn(2, 40, 256)
    x[0, 3] *= 30.0  # a loud token: per-token scales keep the quiet ones precise
    normed = torch.nn.functional.layer_norm(x, (256,))  # per tensor is only used on layer-normed tokens
    for per_token, inp, bound in ((True, x, 0.012), (False, normed, 0.02), (False, x, 1.0)):
        expected = layer(inp)
        got = Int8Linear(layer, per_token=per_token)(inp.bfloat16())
        assert got.dtype == torch.bfloat16
        quiet = float((got.float() - expected)[1].norm() / expected[1].norm())
        if bound < 1.0:
            assert 0 < quiet < bound, (per_token, quiet)
        else:  # why the encoder's attention and MLP outputs are quantised per token
            assert quiet > 0.1


@needs_int8
def test_fused_gelu_matches_gelu_of_the_output():
    torch.manual_seed(2)
    layer = torch.nn.Linear(64, 96)
    x = torch.nn.functional.layer_norm(torch.randn(7, 64), (64,))
    plain, fused = Int8Linear(layer, per_token=False), Int8Linear(layer, per_token=False, gelu=True)
    torch.testing.assert_close(fused(x), torch.nn.functional.gelu(plain(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="per-tensor"):
        Int8Linear(layer, per_token=True, gelu=True)


@needs_int8
def test_all_zero_token_gives_the_bias():
    layer = integer_linear(32, 16)
    x = torch.zeros(2, 32)
    x[1, 0] = 1.0
    out = Int8Linear(layer, per_token=True)(x)
    assert torch.equal(out[0], layer.bias.detach())
    torch.testing.assert_close(out[1], (layer.weight[:, 0] + layer.bias).detach(), rtol=1e-6, atol=1e-4)


def test_shared_input_quantises_a_tensor_once():
    shared = SharedInput()
    x = torch.randn(5, 8)
    first = shared.get(x, per_token=True)
    assert shared.get(x, per_token=True) is first
    y = x.clone()
    assert shared.get(y, per_token=True) is not first  # another tensor, even with equal values
    x.mul_(2.0)  # an in-place change of a tracked tensor is caught by its version counter
    again = shared.get(x, per_token=True)
    assert again is not first and torch.equal(again[1], quantize_input(x, True)[1])


@needs_fbgemm
def test_fbgemm_int8_linear_is_exact_on_representable_values():
    """7-bit activations (reduce_range): inputs spanning 0..127 with integer values have scale 1, zero point 0."""
    layer = integer_linear(64, 48)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 128, (3, 64), generator=gen).float()
    x[:, 5], x[:, 6] = 127.0, 0.0  # the tensor's range is exactly 0..127
    expected = x.double() @ layer.weight.double().T + layer.bias.double()
    got = FbgemmInt8Linear(layer)(x[None])
    assert got.shape == (1, 3, 48) and got.dtype == torch.float32
    assert torch.equal(got[0].double(), expected)
    assert "7-bit" in repr(FbgemmInt8Linear(layer))


@needs_fbgemm
def test_fbgemm_per_token_rows_keep_quiet_tokens_precise_and_the_bias():
    """Row scaling around fbgemm's per-tensor GEMM: a loud token no longer costs the quiet ones their precision."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 512).requires_grad_(False)
    x = torch.randn(2, 40, 256)
    x[0, 3] *= 30.0  # one loud token
    expected = layer(x)
    errors = {}
    for per_token in (True, False):
        got = FbgemmInt8Linear(layer, per_token=per_token)(x)
        assert got.shape == (2, 40, 512) and got.dtype == torch.float32
        errors[per_token] = float((got - expected)[1].norm() / expected[1].norm())
    assert 0 < errors[True] < 0.02 < errors[False], errors
    zeros = FbgemmInt8Linear(layer, per_token=True)(torch.zeros(3, 256))  # all-zero rows: exactly the bias
    assert torch.equal(zeros, layer.bias.expand(3, -1))
    assert "per-token" in repr(FbgemmInt8Linear(layer, per_token=True))


@needs_fbgemm
def test_fbgemm_without_reduced_range_can_saturate_and_with_it_does_not():
    """Why the AVX2 plan quantises activations to 7 bits: u8 x s8 pairs summed in 16 bits overflow at full range
    on CPUs without VNNI. With 7 bits the worst case is exact on every CPU."""
    assert worst_case_error(reduce_range=True) < 0.01
    if not (_cpu.avx512_vnni or _cpu.avx_vnni):  # the AVX2 kernel's 16-bit pair sums: at full range they clip
        assert worst_case_error(reduce_range=False) > 0.05


@needs_int8
def test_fast_mode_swaps_encoder_and_block_linears(monkeypatch):
    vector = load_vector(PARITY_VECTOR)
    fast = apply_mode(model_from_vector(vector), "fast", plan=plans.cpu_plan("avx2-vnni", "fast"))
    layers, blocks = len(fast.audio_encoder.encoder.layers), len(fast.attn_blocks)
    swapped = [n for n, m in fast.named_modules() if isinstance(m, Int8Linear)]
    assert len(swapped) == 6 * layers + 7 * blocks
    assert isinstance(fast.logits_head, torch.nn.Linear)  # decides the bits: stays bf16
    layer0 = fast.audio_encoder.encoder.layers[0].attention
    assert layer0.q_proj.shared is layer0.k_proj.shared is layer0.v_proj.shared is not None
    assert not layer0.q_proj.per_token and layer0.out_proj.per_token
    assert isinstance(fast.audio_encoder.feature_extractor, TimeMajorFeatureExtractor)
    ff0 = fast.audio_encoder.encoder.layers[0].feed_forward
    assert ff0.intermediate_dense.post_op == "gelu" and isinstance(ff0.intermediate_act_fn, torch.nn.Identity)
    audio = vector["inputs"]["audio_16k"][0, :48000].numpy()
    exact_motion = generate_motion(model_from_vector(vector), audio)
    fast_motion = generate_motion(fast, audio)
    assert fast_motion.shape == exact_motion.shape == (75, 106) and np.isfinite(fast_motion).all()
    assert 0 < np.abs(fast_motion - exact_motion).mean() < 0.2  # drifts, but stays the same motion
    monkeypatch.setenv("FLAMETALK_INT8", "0")
    plain = apply_mode(model_from_vector(vector), "fast", plan=plans.cpu_plan("avx2-vnni", "fast"))
    assert not any(isinstance(m, Int8Linear) for m in plain.modules())


def test_time_major_feature_extractor_computes_the_same_features():
    config = dict(load_vector(PARITY_VECTOR)["wav2vec2_config"])
    torch.manual_seed(3)
    original = build_audio_encoder("wav2vec", config).feature_extractor.eval()
    for layer in original.conv_layers:  # non-trivial norms and biases
        torch.nn.init.normal_(layer.layer_norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(layer.layer_norm.bias, 0.0, 0.3)
    assert supports_time_major(original)
    audio = torch.randn(2, 16000)
    with torch.inference_mode():
        expected = original(audio)
        got = TimeMajorFeatureExtractor(original)(audio)
    assert got.shape == expected.shape == (2, 32, 49)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    grouped = build_audio_encoder("wav2vec", {**config, "feat_extract_norm": "group",
                                              "do_stable_layer_norm": False}).feature_extractor
    assert not supports_time_major(grouped)  # HuBERT-style group norm keeps transformers' module


def test_bmm_attention_equals_sdpa_in_fp32():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen) for n in (7, 11, 11))
    bias = torch.zeros(1, 1, 7, 11)
    bias[:, :, :3, 8:] = float("-inf")  # a block mask like the autoencoder's
    for scale, mask in ((0.25, None), (1.0, bias)):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        got = bmm_attention(q, k, v, scale, mask)
        assert got.shape == want.shape == (2, 3, 7, 16)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    masked = bmm_attention(q, k, v, 1.0, bias)
    torch.testing.assert_close(masked[:, :, :3], bmm_attention(q[:, :, :3], k[:, :, :8], v[:, :, :8], 1.0))


def test_bmm_encoder_attention_replaces_transformers_attention():
    config = dict(load_vector(PARITY_VECTOR)["wav2vec2_config"])
    torch.manual_seed(4)
    attention = build_audio_encoder("wav2vec", config).encoder.layers[0].attention.eval()
    x = torch.randn(2, 30, config["hidden_size"])
    keep = torch.ones(2, 1, 30, 30, dtype=torch.bool)
    keep[1, :, :, 20:] = False  # the second clip's last 10 frames are padding
    with torch.inference_mode():
        want, _ = attention(x)
        replaced = BmmEncoderSelfAttention(attention)
        got, weights = replaced(x)
        padded, _ = replaced(x, attention_mask=keep)
        short, _ = replaced(x[1:, :20])
    assert weights is None and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded[0], got[0])
    torch.testing.assert_close(padded[1, :20], short[0], rtol=1e-5, atol=1e-6)


def test_plans_with_bmm_attention_use_it_and_exact_mode_does_not():
    """bf16 plans (bmm attention) swap it in everywhere; fp32 plans and exact mode keep torch's kernel."""
    vector = load_vector(PARITY_VECTOR)
    exact = prepare_for_inference(apply_mode(model_from_vector(vector), "exact", plan=plans.choose("cpu", "exact")))
    bmm_plan = replace(plans.cpu_plan("generic", "fast"), dtype="bfloat16", attention="bmm")
    fast = apply_mode(model_from_vector(vector), "fast", plan=bmm_plan)
    frame_attention = [m for m in fast.basic_vae.modules() if hasattr(m, "attention_fn")]
    assert len(frame_attention) == 2 * fast.cfg.vae_depth
    assert all(m.attention_fn is bmm_attention for m in frame_attention)
    assert all(blk.attn.attention_fn is bmm_attention for blk in fast.attn_blocks)
    assert all(isinstance(layer.attention, BmmEncoderSelfAttention) for layer in fast.audio_encoder.encoder.layers)
    assert all(blk.attn.attention_fn is None for blk in exact.attn_blocks)
    assert not any(isinstance(m, BmmEncoderSelfAttention) for m in exact.modules())
    sdpa = apply_mode(model_from_vector(vector), "fast", plan=replace(bmm_plan, attention="sdpa"))
    assert not any(isinstance(m, BmmEncoderSelfAttention) for m in sdpa.modules())
    # exact mode's prepared model runs the time-major feature extractor too where the plan packs (fp32; parity
    # checked in test_parity and test_plan)
    assert isinstance(exact.audio_encoder.feature_extractor, TimeMajorFeatureExtractor) == exact._plan.pack


def test_packed_linear_fuses_gelu_bit_for_bit_and_the_avx512_plan_uses_it():
    gen = torch.Generator().manual_seed(6)
    layer = torch.nn.Linear(64, 96)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(96, 64, generator=gen) * 0.3)
        layer.bias.copy_(torch.randn(96, generator=gen))
    x = torch.randn(13, 64, generator=gen)
    packed = PackedLinear(layer)
    with torch.inference_mode():
        plain = packed(x)
        packed.post_op = "gelu"
        fused = packed(x)
    torch.testing.assert_close(plain, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert (plain < -1.0).any() and (plain > 1.0).any()  # the GELU's curved part is exercised
    assert torch.equal(fused, F.gelu(plain))  # every bit: exact mode relies on it
    assert not torch.equal(fused, plain)
    if not onednn_available():
        pytest.skip("this torch has no oneDNN packed linears (no GELU post-op)")
    vector = load_vector(PARITY_VECTOR)
    # the plan object is given, not detected: packing and the post-op run on any x86 CPU (slower with AVX2 only)
    for name, fused_here in (("avx512", True), ("avx2", False)):
        plan = plans.cpu_plan(name, "exact")
        assert plan.gelu_post_op is fused_here
        exact = prepare_for_inference(apply_mode(model_from_vector(vector), "exact", plan=plan))
        for enc_layer in exact.audio_encoder.encoder.layers:
            ff = enc_layer.feed_forward
            assert isinstance(ff.intermediate_dense, PackedLinear)
            assert ff.intermediate_dense.post_op == ("gelu" if fused_here else "none")
            assert isinstance(ff.intermediate_act_fn, torch.nn.Identity) is fused_here
