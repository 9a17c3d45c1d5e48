"""CPU inference speed-up: linear layers with weights pre-packed for oneDNN.

torch's CPU `F.linear` calls a BLAS GEMM that re-reads the weight in its plain layout on every call; oneDNN can
reorder the weight once into its blocked layout and then runs the same fp32 (or bf16) GEMM at ~190-210 GFLOP/s on
this project's 2-core AVX-512 machine instead of ~100-150. The products are the same fp32 arithmetic in another
summation order (differences ~1e-7 relative; the parity test still sees every bit equal).

Only used where oneDNN is available and the model sits on the CPU; other devices keep nn.Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .filepages import done_with

ROWS_HINT = 200  # typical rows per call (tokens of a window); only tunes the packed layout


def onednn_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(torch.backends.mkldnn.is_available() and ops is not None
                and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """Inference-only replacement of nn.Linear (same math; weight stored in oneDNN's blocked layout)."""

    def __init__(self, linear: nn.Linear, rows_hint: int = ROWS_HINT):
        super().__init__()
        self._pack(linear.weight.detach(), None if linear.bias is None else linear.bias.detach(), rows_hint)

    @classmethod
    def from_weight(cls, weight_NK: torch.Tensor, bias_N: torch.Tensor | None,
                    rows_hint: int = ROWS_HINT) -> PackedLinear:
        """From a plain (out, in) weight, e.g. a convolution's reshaped into a GEMM."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._pack(weight_NK, bias_N, rows_hint)
        return self

    def _pack(self, weight_NK: torch.Tensor, bias_N: torch.Tensor | None, rows_hint: int) -> None:
        self.out_features, self.in_features = weight_NK.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight_NK.contiguous(), rows_hint)
        self.bias = None if bias_N is None else bias_N.contiguous()
        self.post_op = "none"  # "gelu": oneDNN applies the exact (erf) GELU to the GEMM's output tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        out = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, self.post_op, [],
                                                 "none" if self.post_op == "gelu" else "")
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        gelu = ", fused GELU" if self.post_op == "gelu" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN{gelu}"


def pack_linears(module: nn.Module) -> int:
    """Replace every nn.Linear below `module` by a PackedLinear, in place. Returns how many were packed.

    torch's own transformer layers read their weights directly (fast path), so they keep nn.Linear.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.MultiheadAttention, nn.TransformerEncoderLayer)):
            continue
        if type(child) is nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype in (
                torch.float32, torch.bfloat16):
            setattr(module, name, PackedLinear(child))
            done_with(child.weight)  # a checkpoint's file pages of the unpacked weight are not needed any more
            count += 1
        else:
            count += pack_linears(child)
    return count


def is_exact_gelu(fn: nn.Module) -> bool:
    """`fn` computes the erf GELU (the one oneDNN fuses bit for bit: same values as F.gelu)."""
    probe = torch.linspace(-6.0, 6.0, 241)
    return torch.equal(fn(probe), F.gelu(probe))


def fuse_encoder_gelu(encoder_layers: nn.ModuleList) -> int:
    """Let each wav2vec2 feed-forward's first (packed) GEMM apply the GELU itself: one pass less over the
    widest activation (199 x 4096 per window and layer), identical values. Returns how many were fused."""
    count = 0
    for layer in encoder_layers:
        ff = layer.feed_forward
        if isinstance(ff.intermediate_dense, PackedLinear) and is_exact_gelu(ff.intermediate_act_fn):
            ff.intermediate_dense.post_op = "gelu"
            ff.intermediate_act_fn = nn.Identity()
            count += 1
    return count


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Apply a (possibly packed) linear layer."""
    if isinstance(layer, PackedLinear):
        return layer(x)
    return F.linear(x, layer.weight, layer.bias)
