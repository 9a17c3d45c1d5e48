"""Fast mode's CPU attention: batched GEMMs and a softmax instead of torch's CPU flash-attention kernel.

For this model's shapes (16 heads x 199 tokens in the audio encoder, 12 heads x up to 181 queries over 362 keys in
the AR transformer, 8 x 200 in the autoencoder, head size 64) the flash kernel runs at the same low rate whatever
the dtype: its tiles are sized for long sequences. Here: logits = q k^T as an fp32 bmm, softmax in fp32, then the
probabilities in the input dtype (bf16) times v: faster for the encoder's and the AR's shapes, most for
the AR's one-token scale (BENCHMARKS.md). The logits stay fp32 on purpose: rounding them to bf16 (faster still) gave
0.8 % probability error at logit std 3 and doubled the drift from exact mode on a full-size random model
(4.3 % vs 2.6 % of bits). Exact mode keeps torch's kernel (its fp32 results are what the parity vector checks).
"""

from __future__ import annotations

import torch
from torch import nn


def bmm_attention(q_BHLc: torch.Tensor, k_BHSc: torch.Tensor, v_BHSc: torch.Tensor, scale: float,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for (B, H, L, c) queries over (B, H, S, c) keys -> (B, H, L, c) in v's
    dtype; logits and softmax in fp32."""
    B, H, L, c = q_BHLc.shape
    q_XLc = q_BHLc.reshape(B * H, L, c).float()
    k_XSc = k_BHSc.reshape(B * H, -1, c).float()
    if scale != 1.0:
        q_XLc = q_XLc * scale
    logits_XLS = torch.bmm(q_XLc, k_XSc.transpose(1, 2))
    if bias is not None:
        logits_XLS = (logits_XLS.view(B, H, L, -1) + bias).view(B * H, L, -1)
    probs_XLS = torch.softmax(logits_XLS, dim=-1).to(v_BHSc.dtype)
    return torch.bmm(probs_XLS, v_BHSc.reshape(B * H, -1, c)).view(B, H, L, c)


class BmmEncoderSelfAttention(nn.Module):
    """Replaces a transformers wav2vec2/HuBERT self-attention module (same projections, same call signature)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.out_proj = attention.v_proj, attention.out_proj
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.scaling = float(attention.scaling)

    def split_heads(self, x_BLE: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_BLE.shape
        return x_BLE.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
        B, L, E = hidden_states.shape
        q, k, v = (self.split_heads(proj(hidden_states)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        bias = None
        if attention_mask is not None:  # additive float mask, or boolean "may attend"
            bias = attention_mask.float() if attention_mask.is_floating_point() else torch.zeros(
                attention_mask.shape, device=q.device).masked_fill_(~attention_mask, float("-inf"))
        out_BHLc = bmm_attention(q, k, v, self.scaling, bias)
        return self.out_proj(out_BHLc.transpose(1, 2).reshape(B, L, E)), None


def use_bmm_attention(model: nn.Module) -> int:
    """Fast mode on CPU: bmm attention in the audio encoder's layers, the AR blocks and the autoencoder. Call after
    the projections have their final (int8 / bf16) form: the encoder wrapper keeps references to them."""
    count = 0
    for layer in model.audio_encoder.encoder.layers:
        if not isinstance(layer.attention, BmmEncoderSelfAttention):
            layer.attention = BmmEncoderSelfAttention(layer.attention)
            count += 1
    for blk in model.attn_blocks:
        blk.attn.attention_fn = bmm_attention
        count += 1
    for module in model.basic_vae.modules():
        if hasattr(module, "attention_fn"):
            module.attention_fn = bmm_attention
            count += 1
    return count
