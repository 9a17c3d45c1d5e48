"""Training data: a folder of clips, a split file, a validator, and window sampling for both stages.

Layout (names are relative paths without extension, so speakers may have sub-folders):

    DATA/
      split.json            {"train": ["spk1/a", ...], "val": [...], "test": [...]}  (optional: all = train)
      spk1/a.wav            speech: any format libsndfile reads, any rate and channel count (-> mono 16 kHz)
      spk1/a.npz            `motion` (T, 106) float at 25 fps, the layout `generate` writes (100 expression,
                            3 head rotation, 3 jaw rotation); optional `fps` (must be 25) and `shape` (<= 300,)

Frame t covers audio samples [640 t, 640 (t + 1)). The validator reports every bad clip (length mismatch, NaN,
wrong dims, unreadable files) instead of letting training crash on it mid-run; training skips bad clips.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FlameTalkError
from ..flame.contract import MOTION_DIM, MOTION_FPS, SAMPLE_RATE

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
SAMPLES_PER_FRAME = SAMPLE_RATE // MOTION_FPS  # 640
MAX_SHAPE = 300


@dataclass
class ClipFiles:
    name: str
    motion_path: Path
    audio_path: Path | None


@dataclass
class ValidationReport:
    clips: dict[str, ClipFiles] = field(default_factory=dict)  # every clip found (good or bad)
    bad: dict[str, list[str]] = field(default_factory=dict)  # clip name -> problems
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def good(self) -> list[str]:
        return [n for n in self.clips if n not in self.bad]

    def to_dict(self) -> dict[str, Any]:
        return {"clips": len(self.clips), "good": len(self.good), "bad": self.bad, "warnings": self.warnings,
                "splits": {k: len(v) for k, v in self.splits.items()}}


def find_clips(root: Path) -> tuple[dict[str, ClipFiles], list[str]]:
    """Pair every motion .npz with the audio file of the same name; returns (clips, warnings)."""
    if not root.is_dir():
        raise FlameTalkError(f"dataset folder {root} does not exist")
    clips: dict[str, ClipFiles] = {}
    warnings: list[str] = []
    for npz in sorted(root.rglob("*.npz")):
        name = npz.relative_to(root).with_suffix("").as_posix()
        audio = next((npz.with_suffix(ext) for ext in AUDIO_EXTS if npz.with_suffix(ext).is_file()), None)
        clips[name] = ClipFiles(name, npz, audio)
    motion_stems = {c.motion_path.with_suffix("") for c in clips.values()}
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS):
        if audio.with_suffix("") not in motion_stems:
            warnings.append(f"{audio.relative_to(root).as_posix()}: audio without a motion .npz (ignored)")
    return clips, warnings


def read_split_file(path: Path) -> dict[str, list[str]] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FlameTalkError(f"split file {path} is not valid JSON ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in data.values()
    ):
        raise FlameTalkError(f"split file {path} must map split names to lists of clip names")
    return data


def read_motion_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(motion (T, 106) float32, shape (300,) float32 or None); raises ValueError with the problem."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "motion" not in npz.files:
                raise ValueError(f"no 'motion' array (found: {', '.join(npz.files) or 'none'})")
            motion = npz["motion"]
            fps = npz["fps"] if "fps" in npz.files else None
            shape = npz["shape"] if "shape" in npz.files else None
    except ValueError:
        raise
    except Exception as err:  # any unreadable file is reported, never raised mid-training
        raise ValueError(f"unreadable motion file ({type(err).__name__}: {str(err)[:120]})") from None
    if motion.ndim != 2 or motion.shape[1] != MOTION_DIM:
        raise ValueError(f"motion has shape {tuple(motion.shape)}, expected (frames, {MOTION_DIM})")
    if not np.issubdtype(motion.dtype, np.floating):
        raise ValueError(f"motion has dtype {motion.dtype}, expected floating point")
    if motion.shape[0] == 0:
        raise ValueError("motion has no frames")
    bad = int((~np.isfinite(motion).all(axis=1)).sum())
    if bad:
        raise ValueError(f"motion has NaN/inf in {bad} of {motion.shape[0]} frames")
    if fps is not None and (np.size(fps) != 1 or abs(float(np.asarray(fps).reshape(())) - MOTION_FPS) > 1e-6):
        raise ValueError(f"motion fps is {np.asarray(fps).ravel()[:1]}, expected {MOTION_FPS}")
    if shape is not None:
        if not np.issubdtype(shape.dtype, np.number):
            raise ValueError(f"shape has dtype {shape.dtype}, expected numbers")
        shape = shape.astype(np.float64)
        if shape.ndim == 2 and shape.shape[0] == 1:
            shape = shape[0]
        if shape.ndim != 1 or shape.size > MAX_SHAPE or not np.isfinite(shape).all():
            raise ValueError(f"shape must be up to {MAX_SHAPE} finite values, got {np.shape(shape)}")
        shape = np.pad(shape, (0, MAX_SHAPE - shape.size)).astype(np.float32)
    return motion.astype(np.float32), shape


def audio_seconds(path: Path) -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as err:
        raise ValueError(f"unreadable audio ({str(err).splitlines()[0][:120]})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("audio has no samples")
    return info.frames / info.samplerate


def check_clip(clip: ClipFiles, tolerance: int) -> list[str]:
    problems = []
    frames = None
    try:
        frames = read_motion_file(clip.motion_path)[0].shape[0]
    except ValueError as err:
        problems.append(str(err))
    if clip.audio_path is None:
        problems.append(f"no audio file ({'/'.join(AUDIO_EXTS)}) beside the motion")
    else:
        try:
            seconds = audio_seconds(clip.audio_path)
            expected = math.ceil(seconds * MOTION_FPS - 1e-6)
            if frames is not None and abs(frames - expected) > tolerance:
                problems.append(f"length mismatch: motion {frames} frames, audio {seconds:.2f} s = {expected} "
                                f"frames (tolerance {tolerance})")
        except ValueError as err:
            problems.append(str(err))
    return problems


def validate_dataset(root: str | Path, split_file: str = "split.json", tolerance: int = 2) -> ValidationReport:
    root = Path(root).expanduser()
    clips, warnings = find_clips(root)
    report = ValidationReport(clips=clips, warnings=warnings)
    if not clips:
        raise FlameTalkError(f"no clips (motion .npz + audio) found in {root}")
    for name, clip in clips.items():
        problems = check_clip(clip, tolerance)
        if problems:
            report.bad[name] = problems
    splits = read_split_file(root / split_file)
    if splits is None:
        report.splits = {"train": list(clips)}
    else:
        report.splits = splits
        for split, names in splits.items():
            missing = [n for n in names if n not in clips]
            if missing:
                more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
                report.warnings.append(f"split '{split}' names {len(missing)} missing clip(s): "
                                       f"{', '.join(missing[:3])}{more}")
    return report


# ---- loaded clips and window sampling ----

@dataclass
class Clip:
    name: str
    motion: np.ndarray  # (T, 106) float32
    audio: np.ndarray  # (T * 640,) float32 mono 16 kHz, cut or zero-padded to the motion's length
    shape: np.ndarray | None


def load_split(root: str | Path, split: str, split_file: str = "split.json", tolerance: int = 2,
               report: ValidationReport | None = None) -> tuple[list[Clip], ValidationReport]:
    """Valid clips of one split, loaded into memory (bad clips are skipped and listed in the report)."""
    from ..io.audio import load_audio

    report = report or validate_dataset(root, split_file, tolerance)
    if split not in report.splits:
        raise FlameTalkError(f"split '{split}' is not in {Path(root) / split_file} (has: {', '.join(report.splits)})")
    clips = []
    for name in report.splits[split]:
        if name not in report.clips or name in report.bad:
            continue
        files = report.clips[name]
        motion, shape = read_motion_file(files.motion_path)
        assert files.audio_path is not None
        audio = load_audio(files.audio_path)
        need = motion.shape[0] * SAMPLES_PER_FRAME
        audio = audio[:need] if audio.size >= need else np.pad(audio, (0, need - audio.size))
        clips.append(Clip(name, motion, audio.astype(np.float32), shape))
    return clips, report


def motion_stats(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every frame; constant channels get a small std (1e-3 of the largest) so
    normalising never divides by zero."""
    frames = np.concatenate([c.motion for c in clips]).astype(np.float64)
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    std = np.maximum(std, max(float(std.max()) * 1e-3, 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class WindowSpec:
    """What one training sample holds; `stage` 2 adds audio, style and augmentation noise."""

    window: int  # T frames (patch_nums[-1])
    stage: int = 1
    first_window_prob: float = 0.25  # share of samples whose previous window is the zero motion (as at inference)
    style_frames: int = 50
    null_style_prob: float = 0.1
    tokens: int = 0  # L tokens per window (stage 2: augmentation noise shape)
    code_dim: int = 0  # bits per token (BSQ) or 1 (VQ)
    codebook_size: int = 2


class WindowDataset:
    """Map-style dataset over keys (epoch, item): each key's crop and noise come from its own seeded generator,
    so samples are identical whichever process (or how many) draws them, and after a resume."""

    def __init__(self, clips: list[Clip], spec: WindowSpec, seed: int, crops_per_clip: int = 0):
        if not clips:
            raise FlameTalkError("no valid clips to train on (run `python -m flametalk dataset validate DATA`)")
        self.clips, self.spec, self.seed = clips, spec, seed
        self.items: list[int] = []
        for i, clip in enumerate(clips):
            n = crops_per_clip or max(1, clip.motion.shape[0] // spec.window)
            self.items.extend([i] * n)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, item = key
        rng = np.random.default_rng([self.seed, epoch, item])
        clip = self.clips[self.items[item]]
        T, spec = self.spec.window, self.spec
        motion = clip.motion
        if motion.shape[0] < T:  # short clip: hold the last pose; its audio is zero-padded (silence)
            motion = np.concatenate([motion, np.repeat(motion[-1:], T - motion.shape[0], axis=0)])
        n = motion.shape[0]
        if n >= 2 * T and rng.random() >= spec.first_window_prob:
            t0 = int(rng.integers(T, n - T + 1))
            prev = motion[t0 - T : t0]
        else:
            t0 = 0
            prev = np.zeros((T, motion.shape[1]), np.float32)
        sample: dict[str, Any] = {"prev": prev, "this": motion[t0 : t0 + T]}
        if spec.stage == 2:
            sample.update(self._stage2(rng, clip, motion, t0))
        return sample

    def _stage2(self, rng: np.random.Generator, clip: Clip, motion: np.ndarray, t0: int) -> dict[str, Any]:
        spec, T = self.spec, self.spec.window
        audio = clip.audio[t0 * SAMPLES_PER_FRAME : (t0 + T) * SAMPLES_PER_FRAME]
        audio = np.pad(audio, (0, T * SAMPLES_PER_FRAME - audio.size))
        S = spec.style_frames
        if motion.shape[0] < S:
            motion = np.concatenate([motion, np.repeat(motion[-1:], S - motion.shape[0], axis=0)])
        s0 = int(rng.integers(0, motion.shape[0] - S + 1))
        return {
            "audio": audio.astype(np.float32),
            "style": motion[s0 : s0 + S],
            "null_style": bool(rng.random() < spec.null_style_prob),
            "flip_u": rng.random((spec.tokens, spec.code_dim), dtype=np.float32),
            "flip_rate": np.float32(rng.random()),
            "rand_codes": rng.integers(0, spec.codebook_size, size=spec.tokens),
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.as_tensor(np.stack(values)) if not isinstance(values[0], bool) else torch.tensor(values)
    return out
