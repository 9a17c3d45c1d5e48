"""numpy in, numpy out: the one call the CLI, the worker and the benchmark use to generate motion
(`generate_motion`), and the public API's `load_model` / `generate` (flametalk.load_model, flametalk.generate)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import FlameTalkError
from ..fast import filepages
from ..fast.featext import swap_feature_extractor
from ..fast.fused import fuse_qkv
from ..fast.heap import keep_activation_memory, release_free_heap
from ..fast.packed import PackedLinear, fuse_encoder_gelu, pack_linears
from ..fast.posconv import use_fft_positional_conv
from ..fast.precision import Mode, model_plan
from ..flame.contract import MOTION_DIM, STYLE_FRAMES
from ..model.artalk import ARTalkModel
from ..model.audio_encoder import freeze_weight_norm
from .autoregressive import Generator
from .condcache import ConditionCache

ProgressFn = Callable[[int, int], None]


def model_device(model: ARTalkModel) -> torch.device:
    return model.pos_embed.device


def prepare_for_inference(model: ARTalkModel) -> ARTalkModel:
    """One-time, in-place inference preparation (idempotent; never for a model that will be trained further):
    the weight-normed positional convolution gets its computed weight; where the model's plan packs (x86 CPUs,
    fast/plan.py) the wav2vec2 feature extractor runs time-major (fast/featext.py: the same fp32 products up
    to summation order), the remaining float linear layers are pre-packed for oneDNN (same math; where the plan
    says so (AVX2) the query/key/value projections as one stacked GEMM, fast/fused.py: the same values) and, where
    the plan says so (AVX-512), the encoder's feed-forward GEMMs apply their GELU themselves (bit for bit the same
    values);
    fast mode's CPU plans run the encoder's positional convolution through the FFT (fast/posconv.py). Speed
    figures: BENCHMARKS.md.
    On CPU it also stops glibc from unmapping and re-faulting generation's buffers (fast/heap.py)."""
    if getattr(model, "_prepared_for_inference", False):
        return model
    plan = model_plan(model)
    with filepages.releasing(getattr(model, "_file_weights", None)):
        freeze_weight_norm(model.audio_encoder)
        encoder: Any = model.audio_encoder.encoder  # transformers' module: untyped attributes
        if plan.pos_conv == "fft":
            use_fft_positional_conv(encoder)
        if plan.pack:
            swap_feature_extractor(model, "audio_encoder.feature_extractor")
            if plan.fuse_qkv:  # float q/k/v left (fast mode's int8 ones were fused when quantised)
                fuse_qkv(model, PackedLinear.from_weight)
            pack_linears(model)
            if plan.gelu_post_op:
                fuse_encoder_gelu(encoder.layers)
    model._file_weights = None  # conversions are over: let the mapping go with the last weight that uses it
    model._prepared_for_inference = True
    release_free_heap()
    if model_device(model).type == "cpu":
        keep_activation_memory()  # after the conversions: generation's buffers stay in the heap (heap.py)
    return model


@torch.inference_mode()
def generate_motion(model: ARTalkModel, audio_16k: np.ndarray, style_motion: np.ndarray | None = None,
                    progress: ProgressFn | None = None, recompute: bool = False,
                    cache: ConditionCache | None = None,
                    on_window: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Mono 16 kHz float audio (N,) -> raw model motion (frames_for_samples(N), 106) float32 at 25 fps.

    `on_window(w, frames)` gets each 4-s window's raw motion (frames, 106) float32 as soon as it is decoded (the
    progressive worker job); the rows are the same as the returned motion's rows w * 100 onwards.
    `progress(done_windows, total_windows)` is called before the first and after every 4-s window. `cache` keeps
    audio conditions between calls on this same model (the warm worker: another take of a line skips the encoder).
    Post-processing (smoothing, jaw roll/yaw zeroing) is separate: decode/postprocess.py.
    """
    audio = np.asarray(audio_16k, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise FlameTalkError(f"audio must be a non-empty mono signal, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise FlameTalkError("audio holds NaN or infinite samples; re-export the file")
    device = model_device(model)
    style = None
    if style_motion is not None:
        style_arr = np.asarray(style_motion, dtype=np.float32)
        if style_arr.shape != (STYLE_FRAMES, MOTION_DIM):
            raise FlameTalkError(f"style clip must be ({STYLE_FRAMES}, {MOTION_DIM}), got {style_arr.shape}")
        style = torch.from_numpy(style_arr)[None].to(device)
    audio_t = torch.from_numpy(audio)[None].to(device)
    prepare_for_inference(model)
    window_fn = _first_clip_as_numpy(on_window) if on_window is not None else None
    motion = Generator(model).run(audio_t, style, progress=progress, recompute=recompute, cache=cache,
                                  on_window=window_fn)
    return motion[0].float().cpu().numpy()


def _first_clip_as_numpy(on_window: Callable[[int, np.ndarray], None]) -> Callable[[int, torch.Tensor], None]:
    def call(w: int, motion_BTD: torch.Tensor) -> None:
        on_window(w, motion_BTD[0].float().cpu().numpy())

    return call


def load_model(checkpoint: str | os.PathLike[str] | None = None, device: str = "auto", mode: Mode = "exact",
               cache: str | os.PathLike[str] | None = None) -> ARTalkModel:
    """Load a checkpoint folder (default: the release checkpoint in the asset cache, `python -m flametalk assets
    download`) on `device` (auto, cpu, cuda, cuda:N, mps) in `mode` ("exact": the release's fp32 numbers; "fast":
    the plan's int8 / bf16 / fp16), as `python -m flametalk generate` does."""
    from ..assets.store import resolve_checkpoint_dir
    from ..fast.devices import configure_torch_for_parity, resolve_device
    from ..fast.precision import apply_mode
    from ..io.checkpoint import load_checkpoint

    folder = resolve_checkpoint_dir(checkpoint, cache)
    resolved = resolve_device(device)
    configure_torch_for_parity()
    return apply_mode(load_checkpoint(folder, device=resolved), mode)


def generate(model: ARTalkModel, audio: str | os.PathLike[str] | np.ndarray,
             style: str | os.PathLike[str] | np.ndarray | None = None, style_start: int = 0,
             postprocess: bool = True, progress: ProgressFn | None = None,
             cache: ConditionCache | None = None) -> np.ndarray:
    """Speech -> motion (T, 106) float32 at 25 fps, as `python -m flametalk generate` writes it.

    `audio`: a file (any format and rate io/audio.py reads) or mono float samples at 16 kHz. `style`: None, a
    release style name (natural_0, ...), a .pt/.npy/.npz clip or an array, from frame `style_start` (io/style.py).
    `postprocess`: smoothing and jaw roll/yaw zeroing (decode/postprocess.py); False keeps the raw model output."""
    from ..io.audio import load_audio
    from ..io.style import load_style
    from .postprocess import postprocess_motion

    samples = audio if isinstance(audio, np.ndarray) else load_audio(audio)
    style_motion, _name = load_style(style, style_start)
    motion = generate_motion(model, samples, style_motion, progress=progress, cache=cache)
    return postprocess_motion(motion) if postprocess else motion
