"""`python -m flametalk bench`: time motion generation for a clip, print one JSON line.

Without a checkpoint (`--random-init`) the full-size release architecture is built with random weights, so the
benchmark runs anywhere. Compute time covers the whole generation (audio encoder, AR decoding, autoencoder), not
model construction. Peak RSS is the process's high-water mark (ru_maxrss), model included.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

from ..flame.contract import SAMPLE_RATE

SPEECH_LIKE_SEED = 1234


def peak_rss_mb() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def test_signal(seconds: float) -> np.ndarray:
    """Amplitude-modulated noise: speech-like loudness changes without shipping audio."""
    rng = np.random.default_rng(SPEECH_LIKE_SEED)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def run_bench(args: argparse.Namespace) -> dict:
    import torch

    from ..decode.pipeline import generate_motion
    from ..fast.devices import configure_torch_for_parity, resolve_device
    from ..fast.precision import apply_mode, model_plan
    from ..model.random_init import random_init_model

    if args.threads:
        torch.set_num_threads(args.threads)
    configure_torch_for_parity()
    device = resolve_device(args.device)
    if args.checkpoint:
        from ..io.checkpoint import load_checkpoint

        model = apply_mode(load_checkpoint(args.checkpoint, device=device), args.mode)
    else:
        from ..model.config import ARTalkConfig

        model = random_init_model(ARTalkConfig(), args.mode, device)
    audio = test_signal(args.seconds)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generate = release_order_generate if args.release_order else generate_motion
    for _ in range(args.warmup):
        generate(model, audio[: SAMPLE_RATE * 4])
    sync()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        motion = generate(model, audio)
        sync()
        times.append(time.perf_counter() - t0)
    compute = float(np.median(times))
    retake = time_retake(model, audio, sync) if args.retake else None
    result = {
        "seconds_audio": args.seconds,
        "seconds_compute": round(compute, 4),
        "rtf": round(compute / args.seconds, 5),
        "rtf_min": round(min(times) / args.seconds, 5),  # least disturbed run: on a shared, noisy machine the
        # minimum over repeats is the steadier estimate of what the computation itself costs
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "mode": "release-order" if args.release_order else args.mode,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "frames": int(motion.shape[0]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "plan": model_plan(model).as_dict(),
    }
    if device.type == "cpu":
        from ..fast.plan import detect

        cpu = detect()
        result["cpu"] = {"model": cpu.model, "capability": cpu.torch_capability}
    if retake is not None:
        result["seconds_retake"] = round(retake, 4)
        result["rtf_retake"] = round(retake / args.seconds, 5)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def time_retake(model, audio: np.ndarray, sync) -> float:
    """Another take of the same clip with another style, as the warm worker runs it: the first (untimed) take
    leaves the clip's audio conditions in a cache, the timed one reuses them."""
    from ..decode.condcache import ConditionCache
    from ..decode.pipeline import generate_motion
    from ..flame.contract import MOTION_DIM, STYLE_FRAMES

    cache = ConditionCache()
    generate_motion(model, audio, cache=cache)
    style = 0.1 * np.random.default_rng(SPEECH_LIKE_SEED).standard_normal((STYLE_FRAMES, MOTION_DIM))
    sync()
    t0 = time.perf_counter()
    generate_motion(model, audio, style.astype(np.float32), cache=cache)
    sync()
    return time.perf_counter() - t0


def release_order_generate(model, audio: np.ndarray) -> np.ndarray:
    """The release's computation order, for a same-machine baseline: every scale step re-runs all earlier tokens
    of the window, weights stay unpacked and the weight norm is recomputed per call (what the release does)."""
    import torch

    from ..decode.autoregressive import Generator

    with torch.inference_mode():
        x = torch.from_numpy(audio)[None].to(model.pos_embed.device)
        return Generator(model).run(x, None, recompute=True)[0].cpu().numpy()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--random-init", action="store_true", help="full-size release architecture, random weights")
    p.add_argument("--checkpoint", help="time a real checkpoint instead of --random-init")
    p.add_argument("--seconds", type=float, default=20.0, help="clip length in seconds (default 20)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--mode", choices=("exact", "fast"), default="exact")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed 4-s runs first")
    p.add_argument("--release-order", action="store_true",
                   help="baseline: the release's recompute-everything order, unpacked weights (exact numbers)")
    p.add_argument("--retake", action="store_true",
                   help="also time another take of the clip with another style, its audio conditions kept from the "
                        "first (what the warm worker does): seconds_retake, rtf_retake")
    p.add_argument("--json", action="store_true", help="print only the JSON line")


def command(args: argparse.Namespace) -> int:
    from ..errors import FlameTalkError

    if not args.random_init and not args.checkpoint:
        raise FlameTalkError("bench needs --random-init or --checkpoint PATH")
    if args.retake and args.release_order:
        raise FlameTalkError("--retake times the worker's kept audio conditions, which the release order does not "
                             "have; drop one of the two options")
    result = run_bench(args)
    print(json.dumps(result))
    return 0
