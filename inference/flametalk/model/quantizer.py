"""Multi-scale residual binary spherical quantiser (BSQ) over a window of T frames.

Scale k holds `patch_nums[k]` tokens of `code_dim` bits. A token's feature is its bits mapped to +-1/sqrt(code_dim)
(a point on the unit sphere's hypercube). Coarser scales are summed after linear upsampling to T frames; the
autoregressive model reads, for scale k+1, the running sum area-downsampled to patch_nums[k+1] tokens.

Arithmetic mirrors the release op for op (multiply by 1/sqrt(C) when quantising, divide by sqrt(C) when reading
bits back) because the parity vectors are compared bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def area_resize(x_BTC: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool along time to `size` steps (torch's 'area' interpolation)."""
    return F.interpolate(x_BTC.transpose(1, 2), size=size, mode="area").transpose(1, 2)


def linear_resize_BCT(x_BCT: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x_BCT, size=size, mode="linear")


def bits_to_sphere(bits_BLC: torch.Tensor, code_dim: int) -> torch.Tensor:
    """{0,1} bits -> +-1/sqrt(C) features (float32)."""
    return (bits_BLC.float() * 2 - 1.0) / (code_dim**0.5)


def quantize_residual(f_BTC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Encoder output (B, T, C) -> bits (B, sum(patch_nums), C) int32, coarse to fine.

    At each scale the residual is area-downsampled, L2-normalised and its sign taken; the quantised tokens are
    upsampled back to T frames and subtracted from the residual.
    """
    _, T, C = f_BTC.shape
    q_scale = 1.0 / (C**0.5)
    residual = f_BTC
    all_bits = []
    for pn in patch_nums:
        r_BPC = area_resize(residual, pn).contiguous() if pn != T else residual
        z = F.normalize(r_BPC, dim=-1)
        zhat = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z)) * q_scale
        quant = z + (zhat - z)  # the release's straight-through expression, kept for identical rounding
        all_bits.append((quant > 0).int())
        if pn != T:
            quant = linear_resize_BCT(quant.transpose(1, 2), T).transpose(1, 2).contiguous()
        residual = residual - quant
    return torch.cat(all_bits, dim=1)


def bits_to_frame_features(bits_BLC: torch.Tensor, patch_nums: tuple[int, ...]) -> torch.Tensor:
    """All scales' bits of one window -> the decoder's input (B, T, C): coarse scales upsampled and summed."""
    B, _, C = bits_BLC.shape
    T = patch_nums[-1]
    h_BLC = bits_to_sphere(bits_BLC, C)
    f_hat = torch.zeros(B, T, C, dtype=torch.float32, device=bits_BLC.device)
    start = 0
    for pn in patch_nums[:-1]:
        up_BCT = linear_resize_BCT(h_BLC[:, start : start + pn].transpose(1, 2).contiguous(), T)
        f_hat.add_(up_BCT.transpose(1, 2).contiguous())
        start += pn
    f_hat.add_(h_BLC[:, start:])
    return f_hat


class NextScaleInput:
    """Incremental form of the release's next-scale AR input.

    `push(k, bits_k)` adds scale k's tokens to the running sum f_hat (B, C, T) and returns the sum area-downsampled
    to scale k+1's token count: the AR model's input for scale k+1. Same additions in the same order as recomputing
    from all bits, so the result is identical.
    """

    def __init__(self, batch: int, code_dim: int, patch_nums: tuple[int, ...], device: torch.device):
        self.patch_nums = patch_nums
        self.code_dim = code_dim
        self.f_hat_BCT = torch.zeros(batch, code_dim, patch_nums[-1], dtype=torch.float32, device=device)

    def token_features(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes of one scale -> their features (B, P, C); the VQ variant overrides this with codebook vectors."""
        return bits_to_sphere(codes, self.code_dim)

    def push(self, k: int, bits_BPC: torch.Tensor) -> torch.Tensor:
        T = self.patch_nums[-1]
        h_BCP = self.token_features(bits_BPC).transpose(1, 2).contiguous()
        self.f_hat_BCT.add_(linear_resize_BCT(h_BCP, T).contiguous())
        nxt_BCP = F.interpolate(self.f_hat_BCT, size=self.patch_nums[k + 1], mode="area").contiguous()
        return nxt_BCP.transpose(1, 2).contiguous()


def bits_to_ar_inputs(bits_BLC: torch.Tensor, patch_nums: tuple[int, ...], upto: int | None = None) -> torch.Tensor:
    """Bits of scales 0..upto -> AR inputs of scales 1..upto+1 concatenated (B, sum(patch_nums[1:upto+2]), C).

    Default upto = K-2: the inputs of every scale after the first (teacher forcing, the previous-window context).
    """
    B, _, C = bits_BLC.shape
    upto = len(patch_nums) - 2 if upto is None else upto
    acc = NextScaleInput(B, C, patch_nums, bits_BLC.device)
    outs, start = [], 0
    for k, pn in enumerate(patch_nums[: upto + 1]):
        outs.append(acc.push(k, bits_BLC[:, start : start + pn]))
        start += pn
    return torch.cat(outs, dim=1)
