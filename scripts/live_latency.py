"""Live latency per mode on this machine: the full-size release architecture with random weights (no checkpoint
needed), a 16-s speech-like signal played in real time through `flametalk live`'s code path (commands/live.py).

    .venv/bin/python scripts/live_latency.py [--seconds 16] [--threads 2] [--modes exact fast]

Prints one JSON line per mode: per-frame latency (capture of a frame's moment -> frame out) min / median / max, the
first window's first- and last-frame latency, and the per-window compute."""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from flametalk.commands.bench import test_signal
from flametalk.commands.live import WavSource, run_live
from flametalk.fast.devices import configure_torch_for_parity
from flametalk.model.config import ARTalkConfig
from flametalk.model.random_init import random_init_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["exact", "fast"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configure_torch_for_parity()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "signal.wav"
        sf.write(wav, test_signal(args.seconds), 16_000, subtype="FLOAT")
        for mode in args.modes:
            model = random_init_model(ARTalkConfig(), mode, "cpu")
            out = io.StringIO()
            t0 = time.perf_counter()
            motion, _, log = run_live(model, WavSource(str(wav), speed=1.0), as_json=True, out=out)
            wall = time.perf_counter() - t0
            lines = [json.loads(x) for x in out.getvalue().splitlines()]
            lat = np.asarray(log.frame_latency)
            print(json.dumps({
                "mode": mode, "plan": model._plan.name, "threads": args.threads, "audio_s": args.seconds,
                "frames": int(motion.shape[0]), "wall_s": round(wall, 2),
                "latency_s": {"min": round(float(lat.min()), 2), "median": round(float(np.median(lat)), 2),
                              "max": round(float(lat.max()), 2)},
                "window1_first_last_s": [lines[0]["latency_first_s"], lines[0]["latency_last_s"]],
                "window_compute_s_est": round(float(lines[0]["latency_last_s"]), 2),
                "load_avg": round(os.getloadavg()[0], 1)}), flush=True)
            del model


if __name__ == "__main__":
    main()
