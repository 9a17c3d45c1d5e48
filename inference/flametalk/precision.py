"""Exact and fast numeric modes, and a memory-lean randomly initialised model for benchmarks.

exact: everything fp32 (matches the release bit for bit on the parity vectors).
fast:  the audio encoder and the AR transformer in bf16 on CPU (AVX-512 bf16 / AMX where present) or fp16 on
       CUDA/MPS; the motion autoencoder and the style encoder stay fp32 (they are cheap and decide the final motion).
       On CPUs with VNNI the linear layers of the audio encoder's transformer and of the AR blocks run in int8
       (flametalk.model.int8; FLAMETALK_INT8=0 turns that off).
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
from torch import nn

from . import filepages
from .config import ARTalkConfig
from .model.artalk import ARTalkModel
from .model.vae import MotionAutoencoder

Mode = Literal["exact", "fast"]
MODES: tuple[str, ...] = ("exact", "fast")
INIT_STD = 0.02  # random-init scale: timing does not depend on the values, only that they stay finite


def fast_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def fp32_tensors(model: ARTalkModel) -> set[int]:
    """ids of the parameters and buffers fast mode keeps in fp32: the style encoder (cheap, once per clip) and the
    autoencoder's statistics, position embeddings, mask and codebook. Only the autoencoder's two transformers
    run in the low dtype: normalisation, quantisation to bits and de-normalisation stay fp32 around them."""
    vae = model.basic_vae
    low = {id(t) for part in (vae.encoder, vae.decoder) for t in (*part.parameters(), *part.buffers())}
    keep = {id(t) for part in (model.style_encoder, vae) for t in (*part.parameters(), *part.buffers())}
    return keep - low


def apply_mode(model: ARTalkModel, mode: Mode) -> ARTalkModel:
    """Cast in place for `mode` (weights are converted once, not per call)."""
    if getattr(model, "_prepared_for_inference", False):
        raise ValueError("apply_mode must run before the model is prepared for inference (packed weights)")
    if mode == "exact":
        return model.float()
    if mode != "fast":
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    device = next(model.parameters()).device
    with filepages.releasing(getattr(model, "_file_weights", None)):
        cast_low_precision_parts(model, fast_dtype(device))
        quantize_for_fast_mode(model)
    use_fast_attention(model)
    return model


def use_fast_attention(model: ARTalkModel) -> int:
    """CPU fast mode: bmm attention (model/fastattn.py) in the audio encoder and the AR blocks. CUDA/MPS keep
    torch's fused kernels."""
    from .model.fastattn import use_bmm_attention

    return use_bmm_attention(model) if model.pos_embed.device.type == "cpu" else 0


def int8_enabled(device: torch.device) -> bool:
    from .model.int8 import int8_available

    return device.type == "cpu" and os.environ.get("FLAMETALK_INT8", "1") != "0" and int8_available()


def quantize_for_fast_mode(model: ARTalkModel) -> int:
    """Swap the big linear layers for int8 ones where this CPU runs int8 fast. Returns how many were swapped."""
    from .model.int8 import quantize_model

    if not int8_enabled(model.pos_embed.device):
        return 0
    return quantize_model(model)


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
                      seed: int = 0) -> ARTalkModel:
    """Full architecture with random weights, allocated directly in each part's final dtype.

    Building in fp32 and casting afterwards would touch 2 GB for the full-size model; this allocates one
    parameter at a time, and in fast mode swaps each int8 unit (encoder layer, AR block) for int8 as soon as its
    weights exist, so the bf16 weights of only one layer are alive at a time (peak RSS ~0.3 GB lower).
    """
    device = torch.device(device)
    with torch.device("meta"):
        model = ARTalkModel(cfg)
    if mode == "fast":
        cast_low_precision_parts(model, fast_dtype(device))
    units = {}
    if mode == "fast" and int8_enabled(device):
        from .model.int8 import int8_units

        units = int8_units(model)
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
    if mode == "fast":
        use_fast_attention(model)
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
