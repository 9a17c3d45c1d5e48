"""The paper's quantiser: multi-scale residual VQ with one shared codebook (256 x 64 in the paper).

Same multi-scale structure as the release's binary spherical quantiser (model/quantizer.py): at each scale the
residual is area-downsampled to `patch_nums[k]` tokens, each token is replaced by its nearest codebook vector,
the chosen vectors are linearly upsampled back to T frames and subtracted from the residual. A token's code is a
codebook index (B, L) int64 instead of C bits; its feature is the codebook vector instead of +-1/sqrt(C).

This file holds what inference needs (nearest-code search, decoding, next-scale AR inputs). The training forward
(straight-through gradients, commitment/codebook losses, dead-code refresh) is flametalk.train.vq.
"""

from __future__ import annotations

import torch
from torch import nn

from .quantizer import NextScaleInput, area_resize, linear_resize_BCT


class CodebookQuantizer(nn.Module):
    """Holds the codebook (`embedding.weight`, (K, C)); stateless otherwise."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size, self.dim = size, dim
        self.embedding = nn.Embedding(size, dim)

    def nearest(self, r_BPC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (squared L2) of every token: (B, P) int64.

        Computed in fp32 from the expanded square (|r|^2 - 2 r.e + |e|^2): the training forward calls this very
        function, so training and inference always pick the same codes.
        """
        r = r_BPC.float()
        e = self.embedding.weight.float()
        dist = r.pow(2).sum(-1, keepdim=True) - 2 * r @ e.t() + e.pow(2).sum(-1)
        return dist.argmin(dim=-1)

    def lookup(self, idx_BP: torch.Tensor) -> torch.Tensor:
        return self.embedding(idx_BP).float()

    @torch.no_grad()
    def quantize_residual(self, f_BTC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        """Encoder output (B, T, C) -> codes (B, sum(patch_nums)) int64, coarse to fine."""
        _, T, _ = f_BTC.shape
        residual = f_BTC.float()
        codes = []
        for pn in patch_nums:
            r_BPC = area_resize(residual, pn).contiguous() if pn != T else residual
            idx = self.nearest(r_BPC)
            codes.append(idx)
            quant = self.lookup(idx)
            if pn != T:
                quant = linear_resize_BCT(quant.transpose(1, 2), T).transpose(1, 2).contiguous()
            residual = residual - quant
        return torch.cat(codes, dim=1)

    def frame_features(self, codes_BL: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
        """All scales' codes of one window -> the decoder input (B, T, C): scales upsampled and summed."""
        T = patch_nums[-1]
        h_BLC = self.lookup(codes_BL)
        f_hat = torch.zeros(codes_BL.shape[0], T, self.dim, dtype=torch.float32, device=codes_BL.device)
        start = 0
        for pn in patch_nums:
            h = h_BLC[:, start : start + pn]
            if pn != T:
                h = linear_resize_BCT(h.transpose(1, 2).contiguous(), T).transpose(1, 2)
            f_hat = f_hat + h
            start += pn
        return f_hat

    def next_scale_input(self, batch: int, patch_nums: tuple[int, ...], device: torch.device) -> NextScaleInputVQ:
        return NextScaleInputVQ(self, batch, patch_nums, device)

    def ar_inputs(self, codes_BL: torch.Tensor, patch_nums: tuple[int, ...], upto: int | None = None) -> torch.Tensor:
        """Codes of scales 0..upto -> AR inputs of scales 1..upto+1 (B, sum(patch_nums[1:upto+2]), C)."""
        upto = len(patch_nums) - 2 if upto is None else upto
        acc = self.next_scale_input(codes_BL.shape[0], patch_nums, codes_BL.device)
        outs, start = [], 0
        for k, pn in enumerate(patch_nums[: upto + 1]):
            outs.append(acc.push(k, codes_BL[:, start : start + pn]))
            start += pn
        return torch.cat(outs, dim=1)


class NextScaleInputVQ(NextScaleInput):
    """NextScaleInput whose token features are codebook vectors (the running sum and resizing are shared)."""

    def __init__(self, quantizer: CodebookQuantizer, batch: int, patch_nums: tuple[int, ...], device: torch.device):
        super().__init__(batch, quantizer.dim, patch_nums, device)
        self.quantizer = quantizer

    def token_features(self, codes_BP: torch.Tensor) -> torch.Tensor:
        return self.quantizer.lookup(codes_BP)
