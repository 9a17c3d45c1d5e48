"""Exact and fast numeric modes: what `--mode` switches (the random-init benchmark model: model/random_init.py).

exact: everything fp32 (matches the release bit for bit on the parity vectors).
fast:  what the plan (fast/plan.py) picks for this device: the audio encoder's and the AR blocks' linear layers
       in int8 on x86 CPUs (oneDNN with VNNI, fbgemm on AVX2), the rest of those parts in bf16 where the CPU
       computes it natively (else fp32), fp16 on CUDA/MPS. The motion autoencoder's statistics and the style encoder
       stay fp32 (they are cheap and decide the final motion). FLAMETALK_INT8=0 keeps the linears in float.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..model.artalk import ARTalkModel
from . import filepages
from . import plan as plans

Mode = Literal["exact", "fast"]
MODES: tuple[str, ...] = ("exact", "fast")


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
            from .int8 import quantize_model

            quantize_model(model, plan.int8, time_major=plan.pack, fuse_qkv=plan.fuse_qkv)
    if plan.attention == "bmm":
        from .fastattn import use_bmm_attention

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
