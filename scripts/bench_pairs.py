"""Run `python -m flametalk bench` for several variants in alternation and print medians and ratios.

Machines here are shared and noisy: the variants run interleaved (A B C A B C ...), each in a fresh process, and
the speed-up is computed per round against the release-order baseline, so drift of the machine cancels out.

    .venv/bin/python scripts/bench_pairs.py --rounds 3 --seconds 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

VARIANTS = {
    "release-order": ["--release-order"],
    "exact": [],
    "fast": ["--mode", "fast"],
}


def run(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "flametalk", "bench", "--random-init", "--seconds", str(args.seconds),
           "--threads", str(args.threads), "--device", args.device, "--repeat", "1", "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, extra in VARIANTS.items():
            res = run(args, extra)
            results[name].append(res)
            print(f"round {r + 1} {name:14s} {json.dumps(res)}", flush=True)
    print(f"\n| variant | s compute per s audio (median of {args.rounds}) | speed-up vs release order (median of "
          f"per-round ratios) | peak RSS MB |")
    print("|---|---|---|---|")
    base = [x["seconds_compute"] for x in results["release-order"]]
    for name, rows in results.items():
        rtf = statistics.median(x["rtf"] for x in rows)
        speedup = statistics.median(b / x["seconds_compute"] for b, x in zip(base, rows, strict=True))
        rss = max(x["peak_rss_mb"] for x in rows)
        print(f"| {name} | {rtf:.3f} | {speedup:.2f}x | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
