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
from .packed import PackedLinear, is_exact_gelu


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


class FoldedFirstLayer(nn.Module):
    """Fast mode's first layer (one input channel: the waveform): its LayerNorm folded into the GEMM.

    With a k-sample window x_t and x~_t = [x_t, 1], the conv's output is y_t = W~ x~_t (W~ = [weight | bias],
    (C, k + 1)). Its channel mean is mean(W~) x~_t, so y_t - mean_t = Wc x~_t with Wc = W~ - mean(W~) (rows
    centred), and its variance is the quadratic form x~_t^T (Wc^T Wc / C) x~_t: LayerNorm's statistics come
    from the k + 1 window values instead of a pass over the (T, 512) output. The normalised output is then
    (gamma * Wc) (x~_t / std_t) + beta: one GEMM of the scaled windows, with the GELU as oneDNN's post-op (the
    erf GELU, the same values as F.gelu). Two passes over the widest activation (12,799 x 512 per window) less;
    the values equal the unfolded layer's up to fp32 rounding, so exact mode keeps TimeMajorConvLayer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        conv: nn.Conv1d = layer.conv
        self.kernel, self.stride, self.out_ch = conv.kernel_size[0], conv.stride[0], conv.out_channels
        bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(self.out_ch)
        w_CK = torch.cat([conv.weight.detach()[:, 0, :], bias[:, None]], dim=1).double()  # (C, k + 1)
        centred_CK = w_CK - w_CK.mean(dim=0, keepdim=True)
        self.gram_KK = (centred_CK.T @ centred_CK / self.out_ch).float()
        norm: nn.LayerNorm = layer.layer_norm
        self.eps = float(norm.eps)
        gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones(self.out_ch).double()
        beta = norm.bias.detach().float() if norm.bias is not None else None
        self.gemm = PackedLinear.from_weight((gamma[:, None] * centred_CK).float(), beta)
        self.act = layer.activation
        if is_exact_gelu(self.act):
            self.gemm.post_op, self.act = "gelu", nn.Identity()

    def forward(self, x_BT1: torch.Tensor) -> torch.Tensor:
        B, T = x_BT1.shape[:2]
        audio_BT = x_BT1.reshape(B, T).float().contiguous()
        out_T = (T - self.kernel) // self.stride + 1
        windows_BTK = audio_BT.new_ones(B, out_T, self.kernel + 1)
        windows_BTK[..., : self.kernel] = audio_BT.as_strided((B, out_T, self.kernel), (T, self.stride, 1))
        var_BT1 = ((windows_BTK @ self.gram_KK) * windows_BTK).sum(dim=-1, keepdim=True)
        scaled_BTK = windows_BTK.mul_(var_BT1.add_(self.eps).rsqrt_())
        return self.act(self.gemm(scaled_BTK)).to(x_BT1.dtype)


def supports_fold(layer: nn.Module) -> bool:
    conv = layer.conv
    return conv.in_channels == 1 and conv.groups == 1 and conv.weight.dtype == torch.float32


class TimeMajorFeatureExtractor(nn.Module):
    """Drop-in for transformers' layer-norm feature encoder: (B, samples) -> (B, channels, frames).
    `fold_first`: the first layer's LayerNorm folded into its GEMM (FoldedFirstLayer; fast mode)."""

    def __init__(self, feature_extractor: nn.Module, fold_first: bool = False):
        super().__init__()
        layers = list(feature_extractor.conv_layers)
        first: nn.Module = (FoldedFirstLayer(layers[0]) if fold_first and supports_fold(layers[0])
                            else TimeMajorConvLayer(layers[0]))
        self.layers = nn.ModuleList([first, *(TimeMajorConvLayer(layer) for layer in layers[1:])])
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


def swap_feature_extractor(model: nn.Module, name: str, fold_first: bool = False) -> int:
    """Replace the feature extractor at `name` by the time-major one where its layout allows (`fold_first`: see
    TimeMajorFeatureExtractor). Returns 1 or 0."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    if not supports_time_major(old):
        return 0
    setattr(parent, attr, TimeMajorFeatureExtractor(old, fold_first))
    for layer in old.conv_layers:  # their (out, in, k) weights were copied into GEMM layout
        done_with(layer.conv.weight)
    return 1
