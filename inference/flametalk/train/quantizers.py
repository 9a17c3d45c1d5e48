"""Training forwards of the quantisers behind one small interface.

Inference quantises without gradients (model/quantizer.py, model/codebook.py). Training needs the quantised
features with straight-through gradients for the encoder, the quantiser's own losses, and (VQ) a codebook refresh
after optimiser steps. Both forwards pick exactly the codes inference picks for the same encoder output (the
straight-through expressions add an exact zero), so stage 2 trains on the tokens generation will produce.

This module holds the interface and the BSQ forward; vq.py (the VQ forward) builds on it, and stage1.py picks one
(`make_train_quantizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..model.quantizer import area_resize, linear_resize_BCT
from .config import QuantConfig


@dataclass
class QuantOut:
    features: torch.Tensor  # (B, T, C) decoder input, straight-through gradients to the encoder output
    codes: torch.Tensor  # bits (B, L, C) int32 (BSQ) or indices (B, L) int64 (VQ), as MotionAutoencoder.quantize
    losses: dict[str, torch.Tensor]  # per-scale means: "commit" always; "entropy" (BSQ) or "codebook" (VQ)


class TrainQuantizer(Protocol):
    def __call__(self, f_BTC: torch.Tensor) -> QuantOut: ...

    def after_step(self, step: int, ctx: Any) -> dict[str, float]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def upsample(x_BPC: torch.Tensor, T: int) -> torch.Tensor:
    if x_BPC.shape[1] == T:
        return x_BPC
    return linear_resize_BCT(x_BPC.transpose(1, 2), T).transpose(1, 2).contiguous()


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class BSQTraining:
    """The release's multi-scale binary spherical quantiser with straight-through gradients.

    Losses: commitment = squared distance of each L2-normalised token to its hypercube corner; entropy = mean
    per-token soft-bit entropy (confident bits) minus gamma x the entropy of each window's mean bit usage (use every
    bit). The usage term is computed per window, not per batch, so it does not depend on how a global batch is
    split over processes (1 and N processes train identically).
    """

    def __init__(self, patch_nums: tuple[int, ...], code_dim: int, cfg: QuantConfig):
        self.patch_nums, self.code_dim, self.cfg = patch_nums, code_dim, cfg

    def __call__(self, f_BTC: torch.Tensor) -> QuantOut:
        with torch.autocast(f_BTC.device.type, enabled=False):  # sign decisions in fp32, as inference
            return self._forward(f_BTC.float())

    def _forward(self, f_BTC: torch.Tensor) -> QuantOut:
        _B, T, C = f_BTC.shape
        q_scale = 1.0 / (C**0.5)
        residual, f_hat = f_BTC, torch.zeros_like(f_BTC)
        bits, commit, tok_h, use_h = [], f_BTC.new_zeros(()), f_BTC.new_zeros(()), f_BTC.new_zeros(())
        for pn in self.patch_nums:
            r = area_resize(residual, pn).contiguous() if pn != T else residual
            z = F.normalize(r, dim=-1)
            zhat = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z)) * q_scale
            quant = z + (zhat - z).detach()  # value identical to inference's z + (zhat - z)
            bits.append((quant > 0).int())
            commit = commit + (z - zhat.detach()).pow(2).sum(-1).mean()
            p = torch.sigmoid(2.0 * z * (C**0.5) / self.cfg.entropy_temperature)
            tok_h = tok_h + binary_entropy(p).mean()
            use_h = use_h + binary_entropy(p.mean(dim=1)).mean()
            up = upsample(quant, T)
            residual = residual - up
            f_hat = f_hat + up
        K = len(self.patch_nums)
        losses = {"commit": commit / K, "entropy": (tok_h - self.cfg.entropy_gamma * use_h) / K}
        return QuantOut(f_hat, torch.cat(bits, dim=1), losses)

    def after_step(self, step: int, ctx: Any) -> dict[str, float]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass
