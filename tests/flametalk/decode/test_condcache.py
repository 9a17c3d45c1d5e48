"""Audio conditions kept between takes: another style for the same line skips the audio encoder, same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.common import AUDIO_DIR
from flametalk.decode import autoregressive as generate_module
from flametalk.decode.condcache import ConditionCache, audio_key
from flametalk.decode.pipeline import generate_motion
from flametalk.flame.contract import MOTION_DIM, STYLE_FRAMES
from flametalk.io.audio import load_audio
from flametalk.io.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def model(parity_checkpoint_dir):
    return load_checkpoint(parity_checkpoint_dir)


@pytest.fixture(scope="module")
def audio():
    return load_audio(AUDIO_DIR / "cn1.wav")  # 9.2 s: three 4-s windows


@pytest.fixture
def encoder_calls(monkeypatch):
    calls = []
    real = generate_module.encode_audio_windows

    def counting(encoder, audio_BN):
        calls.append(audio_BN.shape[0])
        return real(encoder, audio_BN)

    monkeypatch.setattr(generate_module, "encode_audio_windows", counting)
    return calls


def style_clip(seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((STYLE_FRAMES, MOTION_DIM))).astype(np.float32)


def test_another_take_of_the_same_audio_skips_the_encoder_and_gives_the_same_bits(model, audio, encoder_calls):
    style = style_clip(1)
    expected_plain = generate_motion(model, audio)
    expected_styled = generate_motion(model, audio, style)
    assert len(encoder_calls) == 6  # three windows, twice, without a cache
    encoder_calls.clear()

    cache = ConditionCache()
    first = generate_motion(model, audio, cache=cache)
    assert len(encoder_calls) == 3 and not cache.last_hit and len(cache) == 1
    retake = generate_motion(model, audio.copy(), style, cache=cache)  # same samples, another array: a hit
    assert len(encoder_calls) == 3 and cache.last_hit
    np.testing.assert_array_equal(first, expected_plain)
    np.testing.assert_array_equal(retake, expected_styled)
    assert not np.array_equal(retake, first)  # the style did change the motion: this is not a stale result

    edited = audio.copy()
    edited[1000] += 1e-3  # one sample re-recorded: a new clip
    generate_motion(model, edited, style, cache=cache)
    assert len(encoder_calls) == 6 and not cache.last_hit and len(cache) == 2


def test_a_clip_larger_than_the_budget_is_not_kept(model, audio, encoder_calls):
    cache = ConditionCache()
    generate_motion(model, audio, cache=cache)
    (conds,) = cache._clips.values()
    assert len(conds) == 3
    small = ConditionCache(budget_bytes=2 * conds[0].numel() * conds[0].element_size())
    motion = generate_motion(model, audio, cache=small)
    assert len(small) == 0 and small.bytes_used == 0
    np.testing.assert_array_equal(motion, generate_motion(model, audio))


def test_least_recently_used_clips_leave_first():
    one = (torch.zeros(10, dtype=torch.float32),)  # 40 bytes
    cache = ConditionCache(budget_bytes=100)
    cache.put("a", one)
    cache.put("b", one)
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", one)  # 120 bytes: the least recent ("b") goes
    assert cache.get("b") is None and not cache.last_hit
    assert cache.get("a") is not None and cache.get("c") is not None and cache.bytes_used == 80
    cache.put("huge", (torch.zeros(26, dtype=torch.float32),))  # 104 bytes > budget: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


def test_the_key_is_the_samples_not_the_array():
    x = torch.arange(16000, dtype=torch.float32)[None] / 16000
    assert audio_key(x) == audio_key(x.clone()) == audio_key(x.double())
    assert audio_key(x) != audio_key(x[:, :-1])
    y = x.clone()
    y[0, 5] = -y[0, 5]
    assert audio_key(x) != audio_key(y)
