"""Audio encoders (transformers' wav2vec2 / HuBERT, built offline from a config dict) and the windowed feature call."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import FlameTalkError

NORM_EPS = 1e-6  # added to the per-window standard deviation (the release's value)


def build_audio_encoder(kind: str, config_kwargs: dict[str, Any]) -> nn.Module:
    """Build the encoder's architecture from keyword arguments of its transformers config. Nothing is downloaded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "wav2vec":
            from transformers import Wav2Vec2Config, Wav2Vec2Model

            return Wav2Vec2Model(Wav2Vec2Config(**config_kwargs))
        if kind == "hubert":
            from transformers import HubertConfig, HubertModel

            return HubertModel(HubertConfig(**config_kwargs))
    raise FlameTalkError(f"unknown audio encoder {kind!r}; use 'wav2vec' or 'hubert'")


def normalize_windows(audio_BN: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (unbiased) std per window, padding included, as the release does before its encoder."""
    mean = audio_BN.mean(dim=-1, keepdim=True)
    std = audio_BN.std(dim=-1, keepdim=True)
    return (audio_BN - mean) / (std + NORM_EPS)


def encode_audio_windows(encoder: nn.Module, audio_BN: torch.Tensor) -> torch.Tensor:
    """(B windows, N samples of 16 kHz) -> features (B, L, hidden) from the encoder's last layer.

    Windows are independent here, so callers may batch as many as memory allows.
    """
    x = normalize_windows(audio_BN.float()).to(input_dtype(encoder.feature_extractor))
    hidden_BLC = encoder.feature_extractor(x).transpose(1, 2)
    hidden_BLC = encoder.feature_projection(hidden_BLC)
    if isinstance(hidden_BLC, tuple):  # wav2vec2 returns (projected, normed); HuBERT returns the tensor
        hidden_BLC = hidden_BLC[0]
    return encoder.encoder(hidden_BLC, attention_mask=None)[0]


def input_dtype(feature_extractor: nn.Module) -> torch.dtype:
    """The dtype the feature extractor takes (its weights'; fast mode's replacement records it)."""
    dtype = getattr(feature_extractor, "input_dtype", None)
    return dtype if dtype is not None else feature_extractor.conv_layers[0].conv.weight.dtype


def freeze_weight_norm(encoder: nn.Module) -> None:
    """Replace weight-norm parametrizations (the positional convolution) by the weight they compute.

    The parametrization recomputes g * v / |v| on every call: once is enough at inference. The stored weight is the
    same tensor the parametrization would produce, so results do not change.
    """
    from torch.nn.utils import parametrize

    for module in encoder.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
