"""Style clips: release .pt tensors, .npy/.npz motion, bare names from the asset cache, no style; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flametalk.errors import FlameTalkError
from flametalk.io.motion import save_motion
from flametalk.io.style import available_styles, load_style


def clip(frames: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((frames, 106)).astype(np.float32)


@pytest.mark.parametrize("spec", [None, "none", "None", "default", "", "  "])
def test_no_style(spec):
    assert load_style(spec) == (None, "none")


def test_release_pt_tensor_and_its_variants(tmp_path):
    c = clip()
    torch.save(torch.from_numpy(c), tmp_path / "plain.pt")
    torch.save(torch.from_numpy(c)[None], tmp_path / "batched.pt")
    torch.save({"style_motion": torch.from_numpy(c)}, tmp_path / "dict.pt")
    torch.save(torch.from_numpy(c).half(), tmp_path / "half.pt")
    long = torch.from_numpy(clip(300, seed=1))
    torch.save(long[100:150], tmp_path / "view.pt")  # like the release: a (50, 106) view of a longer recording
    for name in ("plain", "batched", "dict"):
        motion, got_name = load_style(tmp_path / f"{name}.pt")
        assert got_name == name and motion.dtype == np.float32 and motion.shape == (50, 106)
        np.testing.assert_array_equal(motion, c)
    half, _ = load_style(str(tmp_path / "half.pt"))
    np.testing.assert_allclose(half, c, atol=1e-2)
    view, _ = load_style(tmp_path / "view.pt")
    np.testing.assert_array_equal(view, long[100:150].numpy())


def test_longer_clips_use_the_span_from_start_frame(tmp_path):
    c = clip(120, seed=2)
    torch.save(torch.from_numpy(c), tmp_path / "long.pt")
    np.save(tmp_path / "long.npy", c)
    save_motion(tmp_path / "long.npz", c)
    for suffix in ("pt", "npy", "npz"):
        motion, name = load_style(tmp_path / f"long.{suffix}", start_frame=30)
        assert name == "long"
        np.testing.assert_array_equal(motion, c[30:80])
    last, _ = load_style(tmp_path / "long.npy", start_frame=70)
    np.testing.assert_array_equal(last, c[70:120])


def test_bare_names_resolve_in_the_style_folder_and_the_asset_cache(tmp_path, monkeypatch):
    folder = tmp_path / "styles"
    folder.mkdir()
    torch.save(torch.from_numpy(clip(seed=3)), folder / "natural_0.pt")
    torch.save(torch.from_numpy(clip(seed=4)), folder / "happy_1.pt")
    assert available_styles(folder) == ["happy_1", "natural_0"]
    motion, name = load_style("natural_0", style_dir=folder)
    assert name == "natural_0"
    np.testing.assert_array_equal(motion, clip(seed=3))
    # Default folder: <cache>/artalk/style_motion
    cache = tmp_path / "cache"
    (cache / "artalk" / "style_motion").mkdir(parents=True)
    torch.save(torch.from_numpy(clip(seed=5)), cache / "artalk" / "style_motion" / "angry_0.pt")
    monkeypatch.setenv("FLAMETALK_CACHE", str(cache))
    motion, name = load_style("angry_0")
    assert name == "angry_0"
    np.testing.assert_array_equal(motion, clip(seed=5))
    with pytest.raises(FlameTalkError, match=r"unknown style 'sad_9' .*available: angry_0"):
        load_style("sad_9")


def test_bare_name_with_an_empty_cache_says_how_to_get_clips(tmp_path):
    with pytest.raises(FlameTalkError, match=r"has no style clips; run `python -m flametalk assets download`"):
        load_style("natural_0", style_dir=tmp_path / "empty")


def test_errors(tmp_path):
    np.save(tmp_path / "short.npy", clip(49))
    np.save(tmp_path / "dims.npy", np.zeros((50, 100), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(5300, np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((50, 106), np.int64))
    nan = clip(60)
    nan[55, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    torch.save({"a": torch.zeros(2), "b": torch.zeros(3)}, tmp_path / "dict.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled object, refused by weights_only
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "clip.txt").write_text("hello")
    cases = [
        ("short.npy", {}, "too short: 49 frames, a style needs 50 frames"),
        ("dims.npy", {}, r"must be motion of shape \(50, 106\).*got \(50, 100\)"),
        ("flat.npy", {}, r"got \(5300,\)"),
        ("ints.npy", {}, "floating-point"),
        ("nan.npy", {}, None),  # frames 0..49 are fine
        ("nan.npy", {"start_frame": 10}, "NaN or infinite values in frames 10..59"),
        ("nan.npy", {"start_frame": 11}, "can start at frame 0..10, not 11; lower --style-start"),
        ("nan.npy", {"start_frame": -1}, "whole number >= 0"),
        ("dict.pt", {}, "holds a dict without a motion tensor"),
        ("module.pt", {}, "not a readable torch tensor file"),
        ("empty.pt", {}, r"is empty \(0 bytes\)"),
        ("missing.pt", {}, "does not exist"),
        ("clip.txt", {}, "unsupported file type '.txt'"),
    ]
    for name, kwargs, message in cases:
        if message is None:
            assert load_style(tmp_path / name, **kwargs)[0].shape == (50, 106)
            continue
        with pytest.raises(FlameTalkError, match=message):
            load_style(tmp_path / name, **kwargs)


def test_arrays_are_accepted_directly():
    motion, name = load_style(clip(80), start_frame=5)
    assert name == "array"
    np.testing.assert_array_equal(motion, clip(80)[5:55])
