"""Fast mode's FFT positional convolution (fast/posconv.py): the grouped convolution's values up to fp32 rounding,
for any length and batch, with and without bias; fast CPU plans use it, exact mode never does."""

from __future__ import annotations

import pytest
import torch
from flametalk.decode.pipeline import prepare_for_inference
from flametalk.fast import plan as plans
from flametalk.fast.posconv import FftGroupedConv1d, use_fft_positional_conv
from flametalk.model.audio_encoder import encode_audio_windows
from flametalk.model.config import ARTalkConfig
from flametalk.model.random_init import random_init_model
from torch import nn


@pytest.mark.parametrize("channels, groups, kernel, bias", [(64, 4, 16, True), (48, 1, 7, False), (32, 32, 5, True)])
@pytest.mark.parametrize("batch, frames", [(1, 199), (2, 31), (3, 1)])
def test_equals_the_grouped_convolution(channels, groups, kernel, bias, batch, frames):
    torch.manual_seed(channels + kernel + frames)
    conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=groups, bias=bias).double()
    x = torch.randn(batch, channels, frames, dtype=torch.float64)
    want = conv(x)
    fft = FftGroupedConv1d(conv.float())
    got = fft(x.float())
    assert got.shape == want.shape and got.dtype == torch.float32
    # fp32 rounding only: a wrong flip, offset, padding or grouping is off by the output's own size
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6 * want.abs().max().item())


def two_layer_config() -> ARTalkConfig:
    """The release's architecture with a 2-layer audio encoder (the positional convolution is the release's)."""
    return ARTalkConfig(audio_encoder_config={**ARTalkConfig().audio_encoder_config, "num_hidden_layers": 2})


def test_fast_cpu_plans_run_it_and_exact_mode_never_does():
    fast = prepare_for_inference(random_init_model(two_layer_config(), "fast",
                                                   plan=plans.cpu_plan("generic", "fast")))
    exact = prepare_for_inference(random_init_model(two_layer_config(), "exact"))
    assert isinstance(fast.audio_encoder.encoder.pos_conv_embed.conv, FftGroupedConv1d)
    assert type(exact.audio_encoder.encoder.pos_conv_embed.conv) is nn.Conv1d
    assert plans.cpu_plan("avx2", "fast").pos_conv == "fft" and plans.cpu_plan("avx2", "exact").pos_conv == "conv"
    assert plans.gpu_plan("cuda", "fast").pos_conv == "conv"


def test_the_encoder_s_features_stay_those_of_torch_s_convolution():
    """Same weights, one 4-s window: the encoder with the FFT convolution against torch's."""
    torch.manual_seed(0)
    model = prepare_for_inference(random_init_model(two_layer_config(), "exact"))
    audio = 0.1 * torch.randn(1, 64_000)
    with torch.inference_mode():
        want = encode_audio_windows(model.audio_encoder, audio)
        assert use_fft_positional_conv(model.audio_encoder.encoder) == 1
        assert use_fft_positional_conv(model.audio_encoder.encoder) == 0  # already swapped: nothing to do
        got = encode_audio_windows(model.audio_encoder, audio)
    assert got.shape == want.shape == (1, 199, 1024)
    rel = (got - want).abs().max() / want.abs().max()
    assert 0 < rel < 1e-5, rel  # not the same kernel (so not bit-equal), the same values to fp32 rounding


@pytest.mark.parametrize("conv", [nn.Conv1d(8, 8, 3, stride=2, padding=1), nn.Conv1d(8, 8, 3, dilation=2),
                                  nn.Conv1d(8, 8, 3, padding="same"), nn.Conv1d(8, 8, 3, padding=1,
                                                                              padding_mode="reflect")])
def test_convolutions_it_cannot_reproduce_are_refused_and_left_alone(conv):
    encoder = nn.Module()
    encoder.pos_conv_embed = nn.Module()
    encoder.pos_conv_embed.conv = conv
    assert use_fft_positional_conv(encoder) == 0 and encoder.pos_conv_embed.conv is conv
    with pytest.raises(ValueError, match="unstrided, undilated"):
        FftGroupedConv1d(conv)
