"""Run `python -m flametalk bench` for several variants in alternation and print medians and ratios.

Machines here are shared and noisy: the variants run interleaved (A B C A B C ...), each in a fresh process, and
the speed-up is computed per round against the release-order baseline, so drift of the machine cancels out.
With --repeat N each process times N runs; the table then also gives the per-round minimum (the least disturbed
run), a steadier figure when other tenants load the host.

    .venv/bin/python scripts/bench_pairs.py --rounds 3 --seconds 20 --threads 2 [--repeat 3]
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
           "--threads", str(args.threads), "--device", args.device, "--repeat", str(args.repeat), "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per process")
    args = p.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, extra in VARIANTS.items():
            res = run(args, extra)
            results[name].append(res)
            print(f"round {r + 1} {name:14s} {json.dumps(res)}", flush=True)
    print(f"\n| variant | s compute per s audio (median of {args.rounds}) | speed-up vs release order (median of "
          f"per-round ratios) | fastest run (s/s) and its speed-up | peak RSS MB |")
    print("|---|---|---|---|---|")
    base = results["release-order"]
    for name, rows in results.items():
        rtf = statistics.median(x["rtf"] for x in rows)
        speedup = statistics.median(b["rtf"] / x["rtf"] for b, x in zip(base, rows, strict=True))
        best = statistics.median(b["rtf_min"] / x["rtf_min"] for b, x in zip(base, rows, strict=True))
        rtf_min = min(x["rtf_min"] for x in rows)
        rss = max(x["peak_rss_mb"] for x in rows)
        print(f"| {name} | {rtf:.3f} | {speedup:.2f}x | {rtf_min:.3f}, {best:.2f}x | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
