"""Fast-mode int8 linear layers for x86 CPUs: oneDNN u8 x s8 GEMMs with VNNI, fbgemm's dynamic int8 without.

On this project's 2-core AVX-512 machine an int8 GEMM runs at ~650-800 GOP/s against ~400 GFLOP/s in bf16, so the
linear layers of the audio encoder (121 of its 146 GFLOP per window) and of the AR transformer take about half
the time. Weights: symmetric int8 per output channel, reordered once for oneDNN. Activations: quantised on every
call (dynamic), symmetric u8 with zero point 128 so oneDNN can run its VNNI kernel (signed-int8 activations take a
reference path, far slower). Scale granularity:
- per tensor, for inputs that come straight out of a layer norm (every token has about the same range): oneDNN
  applies scale, bias and the output dtype in the GEMM itself;
- per token (row) otherwise (attention outputs, GELU outputs, loud vs silent frames): the GEMM runs with unit
  scale and no bias, and the row scales and the bias are applied afterwards.
Query/key/value projections read the same input: it is quantised once (`SharedInput`).

CPUs without VNNI (AVX2 only: AMD Zen 2/3, Intel before Ice Lake) use `FbgemmInt8Linear`: torch's dynamic quantised
linear (fbgemm), which quantises the activations per tensor with their own min and max inside the op. Its AVX2
kernel adds pairs of u8 x s8 products in 16 bits (vpmaddubsw), which saturates for large activations at both ends
of the range, so activations get 7 bits there (`reduce_range`): exact again, at twice the rounding step. Which
kind a model gets is the plan's choice (fast/plan.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .filepages import done_with
from .fused import AR_QKV, ENCODER_QKV, fuse_siblings
from .packed import is_exact_gelu

ZERO_POINT = 128  # u8 activations hold round(x / scale) + 128
QMAX = 127.0
ROWS_HINT = 200  # typical rows per call (one window's tokens); only tunes the packed layout


def onednn_int8_available() -> bool:
    """oneDNN's quantised linear ops exist in this torch (whether they are fast here is the plan's business)."""
    ops = getattr(torch.ops, "onednn", None)
    return bool(ops is not None and hasattr(ops, "qlinear_prepack") and hasattr(ops, "qlinear_pointwise")
                and torch.backends.mkldnn.is_available())


def quantize_weight(weight_NK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 weight (N, K), fp32 scale (N,))."""
    w = weight_NK.detach().float()
    scale_N = w.abs().amax(dim=1).clamp_min(1e-12) / QMAX
    return torch.round(w / scale_N[:, None]).clamp_(-QMAX, QMAX).to(torch.int8), scale_N


def quantize_input(x_MK: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(u8 (M, K), fp32 scale: (M, 1) per token or () per tensor).

    Few passes over memory (they cost a noticeable share of an int8 GEMM): x * (1 / scale) + 128.5 truncated to u8 is
    round-half-up of x / scale + 128 (values lie in [1.5, 255.5], so truncation is floor)."""
    xf = x_MK.to(torch.float32, copy=True)  # a private copy: written in place below
    amax = xf.abs().amax(dim=1, keepdim=True) if per_token else xf.abs().amax()
    scale = amax.clamp_min_(1e-12).div_(QMAX)
    return xf.mul_(scale.reciprocal()).add_(ZERO_POINT + 0.5).to(torch.uint8), scale


class SharedInput:
    """Remembers the last quantised input so sibling projections of the same tensor quantise it once.

    Holding a reference keeps the tensor's identity unique; the version counter catches in-place changes
    (inference tensors have none, and nothing writes into a projection's input between the sibling calls)."""

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.version = -1
        self.quantized: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
        version = -1 if x.is_inference() else x._version
        if self.source is x and self.version == version and self.quantized is not None:
            return self.quantized
        self.quantized = quantize_input(x.reshape(-1, x.shape[-1]), per_token)
        self.source, self.version = x, version
        return self.quantized


class Int8Linear(nn.Module):
    """Inference-only replacement of nn.Linear; the output keeps the input's dtype."""

    def __init__(self, linear: nn.Linear, per_token: bool, shared: SharedInput | None = None,
                 gelu: bool = False):
        super().__init__()
        if gelu and per_token:
            raise ValueError("a fused GELU needs per-tensor activations (row scales are applied after the GEMM)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.per_token = per_token
        self.post_op = "gelu" if gelu else "none"  # oneDNN applies exact (erf) GELU to the GEMM's output
        self.shared = shared
        weight_q, scale = quantize_weight(linear.weight)
        self.packed = torch.ops.onednn.qlinear_prepack(weight_q, [ROWS_HINT, self.in_features])
        self.w_scale = scale
        self.w_zero = torch.zeros(self.out_features, dtype=torch.int64)
        self.bias = None if linear.bias is None else linear.bias.detach().float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if self.shared is not None:
            q, scale = self.shared.get(x, self.per_token)
        else:
            q, scale = quantize_input(x.reshape(-1, self.in_features), self.per_token)
        if self.per_token:
            y = torch.ops.onednn.qlinear_pointwise(q, 1.0, ZERO_POINT, self.packed, self.w_scale, self.w_zero, None,
                                                   1.0, 0, torch.float32, "none", [], "")
            y = y.mul_(scale) if self.bias is None else torch.addcmul(self.bias, y, scale)
            y = y.to(x.dtype)
        else:
            y = torch.ops.onednn.qlinear_pointwise(q, float(scale), ZERO_POINT, self.packed, self.w_scale,
                                                   self.w_zero, self.bias, 1.0, 0, x.dtype, self.post_op, [],
                                                   "none")
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        grain = "per-token" if self.per_token else "per-tensor"
        gelu = ", fused GELU" if self.post_op == "gelu" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({grain} activations){gelu}"


class FbgemmInt8Linear(nn.Module):
    """Inference-only replacement of nn.Linear through fbgemm's dynamic int8 GEMM; the output keeps the input's
    dtype. Weights: symmetric int8 per output channel, packed once. Activations: quantised per tensor inside the op
    (asymmetric, from their min and max), with 7 bits when `reduce_range` (CPUs without VNNI, see the module
    docstring).

    fbgemm has no per-token activation scales, so `per_token` makes them: every row is divided by its largest
    magnitude before the GEMM (all rows then span about -1..1 and share the tensor's scale well) and the GEMM's
    output rows are multiplied back, then the bias added: W (x / s) s + b = W x + b. Without it the AR blocks'
    AdaLN-modulated tokens (rows of very different ranges) tripled the motion drift on the full-size model."""

    def __init__(self, linear: nn.Linear, reduce_range: bool = True, per_token: bool = False):
        super().__init__()
        self._pack(linear.weight, linear.bias, reduce_range, per_token)

    @classmethod
    def from_weight(cls, weight_NK: torch.Tensor, bias_N: torch.Tensor | None, reduce_range: bool = True,
                    per_token: bool = False) -> FbgemmInt8Linear:
        """From a plain (out, in) weight, e.g. sibling projections' weights stacked (fused.py)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._pack(weight_NK, bias_N, reduce_range, per_token)
        return self

    def _pack(self, weight_NK: torch.Tensor, bias_N: torch.Tensor | None, reduce_range: bool,
              per_token: bool) -> None:
        self.out_features, self.in_features = weight_NK.shape
        self.reduce_range, self.per_token = reduce_range, per_token
        weight_q, scale = quantize_weight(weight_NK)
        zero = torch.zeros(self.out_features, dtype=torch.int64)
        with warnings.catch_warnings():  # torch marks quantised tensor creation deprecated; the kernel is current
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(weight_q, scale.double(), zero, 0)
        bias = None if bias_N is None else bias_N.detach().float().contiguous()
        self.bias = bias if per_token else None  # per token: added after the rows are scaled back
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if per_token else bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.to(torch.float32, memory_format=torch.contiguous_format)
        if not self.per_token:
            y = torch.ops.quantized.linear_dynamic(x2, self.packed, self.reduce_range)
        else:
            scale_M1 = x2.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12)
            y = torch.ops.quantized.linear_dynamic(x2 / scale_M1, self.packed, self.reduce_range)
            y = y.mul_(scale_M1) if self.bias is None else torch.addcmul(self.bias, y, scale_M1)
        return y.to(x.dtype).view(*lead, self.out_features)

    def extra_repr(self) -> str:
        bits = 7 if self.reduce_range else 8
        grain = "per-token" if self.per_token else "per-tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 (fbgemm, {bits}-bit " \
               f"{grain} activations)"


def worst_case_error(reduce_range: bool) -> float:
    """fbgemm's relative error on the input that stresses 16-bit pair sums most: activations at the top of the u8
    range (255) against weights of +-127 everywhere. Without VNNI, 8-bit activations saturate here; 7-bit ones
    (`reduce_range`) must come out exact (tests and scripts/bench_kernels.py check both)."""
    layer = nn.Linear(256, 8, bias=False).requires_grad_(False)
    with torch.no_grad():
        layer.weight.fill_(127.0)
        layer.weight[1::2] *= -1
    x = torch.full((4, 256), 255.0)
    want = x.double() @ layer.weight.double().T
    got = FbgemmInt8Linear(layer, reduce_range=reduce_range)(x)
    return float((got.double() - want).abs().max() / want.abs().max())


KINDS = ("onednn", "fbgemm")


def _swap(parent: nn.Module, name: str, per_token: bool, shared: SharedInput | None = None,
          gelu: bool = False, kind: str = "onednn") -> int:
    child = getattr(parent, name, None)
    if type(child) is not nn.Linear:
        return 0
    if kind == "onednn":
        setattr(parent, name, Int8Linear(child, per_token, shared, gelu))
    elif kind == "fbgemm":
        setattr(parent, name, FbgemmInt8Linear(child, per_token=per_token))
    else:
        raise ValueError(f"unknown int8 kind {kind!r}; use one of {KINDS}")
    done_with(child.weight)
    return 1


def quantize_wav2vec_layer(layer: nn.Module, kind: str = "onednn", fuse_qkv: bool = False) -> int:
    """int8 for one transformer layer of a transformers wav2vec2/HuBERT encoder. Returns how many were swapped.
    `fuse_qkv` (fbgemm only): q/k/v as one GEMM (fused.py)."""
    attn, ff = layer.attention, layer.feed_forward
    shared = SharedInput() if kind == "onednn" else None  # q/k/v read the same layer-normed tokens
    count = 0
    if fuse_qkv and kind == "fbgemm":
        count = fuse_siblings(attn, ENCODER_QKV, partial(FbgemmInt8Linear.from_weight, per_token=False))
    count += sum(_swap(attn, name, per_token=False, shared=shared, kind=kind) for name in ENCODER_QKV)
    count += _swap(attn, "out_proj", per_token=True, kind=kind)
    fuse = kind == "onednn" and type(ff.intermediate_dense) is nn.Linear and is_exact_gelu(ff.intermediate_act_fn)
    count += _swap(ff, "intermediate_dense", per_token=False, gelu=fuse, kind=kind)
    if fuse:  # the GEMM applies it now (one pass less over the widest activation)
        ff.intermediate_act_fn = nn.Identity()
    return count + _swap(ff, "output_dense", per_token=True, kind=kind)


def quantize_ar_block(blk: nn.Module, kind: str = "onednn", fuse_qkv: bool = False) -> int:
    """int8 for one AR block. Every input here is modulated per token (AdaLN), so oneDNN's activations are
    quantised per token. (The logits head is not a block and stays in the float dtype: it decides the bits.)
    `fuse_qkv` (fbgemm only): queries, keys and values as one GEMM (fused.py)."""
    shared = SharedInput() if kind == "onednn" else None  # queries, keys and values read the same tokens
    count = 0
    if fuse_qkv and kind == "fbgemm":
        count = fuse_siblings(blk.attn, AR_QKV, partial(FbgemmInt8Linear.from_weight, per_token=True))
    count += sum(_swap(blk.attn, name, per_token=True, shared=shared, kind=kind) for name in AR_QKV)
    count += _swap(blk.attn, "proj", per_token=True, kind=kind)
    count += _swap(blk.ffn, "0", per_token=True, kind=kind) + _swap(blk.ffn, "2", per_token=True, kind=kind)
    return count + _swap(blk.ada_lin, "1", per_token=True, kind=kind)


Unit = Callable[[nn.Module, str], int]


def in_place(quantize_one: Callable[[nn.Module], int]) -> Unit:
    return lambda model, name: quantize_one(model.get_submodule(name))


def int8_units(model: nn.Module, kind: str = "onednn", time_major: bool = True,
               fuse_qkv: bool = False) -> dict[str, Unit]:
    """Submodule name -> its converter(model, name) for fast mode with int8 of `kind`: the encoder's transformer
    layers and the AR blocks to int8, and (`time_major`) the feature extractor to time-major GEMMs (featext.py).
    Each unit's parameters are contiguous in named_parameters() order, so a model can be converted while it is
    being filled."""
    from .featext import swap_feature_extractor

    units: dict[str, Unit] = {"audio_encoder.feature_extractor": swap_feature_extractor} if time_major else {}
    for i in range(len(model.audio_encoder.encoder.layers)):
        units[f"audio_encoder.encoder.layers.{i}"] = in_place(partial(quantize_wav2vec_layer, kind=kind,
                                                                      fuse_qkv=fuse_qkv))
    for i in range(len(model.attn_blocks)):
        units[f"attn_blocks.{i}"] = in_place(partial(quantize_ar_block, kind=kind, fuse_qkv=fuse_qkv))
    return units


def quantize_model(model: nn.Module, kind: str = "onednn", time_major: bool = True,
                   fuse_qkv: bool = False) -> int:
    """Convert every unit in place. Returns how many modules were replaced."""
    return sum(fn(model, name) for name, fn in int8_units(model, kind, time_major, fuse_qkv).items())
