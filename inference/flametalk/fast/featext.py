"""Fast mode's wav2vec2 feature extractor: the 7 strided convolutions as time-major GEMMs.

transformers runs each layer as Conv1d (channels-first) -> transpose -> LayerNorm -> transpose -> GELU: two full
copies of the widest activations per layer. Time-major, a convolution with kernel k and stride s over (T, C) is a
GEMM over overlapping row windows: window t is the contiguous block of k * C values starting at row s * t, so the
im2col matrix is a strided view of the input and one copy makes it a GEMM operand; the LayerNorm then runs over
the contiguous last dimension. Same products as the convolution (bf16 in fast mode), in less time (BENCHMARKS.md).
int8 was measured too (layers 2-6) and left out: per-tensor scales over thousands of frames
compound to 7.6 % feature error through the stack. Output: (B, C, T) like transformers' module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .filepages import done_with
from .packed import PackedLinear


class TimeMajorConvLayer(nn.Module):
    """One feature-extractor layer: strided conv as a GEMM, LayerNorm over channels, activation; (B, T, C)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        conv: nn.Conv1d = layer.conv
        self.kernel, self.stride, self.out_ch = conv.kernel_size[0], conv.stride[0], conv.out_channels
        # (out, in, k) -> (out, k * in): a time-major window holds k rows of `in` channels
        weight_OK = conv.weight.detach().permute(0, 2, 1).reshape(self.out_ch, -1)
        self.gemm = PackedLinear.from_weight(weight_OK, None if conv.bias is None else conv.bias.detach())
        self.norm = layer.layer_norm
        self.act = layer.activation

    def windows(self, x_BTC: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T', k * C) overlapping row windows (a strided view, then one copy)."""
        B, T, C = x_BTC.shape
        x_BTC = x_BTC.contiguous()
        out_T = (T - self.kernel) // self.stride + 1
        return x_BTC.as_strided((B, out_T, self.kernel * C), (T * C, self.stride * C, 1)).contiguous()

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        y_BTC = self.gemm(self.windows(x_BTC))
        return self.act(F.layer_norm(y_BTC, (self.out_ch,), self.norm.weight, self.norm.bias, self.norm.eps))


class TimeMajorFeatureExtractor(nn.Module):
    """Drop-in for transformers' layer-norm feature encoder: (B, samples) -> (B, channels, frames)."""

    def __init__(self, feature_extractor: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(TimeMajorConvLayer(layer) for layer in feature_extractor.conv_layers)
        self.input_dtype = feature_extractor.conv_layers[0].conv.weight.dtype

    def forward(self, audio_BN: torch.Tensor) -> torch.Tensor:
        x_BTC = audio_BN[:, :, None]
        for layer in self.layers:
            x_BTC = layer(x_BTC)
        return x_BTC.transpose(1, 2)


def supports_time_major(feature_extractor: nn.Module) -> bool:
    """Every layer is an unpadded, ungrouped conv -> channel LayerNorm -> activation (wav2vec2 "layer" norm)."""
    layers = getattr(feature_extractor, "conv_layers", None)
    if not layers:
        return False
    for layer in layers:
        conv, norm = getattr(layer, "conv", None), getattr(layer, "layer_norm", None)
        if not isinstance(conv, nn.Conv1d) or not isinstance(norm, nn.LayerNorm):
            return False
        if conv.padding != (0,) or conv.groups != 1 or conv.dilation != (1,):
            return False
    return True


def swap_feature_extractor(model: nn.Module, name: str) -> int:
    """Replace the feature extractor at `name` by the time-major one where its layout allows. Returns 1 or 0."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    if not supports_time_major(old):
        return 0
    setattr(parent, attr, TimeMajorFeatureExtractor(old))
    for layer in old.conv_layers:  # their (out, in, k) weights were copied into GEMM layout
        done_with(layer.conv.weight)
    return 1
