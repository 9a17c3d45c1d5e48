"""Query/key/value as one stacked GEMM (flametalk/fast/fused.py): each member's output equals its separate layer's
bit for bit (oneDNN-packed fp32 and fbgemm int8), one GEMM per input, and a model with fused projections generates
the same motion as one without."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from fixtures.common import PARITY_VECTOR
from flametalk.commands.reference import load_vector, model_from_vector
from flametalk.decode.pipeline import generate_motion, prepare_for_inference
from flametalk.fast import plan as plans
from flametalk.fast.fused import FusedMember, FusedProjections, fuse_siblings
from flametalk.fast.int8 import FbgemmInt8Linear
from flametalk.fast.packed import PackedLinear
from flametalk.fast.precision import apply_mode
from torch import nn

HOST = plans.detect()
needs_onednn = pytest.mark.skipif(not HOST.onednn, reason="oneDNN packing needs torch built with oneDNN (x86)")
needs_fbgemm = pytest.mark.skipif(not HOST.fbgemm, reason="fbgemm int8 needs an x86 CPU (torch's fbgemm engine)")
QKV = ("query", "key", "value")


def siblings(width: int = 96, seed: int = 0) -> nn.Module:
    """Three projections of one input; the key without bias, as in the AR blocks."""
    torch.manual_seed(seed)
    parent = nn.Module()
    parent.query, parent.key, parent.value = nn.Linear(width, width), nn.Linear(width, width, bias=False), \
        nn.Linear(width, width // 2)
    return parent.requires_grad_(False)


FACTORIES = [  # the GEMM of a group, and of each separate layer it is compared with
    pytest.param(PackedLinear.from_weight, marks=needs_onednn, id="packed"),
    pytest.param(partial(FbgemmInt8Linear.from_weight, per_token=False), marks=needs_fbgemm, id="fbgemm"),
    pytest.param(partial(FbgemmInt8Linear.from_weight, per_token=True), marks=needs_fbgemm, id="fbgemm-per-token"),
]


def separate(parent: nn.Module, make) -> dict[str, nn.Module]:
    return {n: make(getattr(parent, n).weight, getattr(parent, n).bias) for n in QKV}


@pytest.mark.parametrize("make", FACTORIES)
@pytest.mark.parametrize("rows", [1, 5, 100, 199])
def test_each_member_equals_its_separate_layer_bit_for_bit(make, rows):
    parent = siblings()
    want_layers = separate(parent, make)
    assert fuse_siblings(parent, QKV, make) == 3
    assert all(isinstance(getattr(parent, n), FusedMember) for n in QKV)
    x = torch.randn(2, rows, 96)
    x[1] *= 40.0  # a loud row block: per-tensor and per-token quantisation both see it
    for order in (QKV, ("value", "query", "key")):
        got = {n: getattr(parent, n)(x) for n in order}
        for n in QKV:
            want = want_layers[n](x)
            assert got[n].shape == want.shape == (2, rows, getattr(parent, n).out_features)
            assert torch.equal(got[n], want), n


@needs_fbgemm
def test_one_gemm_per_input_and_a_new_input_or_a_lone_member_recomputes():
    parent = siblings()
    want = separate(parent, partial(FbgemmInt8Linear.from_weight, per_token=True))
    fuse_siblings(parent, QKV, partial(FbgemmInt8Linear.from_weight, per_token=True))
    group: FusedProjections = parent.query.group
    calls = []
    group.gemm.register_forward_hook(lambda *_: calls.append(1))
    x1, x2 = torch.randn(7, 96), torch.randn(7, 96)
    assert torch.equal(parent.key(x1), want["key"](x1)) and torch.equal(parent.value(x1), want["value"](x1))
    assert len(calls) == 1 and group.source is x1  # the query was not asked for: the outputs are still held
    for n in QKV:  # another input: computed again, all three from one GEMM, then let go
        assert torch.equal(getattr(parent, n)(x2), want[n](x2))
    assert len(calls) == 2 and group.source is None and group.outputs == ()
    assert torch.equal(parent.query(x2), want["query"](x2))  # asked again for the same input: computed again
    assert torch.equal(parent.query(x2), want["query"](x2))
    assert len(calls) == 4


@needs_fbgemm
def test_mixed_or_mismatched_siblings_are_left_alone():
    parent = siblings()
    parent.key = FbgemmInt8Linear(parent.key)
    assert fuse_siblings(parent, QKV, partial(FbgemmInt8Linear.from_weight, per_token=False)) == 0
    assert type(parent.query) is nn.Linear and isinstance(parent.key, FbgemmInt8Linear)
    parent = siblings()
    parent.value = nn.Linear(48, 96)
    assert fuse_siblings(parent, QKV, partial(FbgemmInt8Linear.from_weight, per_token=False)) == 0
    assert all(type(getattr(parent, n)) is nn.Linear for n in QKV)


@pytest.fixture(scope="module")
def vector():
    return load_vector(PARITY_VECTOR)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_a_fused_model_generates_the_motion_of_an_unfused_one(vector, mode):
    lacking = plans.missing_for("avx2", HOST)
    if lacking:
        pytest.skip(f"the avx2 plan needs {lacking}")
    plan = plans.cpu_plan("avx2", mode)
    assert plan.fuse_qkv
    fused = prepare_for_inference(apply_mode(model_from_vector(vector), mode, plan=plan))  # exact mode fuses here
    plain = apply_mode(model_from_vector(vector), mode, plan=replace(plan, fuse_qkv=False))
    audio = vector["inputs"]["audio_16k"][0, :96000].numpy()  # 6 s: two windows, the second with context
    want = generate_motion(plain, audio)
    calls = []
    groups = [m for m in fused.modules() if isinstance(m, FusedProjections)]
    for g in groups:
        g.gemm.register_forward_hook(lambda *_: calls.append(1))
    got = generate_motion(fused, audio)
    assert got.shape == want.shape == (150, 106)
    np.testing.assert_array_equal(got, want)
    layers, blocks = len(fused.audio_encoder.encoder.layers), len(fused.attn_blocks)
    assert len(groups) == layers + blocks
    assert not any(isinstance(m, FusedMember) for m in plain.modules())
    # one GEMM per encoder layer and window; per AR block and window one for the context, one per scale
    windows, scales = 2, len(fused.cfg.patch_nums)
    assert len(calls) == windows * (layers + blocks * (1 + scales))
