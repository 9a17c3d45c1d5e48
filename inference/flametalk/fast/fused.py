"""Sibling projections of one input (query, key, value) as one GEMM over their stacked weights.

One wide GEMM runs faster than three narrow ones here (BENCHMARKS.md), most of all for the AR's short scales,
and an int8 GEMM then quantises its input once instead of three times. Every row of the stacked weight is the
separate layer's row (int8 keeps a scale per row, and the input is quantised from the same values), so each output
equals the separate layer's bit for bit (tested, fp32 packed and fbgemm int8).

The callers (transformers' attention, the AR blocks) still call three modules. The first call for an input
computes all outputs; the others take their slice. The input is recognised by identity, as int8.SharedInput
does: nothing writes into a projection's input between the sibling calls. Once every member has been served the
outputs are let go, and a member asked twice for the same input (or alone, as the AR's context keys and values
are) computes the GEMM again. Like every prepared model here, one generation at a time per model (the worker runs
one job at a time, the WebSocket server holds a compute lock).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .filepages import done_with

GemmFactory = Callable[[torch.Tensor, "torch.Tensor | None"], nn.Module]  # (weight (N, K), bias (N,)) -> layer


class FusedProjections(nn.Module):
    """The stacked GEMM of a group of sibling projections and the outputs of its last input."""

    def __init__(self, linears: list[nn.Linear], make_gemm: GemmFactory):
        super().__init__()
        self.sizes = [lin.out_features for lin in linears]
        weight_NK = torch.cat([lin.weight.detach() for lin in linears])
        bias_N = None
        if any(lin.bias is not None for lin in linears):  # a member without bias adds zeros
            bias_N = torch.cat([lin.bias.detach() if lin.bias is not None
                                else lin.weight.new_zeros(lin.out_features) for lin in linears])
        self.gemm = make_gemm(weight_NK, bias_N)
        self.source: torch.Tensor | None = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.pending: set[int] = set()

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self.source is not x or index not in self.pending:
            self.outputs = self.gemm(x).split(self.sizes, dim=-1)
            self.source, self.pending = x, set(range(len(self.sizes)))
        self.pending.discard(index)
        out = self.outputs[index]
        if not self.pending:
            self.source, self.outputs = None, ()
        return out


class FusedMember(nn.Module):
    """One projection of a group: a drop-in for its nn.Linear (same call, same output values, a strided view)."""

    def __init__(self, group: FusedProjections, index: int, in_features: int):
        super().__init__()
        self.group_ref = (group,)  # every member reaches the group; the first also holds it as its submodule
        if index == 0:
            self.group = group
        self.index = index
        self.in_features, self.out_features = in_features, group.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group_ref[0].output(x, self.index)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, member {self.index} of one GEMM"


def fuse_siblings(parent: nn.Module, names: tuple[str, ...], make_gemm: GemmFactory) -> int:
    """Replace the nn.Linear children `names` of `parent` (same input width) by members of one stacked GEMM made
    by `make_gemm`. Returns how many were replaced (0 if any of them is not a plain nn.Linear)."""
    children = [getattr(parent, name, None) for name in names]
    linears = [c for c in children if type(c) is nn.Linear]
    if len(linears) != len(names) or len({lin.in_features for lin in linears}) != 1:
        return 0
    group = FusedProjections(linears, make_gemm)
    for i, (name, lin) in enumerate(zip(names, linears)):
        setattr(parent, name, FusedMember(group, i, lin.in_features))
        done_with(lin.weight)
    return len(names)


ENCODER_QKV = ("q_proj", "k_proj", "v_proj")  # transformers' wav2vec2 / HuBERT self-attention
AR_QKV = ("query", "key", "value")  # model/artalk.py ContextAttention


def fuse_qkv(model: nn.Module, make_gemm: GemmFactory) -> int:
    """Fuse the query/key/value projections of the audio encoder's layers and of the AR blocks that are still
    plain nn.Linear. Returns how many projections were replaced."""
    count = sum(fuse_siblings(layer.attention, ENCODER_QKV, make_gemm)
                for layer in model.audio_encoder.encoder.layers)
    return count + sum(fuse_siblings(blk.attn, AR_QKV, make_gemm) for blk in model.attn_blocks)
