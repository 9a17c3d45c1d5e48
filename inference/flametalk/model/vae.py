"""Temporal multi-scale motion autoencoder over two consecutive windows [previous, current].

Both encoder and decoder are pre-norm transformers over 2T frames with a causal block mask: the previous window
may not attend to the current one, the current one sees both. Motion is normalised with dataset statistics stored
in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionFn, attend
from .codebook import CodebookQuantizer
from .config import ARTalkConfig
from .quantizer import NextScaleInput, bits_to_ar_inputs, bits_to_frame_features, quantize_residual


class FrameSelfAttention(nn.Module):
    """Pre-norm self-attention. Quirk kept from the release: logits scale by hidden_dim^-0.5, not head_dim^-0.5."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = hidden**-0.5
        self.norm = nn.LayerNorm(hidden, eps=1e-5)
        self.to_qkv = nn.Linear(hidden, hidden * 3, bias=False)
        self.to_out = nn.Linear(hidden, hidden)
        self.attention_fn: AttentionFn | None = None  # None: torch's SDPA; fast mode on CPU sets bmm_attention

    def forward(self, x_BLC: torch.Tensor, mask_11LL: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        qkv = self.to_qkv(self.norm(x_BLC)).view(B, L, 3, self.heads, C // self.heads)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attend(self.attention_fn, q_BHLc, k_BHLc, v_BHLc, self.scale, mask_11LL)
        return self.to_out(out.transpose(1, 2).reshape(B, L, C))


class FrameTransformer(nn.Module):
    """inp_mapping -> depth x (attention, MLP) residual pairs -> output projection.

    Blocks alternate in one ModuleList (attention at even, MLP at odd indices): that is the checkpoint's key layout.
    """

    def __init__(self, inp_dim: int, hidden: int, out_dim: int, depth: int, heads: int, blocks_name: str,
                 out_name: str):
        super().__init__()
        self.inp_mapping = nn.Sequential(nn.Linear(inp_dim, hidden), nn.LeakyReLU(0.2))
        blocks: list[nn.Module] = []
        for _ in range(depth):
            blocks.append(FrameSelfAttention(hidden, heads))
            blocks.append(
                nn.Sequential(nn.Linear(hidden, int(1.5 * hidden)), nn.GELU(approximate="tanh"),
                              nn.Linear(int(1.5 * hidden), hidden))
            )
        self._blocks_name, self._out_name = blocks_name, out_name
        self.add_module(blocks_name, nn.ModuleList(blocks))
        self.add_module(out_name, nn.Linear(hidden, out_dim))
        self.compute_dtype = torch.float32  # fast mode: bf16/fp16 inside, fp32 in and out

    def forward(self, x_BLD: torch.Tensor, mask_11LL: torch.Tensor | None) -> torch.Tensor:
        feat = self.inp_mapping(x_BLD.to(self.compute_dtype))
        mask_11LL = None if mask_11LL is None else mask_11LL.to(self.compute_dtype)
        for block in getattr(self, self._blocks_name):
            feat = feat + (block(feat, mask_11LL) if isinstance(block, FrameSelfAttention) else block(feat))
        return getattr(self, self._out_name)(feat).float()


class MotionAutoencoder(nn.Module):
    """The release's `basic_vae`: motion windows <-> multi-scale bit tokens."""

    def __init__(self, cfg: ARTalkConfig):
        super().__init__()
        self.cfg = cfg
        T, D, C = cfg.window_frames, cfg.motion_dim, cfg.code_dim
        self.encoder = FrameTransformer(D, cfg.vae_hidden, C, cfg.vae_depth, cfg.vae_heads,
                                        "encoder_transformer", "code_mapping")
        self.decoder = FrameTransformer(C, cfg.vae_hidden, D, cfg.vae_depth, cfg.vae_heads,
                                        "decoder_transformer", "out_mapping")
        self.enc_pos_embed = nn.Parameter(torch.zeros(1, 2 * T, D))
        self.dec_pos_embed = nn.Parameter(torch.zeros(1, 2 * T, C))
        self.register_buffer("attn_mask", self.causal_window_mask(T))
        self.register_buffer("motion_mean", torch.zeros(D))
        self.register_buffer("motion_std", torch.ones(D))
        # The paper's VQ variant adds its codebook (`quantizer.embedding.weight`); the release's BSQ has no weights,
        # so release checkpoints keep their exact key set.
        self.quantizer = CodebookQuantizer(cfg.codebook_size, C) if cfg.quantizer == "vq" else None

    @staticmethod
    def causal_window_mask(T: int) -> torch.Tensor:
        """(1, 1, 2T, 2T) additive mask: previous window rows cannot see the current window's columns."""
        mask = torch.zeros(2 * T, 2 * T)
        mask[:T, T:] = float("-inf")
        return mask[None, None]

    def normalize(self, motion_BTD: torch.Tensor) -> torch.Tensor:
        return (motion_BTD - self.motion_mean) / self.motion_std

    def encode_pair(self, prev_BTD: torch.Tensor, this_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two consecutive windows -> (prev bits, this bits), each (B, sum(patch_nums), code_dim)."""
        T = self.cfg.window_frames
        enc = self.encoder(self.normalize(torch.cat([prev_BTD, this_BTD], dim=1)) + self.enc_pos_embed,
                           self.attn_mask)
        return self.quantize(enc[:, :T]), self.quantize(enc[:, T:])

    def encode_single(self, motion_BTD: torch.Tensor) -> torch.Tensor:
        """One window on its own (the 'previous' slot only): how generation re-encodes each finished window."""
        T = self.cfg.window_frames
        enc = self.encoder(self.normalize(motion_BTD) + self.enc_pos_embed[:, :T], self.attn_mask[:, :, :T, :T])
        return self.quantize(enc)

    # ---- the quantiser's interface: codes are bits (B, L, C) for BSQ, codebook indices (B, L) for VQ ----
    def quantize(self, enc_BTC: torch.Tensor) -> torch.Tensor:
        if self.quantizer is None:
            return quantize_residual(enc_BTC, self.cfg.patch_nums)
        return self.quantizer.quantize_residual(enc_BTC, self.cfg.patch_nums)

    def frame_features(self, codes: torch.Tensor) -> torch.Tensor:
        if self.quantizer is None:
            return bits_to_frame_features(codes, self.cfg.patch_nums)
        return self.quantizer.frame_features(codes, self.cfg.patch_nums)

    def ar_inputs(self, codes: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Codes of scales 0..upto -> the AR model's inputs of scales 1..upto+1 (default: all)."""
        if self.quantizer is None:
            return bits_to_ar_inputs(codes, self.cfg.patch_nums, upto)
        return self.quantizer.ar_inputs(codes, self.cfg.patch_nums, upto)

    def next_scale_input(self, batch: int, device: torch.device) -> NextScaleInput:
        if self.quantizer is None:
            return NextScaleInput(batch, self.cfg.code_dim, self.cfg.patch_nums, device)
        return self.quantizer.next_scale_input(batch, self.cfg.patch_nums, device)

    def decode_features(self, feat_B2TC: torch.Tensor) -> torch.Tensor:
        """Decoder over [previous, current] frame features (B, 2T, C) -> motion (B, 2T, motion_dim), data units."""
        return self.decoder(feat_B2TC + self.dec_pos_embed, self.attn_mask) * self.motion_std + self.motion_mean

    def decode_pair(self, prev_bits: torch.Tensor, this_bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prev bits, this bits) -> (prev motion, this motion), each (B, T, motion_dim) in data units."""
        T = self.cfg.window_frames
        feat = torch.cat([self.frame_features(prev_bits), self.frame_features(this_bits)], dim=1)
        motion = self.decode_features(feat)
        return motion[:, :T], motion[:, T:]
