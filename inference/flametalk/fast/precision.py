"""Exact and fast numeric modes, and a memory-lean randomly initialised model for benchmarks.

exact: everything fp32 (matches the release bit for bit on the parity vectors).
fast:  what the plan (flametalk/plan.py) picks for this device: the audio encoder's and the AR blocks' linear layers
       in int8 on x86 CPUs (oneDNN with VNNI, fbgemm on AVX2), the rest of those parts in bf16 where the CPU
       computes it natively (else fp32), fp16 on CUDA/MPS. The motion autoencoder's statistics and the style encoder
       stay fp32 (they are cheap and decide the final motion). FLAMETALK_INT8=0 keeps the linears in float.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from . import filepages
from . import plan as plans
from .config import ARTalkConfig
from .model.artalk import ARTalkModel
from .model.vae import MotionAutoencoder

Mode = Literal["exact", "fast"]
MODES: tuple[str, ...] = ("exact", "fast")
INIT_STD = 0.02  # random-init scale: timing does not depend on the values, only that they stay finite


def fp32_tensors(model: ARTalkModel) -> set[int]:
    """ids of the parameters and buffers fast mode keeps in fp32: the style encoder (cheap, once per clip) and the
    autoencoder's statistics, position embeddings, mask and codebook. Only the autoencoder's two transformers
    run in the low dtype: normalisation, quantisation to bits and de-normalisation stay fp32 around them."""
    vae = model.basic_vae
    low = {id(t) for part in (vae.encoder, vae.decoder) for t in (*part.parameters(), *part.buffers())}
    keep = {id(t) for part in (model.style_encoder, vae) for t in (*part.parameters(), *part.buffers())}
    return keep - low


def model_plan(model: ARTalkModel) -> plans.Plan:
    """The plan a model was (or will be) prepared with: set by apply_mode, else exact mode's for its device."""
    plan = getattr(model, "_plan", None)
    if plan is None:
        plan = plans.choose(model.pos_embed.device, "exact")
        model._plan = plan
    return plan


def apply_mode(model: ARTalkModel, mode: Mode, plan: plans.Plan | None = None) -> ARTalkModel:
    """Cast in place for `mode` (weights are converted once, not per call) with `plan` (default: plan.choose for
    the model's device). The plan is kept on the model for prepare_for_inference and for reports."""
    if getattr(model, "_prepared_for_inference", False):
        raise ValueError("apply_mode must run before the model is prepared for inference (packed weights)")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    plan = plans.choose(model.pos_embed.device, mode) if plan is None else plan
    model._plan = plan
    if mode == "exact":
        return model.float()
    with filepages.releasing(getattr(model, "_file_weights", None)):
        if plan.dtype != "float32":
            cast_low_precision_parts(model, plan.torch_dtype())
        if plan.int8:
            from .model.int8 import quantize_model

            quantize_model(model, plan.int8, time_major=plan.pack)
    if plan.attention == "bmm":
        from .model.fastattn import use_bmm_attention

        use_bmm_attention(model)
    return model


def cast_low_precision_parts(model: ARTalkModel, dtype: torch.dtype) -> None:
    """Cast everything but the fp32 tensors (casting all and back would round their weights)."""
    keep = fp32_tensors(model)
    model.basic_vae.encoder.compute_dtype = model.basic_vae.decoder.compute_dtype = dtype
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if id(p) not in keep and p.is_floating_point():
                old = p.data
                p.data = old.to(dtype)
                filepages.done_with(old)
        for name, b in list(module.named_buffers(recurse=False)):
            if id(b) not in keep and b.is_floating_point() and name != "attn_bias_for_masking":
                module._buffers[name] = b.to(dtype)


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
    weights exist, so the bf16 weights of only one layer are alive at a time (peak RSS ~0.3 GB lower).
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
        from .model.int8 import int8_units

        units = int8_units(model, plan.int8, time_major=plan.pack)
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
        from .model.fastattn import use_bmm_attention

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
