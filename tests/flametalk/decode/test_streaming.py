"""Streaming generation (decode/streaming.py): any chunking of the audio gives one-shot generation's motion bit for
bit (exact mode and fast mode), the causal smoother gives postprocess_motion's result exactly after its delay, and
streamed resampling gives load_audio_array's 16 kHz samples."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fixtures import report
from flametalk.decode.autoregressive import Generator
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.decode.streaming import SMOOTH_DELAY_FRAMES, Streamer, StreamingSmoother
from flametalk.errors import FlameTalkError
from flametalk.fast.precision import apply_mode
from flametalk.io.audio import load_audio_array
from flametalk.io.checkpoint import load_checkpoint


def random_chunks(n: int, rng: np.random.Generator, low: int, high: int) -> list[slice]:
    """Consecutive slices covering [0, n) with sizes drawn from [low, high]."""
    out, pos = [], 0
    while pos < n:
        size = int(rng.integers(low, high + 1))
        out.append(slice(pos, min(n, pos + size)))
        pos += size
    return out


def stream(streamer: Streamer, audio: np.ndarray, chunks: list[slice]) -> tuple[np.ndarray, list[int]]:
    """Feed the chunks, then finish; the concatenated frames and how many each call returned."""
    outs = [streamer.feed(audio[c]) for c in chunks] + [streamer.finish()]
    assert all(o.dtype == np.float32 and o.ndim == 2 and o.shape[1] == 106 for o in outs)
    return np.concatenate(outs), [o.shape[0] for o in outs]


@pytest.fixture(scope="module")
def exact_model(parity_checkpoint_dir):
    return load_checkpoint(parity_checkpoint_dir)


@pytest.fixture(scope="module")
def speech(parity_vector) -> np.ndarray:
    return parity_vector["inputs"]["audio_16k"][0].float().numpy()  # 9.2 s: two whole windows and a part


@pytest.fixture(scope="module")
def style(parity_vector) -> np.ndarray:
    return parity_vector["inputs"]["style_motion"][0].float().numpy()


@pytest.fixture(scope="module")
def one_shot(exact_model, speech) -> np.ndarray:
    return generate_motion(exact_model, speech)


# ---- the model's motion ----


@pytest.mark.parametrize("seed, low, high", [(0, 160, 160), (1, 1, 48_000), (2, 30_000, 200_000)],
                         ids=["10ms", "random-up-to-3s", "seconds-to-all"])
def test_any_chunking_of_the_parity_audio_gives_the_one_shot_motion_bit_for_bit(exact_model, speech, one_shot,
                                                                               seed, low, high):
    chunks = random_chunks(speech.size, np.random.default_rng(seed), low, high)
    got, counts = stream(Streamer(exact_model, postprocess=False), speech, chunks)
    np.testing.assert_array_equal(got, one_shot)
    # raw frames come out a whole window (100 frames) at a time, as soon as its 64,000 samples are in
    fed = np.cumsum([c.stop - c.start for c in chunks])
    emitted = np.cumsum(counts[:-1])
    np.testing.assert_array_equal(emitted, fed // 64_000 * 100)


def test_streamed_smoothed_motion_is_flametalk_generate_s(exact_model, speech, one_shot):
    import flametalk

    chunks = random_chunks(speech.size, np.random.default_rng(5), 500, 70_000)
    got, counts = stream(Streamer(exact_model), speech, chunks)
    np.testing.assert_array_equal(got, postprocess_motion(one_shot))
    np.testing.assert_array_equal(got, flametalk.generate(exact_model, speech))
    fed = np.cumsum([c.stop - c.start for c in chunks])
    raw_done = fed // 64_000 * 100
    expected = np.where(raw_done >= 9, raw_done - SMOOTH_DELAY_FRAMES, 0)  # every window's last 4 frames wait
    np.testing.assert_array_equal(np.cumsum(counts[:-1]), expected)


def test_long_random_audio_with_a_style_in_random_chunks(exact_model, style):
    """30 s of noise (8 windows, 7 state hand-overs) with a style clip, chunks from 10 ms to 10 s."""
    audio = (0.1 * np.random.default_rng(11).standard_normal(30 * 16_000)).astype(np.float32)
    t0 = time.perf_counter()
    expected = generate_motion(exact_model, audio, style)
    t1 = time.perf_counter()
    got, _ = stream(Streamer(exact_model, style=style, postprocess=False), audio,
                    random_chunks(audio.size, np.random.default_rng(12), 160, 160_000))
    t2 = time.perf_counter()
    assert got.shape == (750, 106)
    np.testing.assert_array_equal(got, expected)
    report.record("streaming (reduced model, 2-core CPU)", "30 s of audio, exact mode",
                  f"one-shot {t1 - t0:.1f} s, streamed {t2 - t1:.1f} s")


def test_fast_mode_streams_one_shot_fast_mode_s_motion(parity_checkpoint_dir, speech):
    model = apply_mode(load_checkpoint(parity_checkpoint_dir), "fast")
    expected = generate_motion(model, speech)
    got, _ = stream(Streamer(model, postprocess=False), speech,
                    random_chunks(speech.size, np.random.default_rng(21), 1_000, 90_000))
    np.testing.assert_array_equal(got, expected)


def test_release_order_decoding_streams_too(exact_model, speech, one_shot):
    """recompute=True (the release's order) through the streamer: the same bits as the cached order."""
    got, _ = stream(Streamer(exact_model, postprocess=False, recompute=True), speech, [slice(0, speech.size)])
    np.testing.assert_array_equal(got, one_shot)


def test_window_callback_of_one_shot_generation_gives_each_window_as_decoded(exact_model, speech, one_shot):
    seen = []
    generate_motion(exact_model, speech, on_window=lambda w, frames: seen.append((w, frames)))
    assert [w for w, _ in seen] == [0, 1, 2]
    assert [f.shape[0] for _, f in seen] == [100, 100, 30]
    np.testing.assert_array_equal(np.concatenate([f for _, f in seen]), one_shot)


def test_one_shot_generation_on_the_gpu_default_batching_still_matches_on_cpu(exact_model, speech, one_shot):
    """The streamer encodes one window per call; the CPU one-shot does too, so it equals Generator(audio_batch=1)."""
    import torch

    with torch.inference_mode():
        motion = Generator(exact_model, audio_batch=1).run(torch.from_numpy(speech)[None])
    np.testing.assert_array_equal(motion[0].numpy(), one_shot)


# ---- edges ----


def test_exact_window_multiples_tiny_clips_and_empty_takes(exact_model):
    rng = np.random.default_rng(7)
    # 71,680 samples: the release's float count ceil(71680 / 16000 * 25) = ceil(112.00000000000001) is 113 frames
    for n, frames in ((64_000, 100), (1, 1), (641, 2), (71_680, 113)):
        audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
        got, _ = stream(Streamer(exact_model), audio, random_chunks(n, rng, 1, 30_000))
        assert got.shape == (frames, 106)
        np.testing.assert_array_equal(got, postprocess_motion(generate_motion(exact_model, audio)))
    s = Streamer(exact_model)
    assert s.finish().shape == (0, 106) and s.finish().shape == (0, 106)
    with pytest.raises(FlameTalkError, match="after finish"):
        s.feed(np.zeros(10, np.float32))
    with pytest.raises(FlameTalkError, match="NaN"):
        Streamer(exact_model).feed(np.array([0.0, np.nan], np.float32))


# ---- audio at other rates ----


@pytest.mark.parametrize("rate", [44_100, 48_000, 8_000, 22_050])
def test_streamed_resampling_gives_load_audio_array_s_samples(rate):
    """soxr's stream resampler: any cut of the input gives the same 16 kHz samples as the one-shot reader."""
    import soxr
    from flametalk.io.audio import RESAMPLE_QUALITY

    rng = np.random.default_rng(rate)
    audio = (0.3 * rng.standard_normal(int(rate * 6.3))).astype(np.float32)
    expected = load_audio_array(audio, rate)
    for low, high in ((1, 300), (100, int(rate * 2))):
        rs = soxr.ResampleStream(rate, 16_000, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        parts = [rs.resample_chunk(audio[c]) for c in random_chunks(audio.size, rng, low, high)]
        parts.append(rs.resample_chunk(np.zeros(0, np.float32), last=True))
        np.testing.assert_array_equal(np.concatenate(parts), expected)


def test_int16_pcm_at_48k_in_20ms_chunks_equals_one_shot_on_the_resampled_file(exact_model, speech):
    rng = np.random.default_rng(31)
    pcm = (np.clip(rng.standard_normal(int(48_000 * 5.1)) * 0.2, -1, 1) * 32767).astype(np.int16)
    expected = postprocess_motion(generate_motion(exact_model, load_audio_array(pcm, 48_000)))
    got, _ = stream(Streamer(exact_model, rate=48_000), pcm, random_chunks(pcm.size, rng, 960, 960))
    np.testing.assert_array_equal(got, expected)


# ---- the causal smoother alone ----


@pytest.mark.parametrize("frames", [*range(12), 57, 100, 230, 1001])
def test_smoother_equals_one_shot_postprocessing_for_any_chunking(frames):
    rng = np.random.default_rng(frames)
    raw = rng.standard_normal((frames, 106)).astype(np.float32)
    expected = postprocess_motion(raw)
    for high in (1, 3, 17, 150):
        sm = StreamingSmoother()
        outs, fed, emitted = [], 0, 0
        for c in random_chunks(frames, rng, 1, high):
            out = sm.feed(raw[c])
            fed, emitted = fed + (c.stop - c.start), emitted + out.shape[0]
            # the documented delay: every frame with 4 later frames is out once 9 frames are in, no other
            assert emitted == (fed - SMOOTH_DELAY_FRAMES if fed >= 9 else 0)
            outs.append(out)
        outs.append(sm.finish())
        np.testing.assert_array_equal(np.concatenate(outs), expected)
        assert sm._tail.shape[0] == 0 and sm.finish().shape == (0, 106)
