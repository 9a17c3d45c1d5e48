"""Kernel plans side by side in one process: each variant's full-size random model is built once, then the
variants generate the same clip in alternation (A B A B ...), so the machine's drift hits them alike.

A variant is a CPU plan name (flametalk/fast/plan.py), optionally with fields changed: `avx2`, `generic`,
`avx2:attention=bmm`, `avx2:int8=none`, `avx2:pos_conv=conv`. Prints each variant's times and its fastest run.

    .venv/bin/python scripts/bench_plans.py --mode exact avx2 generic
    .venv/bin/python scripts/bench_plans.py --mode fast avx2 avx2:attention=bmm --seconds 8 --rounds 4
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from flametalk.commands.bench import test_signal
from flametalk.decode.pipeline import generate_motion
from flametalk.fast import plan as plans
from flametalk.fast.devices import configure_torch_for_parity
from flametalk.flame.contract import SAMPLE_RATE
from flametalk.model.config import ARTalkConfig
from flametalk.model.random_init import random_init_model


def parse_variant(spec: str, mode: str) -> plans.Plan:
    name, _, changes = spec.partition(":")
    plan = plans.cpu_plan(name, mode)
    for item in filter(None, changes.split(",")):
        key, _, value = item.partition("=")
        parsed: object = {"none": None, "true": True, "false": False}.get(value.lower(), value)
        plan = replace(plan, **{key: parsed})
    return plan


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+")
    p.add_argument("--mode", choices=("exact", "fast"), default="exact")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    configure_torch_for_parity()
    models = {v: random_init_model(ARTalkConfig(), args.mode, plan=parse_variant(v, args.mode))
              for v in args.variants}
    audio = test_signal(args.seconds)
    for model in models.values():
        generate_motion(model, audio[: 4 * SAMPLE_RATE])  # warm-up: one window
    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(args.rounds):
        for v, model in models.items():
            t0 = time.perf_counter()
            generate_motion(model, audio)
            times[v].append(time.perf_counter() - t0)
    for v, ts in times.items():
        print(f"{v:28s} {' '.join(f'{t:.3f}' for t in ts)}  fastest {min(ts):.3f} s per {args.seconds:g} s clip")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
