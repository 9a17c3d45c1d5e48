"""`python -m flametalk drift`: how far fast mode (int8 / bf16 / fp16, as the plan picks) lands from exact mode.

Reports, for the parity vector's model (and optionally the full-size architecture with random weights):
the share of token bits that differ, motion RMSE per channel group (expression / head / jaw), and the lip-vertex
error in mm after a FLAME forward pass. Without the real FLAME (it cannot ship), a synthetic FLAME-format model
stands in and the "lip" vertices are those the jaw joint moves most (LBS weight > 0.5): the mouth region.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ..flame.contract import EXPR, HEAD_ROT, JAW_ROT

JAW_JOINT = 2
MOUTH_WEIGHT = 0.5  # vertices at least this bound to the jaw count as the mouth region


def motion_drift(exact: np.ndarray, fast: np.ndarray) -> dict[str, float]:
    def rmse(sl: slice) -> float:
        return float(np.sqrt(np.mean((exact[:, sl] - fast[:, sl]) ** 2)))

    return {"rmse_expression": rmse(EXPR), "rmse_head": rmse(HEAD_ROT), "rmse_jaw": rmse(JAW_ROT)}


def lip_error_mm(exact: np.ndarray, fast: np.ndarray, flame: Any) -> dict[str, float]:
    """Per frame: max error over the mouth vertices (LVE-style), then mean and max over frames, in mm."""
    from ..flame.lbs import forward_motion

    mouth = np.flatnonzero(flame.weights[:, JAW_JOINT] > MOUTH_WEIGHT)
    va = forward_motion(flame, exact)[:, mouth]
    vb = forward_motion(flame, fast)[:, mouth]
    per_frame = np.linalg.norm(va - vb, axis=-1).max(axis=1) * 1000.0
    return {"lip_error_mm_mean": float(per_frame.mean()), "lip_error_mm_max": float(per_frame.max()),
            "mouth_vertices": int(mouth.size)}


def synthetic_flame() -> Any:
    from ..testing.synthetic_flame import make_arrays, model_from_arrays

    return model_from_arrays(make_arrays())


def compare(model_exact, model_fast, audio: np.ndarray, style: np.ndarray | None, flame: Any) -> dict[str, Any]:
    import torch

    from ..decode.autoregressive import Generator

    bits = {}
    motions = {}
    for name, model in (("exact", model_exact), ("fast", model_fast)):
        gen = Generator(model)
        recorded: list[torch.Tensor] = []
        original = gen.window_bits

        def spy(*args, _orig=original, _rec=recorded, **kwargs):
            out = _orig(*args, **kwargs)
            _rec.append(out)
            return out

        gen.window_bits = spy  # type: ignore[method-assign]
        dev = model.pos_embed.device
        with torch.inference_mode():
            st = None if style is None else torch.from_numpy(style)[None].to(dev)
            motions[name] = gen.run(torch.from_numpy(audio)[None].to(dev), st)[0].float().cpu().numpy()
        bits[name] = torch.cat(recorded, dim=1).cpu()
    report: dict[str, Any] = {"bits_differ": float((bits["exact"] != bits["fast"]).float().mean())}
    L = model_exact.cfg.tokens_per_window
    first = bits["exact"][:, :L] != bits["fast"][:, :L]
    report["bits_differ_window0"] = float(first.float().mean())
    report.update(motion_drift(motions["exact"], motions["fast"]))
    report.update(lip_error_mm(motions["exact"], motions["fast"], flame))
    return report


def parity_vector_drift(vector_path: str, flame: Any) -> dict[str, Any]:
    from ..fast.precision import apply_mode
    from .reference import load_vector, model_from_vector

    vector = load_vector(vector_path)
    exact = model_from_vector(vector)
    fast = apply_mode(model_from_vector(vector), "fast")
    audio = vector["inputs"]["audio_16k"][0].float().numpy()
    style = vector["inputs"]["style_motion"][0].float().numpy()
    return {"model": "parity vector (reduced, random fp16 weights)", "plan": fast._plan.as_dict(),
            "with_style": compare(exact, fast, audio, style, flame),
            "without_style": compare(exact, fast, audio, None, flame)}


def random_model_drift(seconds: float, flame: Any) -> dict[str, Any]:
    import torch

    from ..fast.precision import apply_mode
    from ..model.config import ARTalkConfig
    from ..model.random_init import random_init_model
    from .bench import test_signal

    exact = random_init_model(ARTalkConfig(), "exact")
    fast = apply_mode(random_init_model(ARTalkConfig(), "exact"), "fast")  # same seed -> same weights, then cast
    with torch.no_grad():
        report = compare(exact, fast, test_signal(seconds), None, flame)
    return {"model": f"full-size architecture, random weights, {seconds:g} s of test signal",
            "plan": fast._plan.as_dict(), "no_style": report}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", help="parity vector .pt (default: none)")
    p.add_argument("--random-init", action="store_true", help="also the full-size architecture with random weights")
    p.add_argument("--seconds", type=float, default=8.0, help="clip length for --random-init (default 8)")
    p.add_argument("--threads", type=int, default=0)


def command(args: argparse.Namespace) -> int:
    import torch

    from ..errors import FlameTalkError
    from ..fast.devices import configure_torch_for_parity

    if args.threads:
        torch.set_num_threads(args.threads)
    configure_torch_for_parity()
    if not args.vector and not args.random_init:
        raise FlameTalkError("drift needs --vector VECTOR.pt and/or --random-init")
    flame = synthetic_flame()
    out = {}
    if args.vector:
        out["parity_vector"] = parity_vector_drift(args.vector, flame)
    if args.random_init:
        out["random_full_size"] = random_model_drift(args.seconds, flame)
    print(json.dumps(out, indent=1))
    return 0
