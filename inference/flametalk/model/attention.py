"""The attention-kernel hook shared by the AR blocks and the motion autoencoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# (q (B, H, L, c), k (B, H, S, c), v (B, H, S, c), logit scale, additive bias or None) -> (B, H, L, c).
# A module whose `attention_fn` is None uses torch's scaled_dot_product_attention (exact mode, CUDA, MPS).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor | None], torch.Tensor]


def attend(fn: AttentionFn | None, q_BHLc: torch.Tensor, k_BHSc: torch.Tensor, v_BHSc: torch.Tensor, scale: float,
           bias: torch.Tensor | None) -> torch.Tensor:
    """Run a module's attention hook, or torch's SDPA when it has none."""
    if fn is None:
        return F.scaled_dot_product_attention(q_BHLc, k_BHSc, v_BHSc, attn_mask=bias, scale=scale)
    return fn(q_BHLc, k_BHSc, v_BHSc, scale, bias)
