"""A memory-lean randomly initialised model: the full architecture for benchmarks and drift checks without the
release's weights (timing does not depend on the values, only that they stay finite)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..fast import plan as plans
from ..fast.precision import Mode, cast_low_precision_parts
from .artalk import ARTalkModel
from .config import ARTalkConfig
from .vae import MotionAutoencoder

INIT_STD = 0.02  # random-init scale: timing does not depend on the values, only that they stay finite


def sinusoid_table(dim: int, length: int) -> torch.Tensor:
    """(1, length, dim) sin/cos table (even columns sin, odd cos) as the release's style encoder holds."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table[None]


@torch.no_grad()
def random_init_model(cfg: ARTalkConfig, mode: Mode = "exact", device: str | torch.device = "cpu",
                      seed: int = 0, plan: plans.Plan | None = None) -> ARTalkModel:
    """Full architecture with random weights, allocated directly in each part's final dtype.

    Building in fp32 and casting afterwards would touch 2 GB for the full-size model; this allocates one
    parameter at a time, and in fast mode swaps each int8 unit (encoder layer, AR block) for int8 as soon as its
    weights exist, so the bf16 weights of only one layer are alive at a time (lower peak RSS: BENCHMARKS.md).
    """
    device = torch.device(device)
    plan = plans.choose(device, mode) if plan is None else plan
    with torch.device("meta"):
        model = ARTalkModel(cfg)
    model._plan = plan
    if mode == "fast" and plan.dtype != "float32":
        cast_low_precision_parts(model, plan.torch_dtype())
    units = {}
    if mode == "fast" and plan.int8:
        from ..fast.int8 import int8_units

        units = int8_units(model, plan.int8, time_major=plan.pack, fuse_qkv=plan.fuse_qkv)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    current = None  # the int8 unit whose parameters are being filled
    for name, p in list(model.named_parameters()):
        unit = next((u for u in units if name.startswith(u + ".")), None)
        if current is not None and unit != current:
            units[current](model, current)
        current = unit
        module_name, _, param_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[param_name] = nn.Parameter(random_values(name, p, gen, device), requires_grad=False)
    if current is not None:
        units[current](model, current)
    for module in model.modules():
        for name, b in list(module.named_buffers(recurse=False)):
            if b.is_meta:
                module._buffers[name] = torch.zeros(b.shape, dtype=b.dtype, device=device)
    reset_buffers(model)
    if mode == "fast" and plan.attention == "bmm":
        from ..fast.fastattn import use_bmm_attention

        use_bmm_attention(model)
    return model.eval().requires_grad_(False)


def random_values(name: str, like: torch.Tensor, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    if name.endswith((".bias", "norm.bias")) or "layer_norm.bias" in name:
        return torch.zeros(like.shape, dtype=like.dtype, device=device)
    if "norm" in name and like.dim() == 1:
        return torch.ones(like.shape, dtype=like.dtype, device=device)
    return torch.randn(like.shape, generator=gen, dtype=like.dtype).mul_(INIT_STD).to(device)


def reset_buffers(model: ARTalkModel) -> None:
    cfg = model.cfg
    bias, lvl = ARTalkModel.scale_causal_bias(cfg.patch_nums, cfg.prev_ratio)
    model.attn_bias_for_masking.copy_(bias)
    model.lvl_idx.copy_(lvl)
    model.basic_vae.attn_mask.copy_(MotionAutoencoder.causal_window_mask(cfg.window_frames))
    for part in (model.basic_vae, model.style_encoder):
        part.motion_mean.zero_()
        part.motion_std.fill_(1.0)
    model.style_encoder.PE.pe.copy_(sinusoid_table(cfg.style_dim, cfg.style_max_len))
