"""The ARTalk model: modules and parameter names exactly as in the release checkpoint.

Shapes: B batch, L tokens of one window over all scales (sum(patch_nums)), Lp previous-window context tokens
(L * prev_ratio), E embed width, D audio feature width, H heads, c head width, C code bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionFn, attend
from .audio_encoder import build_audio_encoder
from .config import ARTalkConfig
from .style_encoder import StyleEncoder
from .vae import MotionAutoencoder

LN_EPS = 1e-6
MAX_LOG_SCALE = math.log(100)  # cap of the learned per-head attention temperature (log space)


class ContextAttention(nn.Module):
    """Attention of the current tokens over [previous-window context, current tokens], with L2-normalised q/k
    ("cosine attention") and a learned per-head temperature. Keys have no bias, as in the checkpoint."""

    def __init__(self, embed: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, embed // heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.query = nn.Linear(embed, embed, bias=True)
        self.key = nn.Linear(embed, embed, bias=False)
        self.value = nn.Linear(embed, embed, bias=True)
        self.proj = nn.Linear(embed, embed, bias=True)
        self.attention_fn: AttentionFn | None = None  # None: torch's SDPA; fast mode on CPU sets bmm_attention

    def split_heads(self, x_BLE: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_BLE.shape
        return x_BLE.view(B, L, self.heads, self.head_dim).transpose(1, 2)

    def queries(self, x_BLE: torch.Tensor) -> torch.Tensor:
        scale = self.scale_mul_1H11.clamp_max(MAX_LOG_SCALE).exp()
        return F.normalize(self.split_heads(self.query(x_BLE)), dim=-1).mul(scale)

    def keys_values(self, x_BLE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_BHLc = F.normalize(self.split_heads(self.key(x_BLE)), dim=-1)
        return k_BHLc, self.split_heads(self.value(x_BLE))

    def attend(self, q_BHLc: torch.Tensor, k_BHSc: torch.Tensor, v_BHSc: torch.Tensor,
               bias_11LS: torch.Tensor | None = None) -> torch.Tensor:
        B, _, L, _ = q_BHLc.shape
        out = attend(self.attention_fn, q_BHLc, k_BHSc, v_BHSc, 1.0, bias_11LS)
        return self.proj(out.transpose(1, 2).reshape(B, L, self.heads * self.head_dim))


class AdaLNBlock(nn.Module):
    """Transformer block whose layer norms are modulated per token by the audio feature (AdaLN):
    6 vectors (gamma1, gamma2, scale1, scale2, shift1, shift2) from SiLU -> Linear of the condition."""

    def __init__(self, embed: int, cond_dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = round(embed * mlp_ratio)
        self.attn = ContextAttention(embed, heads)
        self.ffn = nn.Sequential(nn.Linear(embed, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, embed))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed))

    def modulation(self, cond_BLD: torch.Tensor) -> torch.Tensor:
        """Per-token AdaLN vectors (B, L, 6, E); depends only on audio, so it is computed once per window."""
        B, L, _ = cond_BLD.shape
        return self.ada_lin(cond_BLD).view(B, L, 6, -1)

    def modulated_input(self, x_BLE: torch.Tensor, mod_BL6E: torch.Tensor) -> torch.Tensor:
        scale1, shift1 = mod_BL6E[:, :, 2], mod_BL6E[:, :, 4]
        return F.layer_norm(x_BLE, x_BLE.shape[-1:], eps=LN_EPS).mul(scale1.add(1)).add_(shift1)

    def finish(self, x_BLE: torch.Tensor, attn_out_BLE: torch.Tensor, mod_BL6E: torch.Tensor) -> torch.Tensor:
        gamma1, gamma2, scale2, shift2 = mod_BL6E[:, :, 0], mod_BL6E[:, :, 1], mod_BL6E[:, :, 3], mod_BL6E[:, :, 5]
        x_BLE = x_BLE + attn_out_BLE.mul_(gamma1)
        h = F.layer_norm(x_BLE, x_BLE.shape[-1:], eps=LN_EPS).mul(scale2.add(1)).add_(shift2)
        return x_BLE + self.ffn(h).mul(gamma2)

    def forward(self, x_BLE: torch.Tensor, ctx_BSE: torch.Tensor, mod_BL6E: torch.Tensor,
                bias_11LS: torch.Tensor | None) -> torch.Tensor:
        """Uncached form (training, reference): keys/values over [context, all current tokens]."""
        h = self.modulated_input(x_BLE, mod_BL6E)
        q = self.attn.queries(h)
        k, v = self.attn.keys_values(torch.cat([ctx_BSE, h], dim=1))
        return self.finish(x_BLE, self.attn.attend(q, k, v, bias_11LS), mod_BL6E)


class AdaLNHead(nn.Module):
    """Final AdaLN (scale, shift) before the logits head."""

    def __init__(self, embed: int, cond_dim: int):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * embed))

    def modulation(self, cond_BLD: torch.Tensor) -> torch.Tensor:
        B, L, _ = cond_BLD.shape
        return self.ada_lin(cond_BLD).view(B, L, 2, -1)

    def forward(self, x_BLE: torch.Tensor, mod_BL2E: torch.Tensor) -> torch.Tensor:
        scale, shift = mod_BL2E[:, :, 0], mod_BL2E[:, :, 1]
        return F.layer_norm(x_BLE, x_BLE.shape[-1:], eps=LN_EPS).mul(scale.add(1)).add_(shift)


class ARTalkModel(nn.Module):
    # set outside the network: the checkpoint's mapped file (io/checkpoint.py, dropped once converted) and
    # whether decode/pipeline.py prepared the model for inference
    _file_weights: Any = None
    _prepared_for_inference: bool = False

    def __init__(self, cfg: ARTalkConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        E, L, K = cfg.embed_dim, cfg.tokens_per_window, len(cfg.patch_nums)
        self.basic_vae = MotionAutoencoder(cfg)
        self.vqfeat_embed = nn.Linear(cfg.code_dim, E)
        self.style_encoder = StyleEncoder(cfg)
        self.style_cond_embed = nn.Linear(cfg.style_dim, E)
        self.audio_encoder = build_audio_encoder(cfg.audio_encoder, cfg.audio_encoder_config)
        self.attn_blocks = nn.ModuleList(
            AdaLNBlock(E, cfg.audio_dim, cfg.ar_heads, cfg.mlp_ratio) for _ in range(cfg.ar_depth)
        )
        self.cond_logits_head = AdaLNHead(E, cfg.audio_dim)
        self.logits_head = nn.Linear(E, cfg.logits_dim)
        self.null_style_cond = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, L, E))
        self.prev_pos_embed = nn.Parameter(torch.zeros(1, L * cfg.prev_ratio, E))
        self.lvl_embed = nn.Embedding(K, E)
        bias, lvl_idx = self.scale_causal_bias(cfg.patch_nums, cfg.prev_ratio)
        self.register_buffer("attn_bias_for_masking", bias)
        self.register_buffer("lvl_idx", lvl_idx)

    @staticmethod
    def scale_causal_bias(patch_nums: tuple[int, ...], prev_ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive bias (1, 1, L, L*prev_ratio + L): all context visible; a current token sees tokens of its own
        and coarser scales. Also each token's scale index (1, L)."""
        lvl_L = torch.cat([torch.full((pn,), k) for k, pn in enumerate(patch_nums)])
        L = lvl_L.numel()
        current = torch.where(lvl_L[:, None] >= lvl_L[None, :], 0.0, float("-inf"))
        bias = torch.cat([torch.zeros(L, L * prev_ratio), current], dim=1)
        return bias[None, None].contiguous(), lvl_L[None].contiguous()

    # ---- small pieces shared by generation and training ----
    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the AR transformer (fp32 exact; bf16/fp16 in fast mode, where the autoencoder and the style
        encoder stay fp32)."""
        return self.pos_embed.dtype

    def style_condition(self, style_BLD: torch.Tensor | None, batch: int = 1) -> torch.Tensor:
        """(B, 1, E) style token. With a clip: 1.1 * embedding - 0.1 * null (the release's guidance)."""
        if style_BLD is None:
            return self.null_style_cond.expand(batch, -1, -1)
        feat = self.style_encoder(style_BLD.to(self.style_encoder.motion_mean.dtype))
        cond = self.style_cond_embed(feat.to(self.compute_dtype))[:, None]
        return cond * 1.1 - self.null_style_cond * 0.1

    def token_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(current-window, context) position + scale embeddings, (1, L, E) and (1, Lp, E)."""
        lvl = self.lvl_embed(self.lvl_idx)
        return lvl + self.pos_embed, lvl.repeat(1, self.cfg.prev_ratio, 1) + self.prev_pos_embed

    def audio_condition(self, feat_BND: torch.Tensor) -> torch.Tensor:
        """Encoder features of one window (B, N, D) -> per-token condition (B, L, D), area-resized to each scale."""
        x_BDN = feat_BND.transpose(1, 2)
        return torch.cat([F.interpolate(x_BDN, size=pn, mode="area").transpose(1, 2)
                          for pn in self.cfg.patch_nums], dim=1)

    def window_tokens(self, style_B1E: torch.Tensor, ar_feat_BMC: torch.Tensor) -> torch.Tensor:
        """[style token, embedded next-scale inputs] (B, 1 + M, E)."""
        return torch.cat([style_B1E, self.vqfeat_embed(ar_feat_BMC.to(self.compute_dtype))], dim=1)

    def bits_from_logits(self, logits_BL2C: torch.Tensor) -> torch.Tensor:
        B, L, _ = logits_BL2C.shape
        return logits_BL2C.view(B, L, self.cfg.code_dim, 2).argmax(dim=-1)

    def codes_from_logits(self, logits_BLX: torch.Tensor) -> torch.Tensor:
        """Argmax decoding: bits (B, L, C) for BSQ, codebook indices (B, L) for the VQ variant."""
        if self.cfg.quantizer == "bsq":
            return self.bits_from_logits(logits_BLX)
        return logits_BLX.argmax(dim=-1)
