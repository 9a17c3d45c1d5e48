"""End to end: `python -m flametalk generate` with the parity vector's (reduced) model on real speech."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures.common import AUDIO_DIR, run_flametalk
from flametalk import __version__
from flametalk.io.audio import load_audio
from flametalk.io.motion import load_motion

MOTION_TOL = 1e-4  # the release's outputs are robust to 1e-5 weight noise at this level


@pytest.mark.parametrize("name", ["eng2", "cn1"])
def test_generate_real_speech(name, parity_checkpoint_dir, tmp_path):
    audio = AUDIO_DIR / f"{name}.wav"
    proc = run_flametalk("generate", str(audio), "--checkpoint", str(parity_checkpoint_dir), "--device", "cpu",
                         "--quiet", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / f"{name}.motion.npz"  # default: <audio stem>.motion.npz in the current folder
    assert f"wrote {out}" in proc.stdout
    motion, fps, prov = load_motion(out)
    seconds = load_audio(audio).shape[0] / 16_000
    assert motion.shape == (math.ceil(seconds * 25), 106)
    assert abs(seconds - sf.info(str(audio)).duration) < 1e-3
    assert fps == 25.0 and np.isfinite(motion).all() and motion.dtype == np.float32
    assert not motion[:, 104:].any()  # post-processing on by default
    weights = parity_checkpoint_dir / "model.pt"
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert prov["checkpoint"]["state_dict"] == "model.pt"
    assert (parity_checkpoint_dir / "model.pt.sha256").is_file()  # hash cached for the next run
    assert prov["flametalk_version"] == __version__
    assert prov["style"]["name"] == "none"
    assert prov["settings"]["postprocess"] is True and prov["settings"]["device"] == "cpu"
    assert prov["audio"]["path"] == str(audio.resolve()) and prov["audio"]["duration_s"] == pytest.approx(seconds)
    assert prov["frames"] == motion.shape[0]


def test_generate_matches_the_release_output_for_the_vector_inputs(parity_vector, parity_checkpoint_dir, tmp_path):
    """The vector's 16 kHz audio written as float WAV (passes through unchanged) + its style clip as a .pt: the raw
    CLI output must be the release's `motion_with_style`."""
    inputs = parity_vector["inputs"]
    wav = tmp_path / "vector_audio.wav"
    sf.write(str(wav), inputs["audio_16k"][0].float().numpy(), 16_000, subtype="FLOAT")
    style = tmp_path / "vector_style.pt"
    torch.save(inputs["style_motion"][0].float().clone(), style)
    out = tmp_path / "raw.npz"
    proc = run_flametalk("generate", str(wav), "--checkpoint", str(parity_checkpoint_dir), "--style", str(style),
                         "--no-postprocess", "--device", "cpu", "--out", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    motion, _, prov = load_motion(out)
    want = parity_vector["outputs"]["motion_with_style"][0].float().numpy()
    assert motion.shape == want.shape
    assert np.abs(motion - want).max() < MOTION_TOL
    assert prov["style"] == {"name": "vector_style", "spec": str(style), "start_frame": 0}
    assert prov["settings"]["postprocess"] is False
