"""Fast mode's positional convolution on the CPU: the wav2vec2 encoder's grouped convolution through the FFT.

The positional convolution (1024 channels in 16 groups of 64, kernel 128, padding 64) over one 4-s window's 199
frames is 3.3 GFLOP, and oneDNN runs grouped convolutions of this shape slowly (BENCHMARKS.md). Through the
FFT each group is, per frequency, one (64 x 64) complex matrix times a 64-vector: ~1/40 of the arithmetic.
The weights' transforms are computed once (per FFT length) and kept: (groups, frequencies, out, in) complex64,
~86 MB for the release's encoder at 4-s windows. Results equal the direct convolution up to fp32 rounding
(~1e-6 of the output's range), so only fast mode uses it; exact mode keeps torch's convolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def fft_convertible(conv: Any) -> bool:
    """`conv` is a plain nn.Conv1d this module reproduces: unstrided, undilated, numeric zero padding."""
    return (type(conv) is nn.Conv1d and conv.stride == (1,) and conv.dilation == (1,)
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros")


class FftGroupedConv1d(nn.Module):
    """Drop-in for an unstrided, undilated, grouped nn.Conv1d (B, C_in, T) -> (B, C_out, T + 2 p - k + 1)."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        if not fft_convertible(conv):
            raise ValueError("FftGroupedConv1d takes unstrided, undilated convolutions with numeric zero padding")
        self.kernel, self.pad, self.groups = conv.kernel_size[0], conv.padding[0], conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # Cross-correlation is convolution with the flipped kernel: keep it flipped, (C_out, C_in / groups, k).
        self.weight_flipped = conv.weight.detach().float().flip(-1).contiguous()
        self.bias = None if conv.bias is None else conv.bias.detach().float().contiguous()
        # (FFT length, (groups, freqs, out, in) complex64): windows have one length; another one replaces it
        self._spectrum: tuple[int, torch.Tensor] | None = None

    def spectrum(self, n: int) -> torch.Tensor:
        if self._spectrum is None or self._spectrum[0] != n:
            G, per_out, per_in = self.groups, self.out_channels // self.groups, self.in_channels // self.groups
            w_f = torch.fft.rfft(self.weight_flipped, n=n)  # (C_out, per_in, freqs)
            self._spectrum = (n, w_f.view(G, per_out, per_in, -1).permute(0, 3, 1, 2).contiguous())
        return self._spectrum[1]

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        B, _, T = x_BCT.shape
        G, per_in = self.groups, self.in_channels // self.groups
        k, p = self.kernel, self.pad
        out_T = T + 2 * p - k + 1
        # Circular convolution of the padded input (T + 2p samples) with the kernel equals the linear one at
        # outputs k-1 .. k-1+out_T-1 as long as n >= T + 2p (nothing wraps into them); pocketfft takes any n.
        n = T + 2 * p
        x_f = torch.fft.rfft(F.pad(x_BCT.float(), (p, p)), n=n)  # (B, C, freqs)
        freqs = x_f.shape[-1]
        x_GFIB = x_f.view(B, G, per_in, freqs).permute(1, 3, 2, 0)
        y_GFOB = torch.matmul(self.spectrum(n), x_GFIB)
        y_BCF = y_GFOB.permute(3, 0, 2, 1).reshape(B, self.out_channels, freqs)
        y_BCT = torch.fft.irfft(y_BCF, n=n)[..., k - 1 : k - 1 + out_T]
        if self.bias is not None:
            y_BCT = y_BCT + self.bias[:, None]
        return y_BCT.to(x_BCT.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, padding={self.pad}, "
                f"groups={self.groups}, via FFT")


def use_fft_positional_conv(encoder: nn.Module) -> int:
    """Swap a transformers wav2vec2 / HuBERT encoder's positional convolution (after freeze_weight_norm) for the
    FFT one. Returns 1, or 0 where the encoder has none of the expected form."""
    pos = getattr(encoder, "pos_conv_embed", None)
    conv = getattr(pos, "conv", None)
    if not fft_convertible(conv):
        return 0
    pos.conv = FftGroupedConv1d(conv)
    return 1
