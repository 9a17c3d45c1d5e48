"""Run the official release and `python -m flametalk bench` variants in alternation; print medians and ratios.

Machines here are shared and noisy: the variants run interleaved (A B C A B C ...), each in a fresh process, and
the speed-up is computed per round against the baseline of that round, so drift of the machine cancels out.
The baseline is the official release's own code (../shared/tools/release_speed.py on
../shared/reference/artalk_release: full size, random weights, the faster of two timed runs; needs einops) when
it is there, else our re-implementation of the release's computation order (`--release-order`).
With --repeat N each of our processes times N runs; the table then also gives the per-round minimum (the least
disturbed run, the figure comparable with the release script's best of two).

    .venv/bin/python scripts/bench_pairs.py --rounds 3 --seconds 20 --threads 2 [--repeat 2] [--release-order]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
RELEASE = SHARED / "reference" / "artalk_release"
RELEASE_TIMER = SHARED / "tools" / "release_speed.py"
VARIANTS = {
    "release-order": ["--release-order"],
    "exact": [],
    "fast": ["--mode", "fast"],
}


def run(args: argparse.Namespace, extra: list[str]) -> dict:
    if extra == ["RELEASE"]:  # the release's script uses 2 threads and reports the faster of two runs
        cmd = [sys.executable, str(RELEASE_TIMER), str(RELEASE), str(args.seconds)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                         .splitlines()[-1])
        return {**res, "rtf_min": res["rtf"], "peak_rss_mb": float("nan"), "mode": "release"}
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
    p.add_argument("--release-order", action="store_true",
                   help="also run our re-implementation of the release's order (the baseline when the release "
                        "code is not beside the checkout)")
    args = p.parse_args()
    variants = dict(VARIANTS)
    if RELEASE_TIMER.is_file() and RELEASE.is_dir():
        variants = {"release": ["RELEASE"], **variants}
        if not args.release_order:
            del variants["release-order"]
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, extra in variants.items():
            res = run(args, extra)
            results[name].append(res)
            print(f"round {r + 1} {name:14s} {json.dumps(res)}", flush=True)
    baseline = next(iter(variants))
    print(f"\n| variant | s compute per s audio (median of {args.rounds}) | speed-up vs {baseline} (median of "
          f"per-round ratios) | fastest run (s/s) and its speed-up | peak RSS MB |")
    print("|---|---|---|---|---|")
    base = results[baseline]
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
