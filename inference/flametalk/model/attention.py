"""The attention-kernel hook shared by the AR blocks and the motion autoencoder."""

from __future__ import annotations

from collections.abc import Callable

import torch

# (q (B, H, L, c), k (B, H, S, c), v (B, H, S, c), logit scale, additive bias or None) -> (B, H, L, c).
# A module whose `attention_fn` is None uses torch's scaled_dot_product_attention (exact mode, CUDA, MPS).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor | None], torch.Tensor]
