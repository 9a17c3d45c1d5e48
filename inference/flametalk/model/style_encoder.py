"""Style encoder: a 2-s motion clip (50 x 106) -> one 128-d style vector (mean over time of a small transformer)."""

from __future__ import annotations

import torch
from torch import nn

from .config import ARTalkConfig


class SinusoidalTable(nn.Module):
    """Holds the release's sinusoidal table as a buffer (`PE.pe`), loaded from the checkpoint."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, max_len, dim))


class StyleEncoder(nn.Module):
    def __init__(self, cfg: ARTalkConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.style_dim, nhead=cfg.style_heads, dim_feedforward=cfg.style_ff, activation="gelu",
            batch_first=True,
        )
        self.PE = SinusoidalTable(cfg.style_dim, cfg.style_max_len)
        self.encoder = nn.ModuleDict({
            "motion_proj": nn.Linear(cfg.motion_dim, cfg.style_dim),
            "transformer": nn.TransformerEncoder(layer, num_layers=cfg.style_depth, enable_nested_tensor=False),
        })
        self.register_buffer("motion_mean", torch.zeros(cfg.motion_dim))
        self.register_buffer("motion_std", torch.ones(cfg.motion_dim))

    def forward(self, style_BLD: torch.Tensor) -> torch.Tensor:
        L = style_BLD.shape[1]
        feat_BLC = self.encoder["motion_proj"]((style_BLD - self.motion_mean) / self.motion_std)
        # Release quirk: every frame gets the single table row at index L (the clip length), not rows 0..L-1.
        feat_BLC = feat_BLC + self.PE.pe[:, L, :]
        return self.encoder["transformer"](feat_BLC).mean(dim=1)
