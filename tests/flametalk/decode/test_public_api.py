"""flametalk.load_model / generate / read_motion / write_motion: the same motion as the library calls they wrap."""

from __future__ import annotations

import flametalk
import numpy as np
import pytest
from fixtures.common import AUDIO_DIR
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.io.audio import load_audio
from flametalk.io.checkpoint import load_checkpoint


def test_load_model_and_generate_match_the_pipeline(parity_checkpoint_dir, tmp_path):
    model = flametalk.load_model(parity_checkpoint_dir, device="cpu")
    assert model._plan.mode == "exact"
    audio = load_audio(AUDIO_DIR / "eng2.wav")
    raw = generate_motion(load_checkpoint(parity_checkpoint_dir), audio)

    motion = flametalk.generate(model, AUDIO_DIR / "eng2.wav")  # a file
    np.testing.assert_array_equal(motion, postprocess_motion(raw))
    np.testing.assert_array_equal(flametalk.generate(model, audio, postprocess=False), raw)  # samples

    out = flametalk.write_motion(tmp_path / "take.npz", motion, provenance={"note": "api"})
    back, fps, prov = flametalk.read_motion(out)
    np.testing.assert_array_equal(back, motion)
    assert fps == 25 and prov == {"note": "api"}


def test_load_model_without_a_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(flametalk.FlameTalkError, match="assets download"):
        flametalk.load_model(cache=tmp_path / "empty_cache")
