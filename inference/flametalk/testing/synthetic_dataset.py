"""A tiny synthetic dataset in the training layout (for tests and for checking a set-up end to end).

Audio is a tone plus noise whose loudness follows a random syllable-rate envelope; the motion is driven by the
same envelope (jaw opening, a nod and a few expression coefficients) plus a per-clip "style"
offset, so the speech -> motion mapping is learnable and the style clip carries information.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..flame.contract import MOTION_DIM, MOTION_FPS, SAMPLE_RATE


def envelope(seconds: float, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth loudness envelope in [0, 1] sampled at `rate` Hz (sum of 2-6 Hz sinusoids through a soft clip)."""
    t = np.arange(round(seconds * rate)) / rate
    freqs = rng.uniform(2.0, 6.0, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    x = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases)) / 1.5
    return 1.0 / (1.0 + np.exp(-3.0 * x))


def synthetic_clip(seconds: float, seed: int, audio_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(audio at `audio_rate` float32, motion (ceil(seconds * 25), 106) float32)."""
    rng = np.random.default_rng(seed)
    frames = int(np.ceil(seconds * MOTION_FPS - 1e-9))
    env_hi = envelope(frames / MOTION_FPS, 1000.0, rng)  # fine grid shared by audio and motion
    t_audio = np.arange(round(seconds * audio_rate)) / audio_rate
    env_audio = np.interp(t_audio, np.arange(env_hi.size) / 1000.0, env_hi)
    carrier = 0.6 * np.sin(2 * np.pi * rng.uniform(120, 220) * t_audio) + 0.4 * rng.standard_normal(t_audio.size)
    audio = (0.3 * env_audio * carrier).astype(np.float32)
    env = env_hi[: frames * 40].reshape(frames, 40).mean(axis=1)  # mean loudness of each 40-ms frame
    motion = np.zeros((frames, MOTION_DIM), np.float32)
    style = rng.normal(0.0, 0.5, size=6)
    motion[:, 0] = 2.0 * env + style[0]
    motion[:, 1] = -1.2 * env + style[1]
    motion[:, 2] = 0.8 * env**2 + style[2]
    motion[:, 3:6] = style[3:6]
    motion[:, 100] = 0.05 * env + 0.02 * style[4]  # a nod with loudness
    motion[:, 101] = 0.03 * style[5]
    motion[:, 103] = 0.25 * env  # jaw opening
    return audio, motion


def write_synthetic_dataset(root: str | Path, n_clips: int = 6, seconds: float = 3.0, seed: int = 0,
                            odd_rate_clip: bool = True) -> Path:
    """Write clips `clip_00 ...` (wav + npz) and split.json (last clip: test, second to last: val)."""
    import soundfile as sf

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_clips):
        rate = 22_050 if (odd_rate_clip and i == 1) else SAMPLE_RATE  # one clip exercises resampling
        audio, motion = synthetic_clip(seconds, seed * 1000 + i, rate)
        name = f"clip_{i:02d}"
        sf.write(str(root / f"{name}.wav"), audio, rate, subtype="FLOAT")
        np.savez(root / f"{name}.npz", motion=motion, fps=np.float64(MOTION_FPS))
        names.append(name)
    split = {"train": names[:-2] if n_clips > 2 else names, "val": names[-2:-1], "test": names[-1:]}
    (root / "split.json").write_text(json.dumps(split, indent=1))
    return root
