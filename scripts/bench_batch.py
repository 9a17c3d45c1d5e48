"""Batch-CLI throughput: the worker computing the next line while Blender writes one, against taking turns.

    .venv/bin/python scripts/bench_batch.py [--rounds 2] [--modes fast exact] [--work DIR]

Builds (once, in --work) a full-size synthetic FLAME head, a full-size random-weight checkpoint folder (2 GB) and six
dialogue lines (three copies each of ../shared/audio/cn1.wav, 9.2 s, and eng2.wav, 3.4 s), then runs
`python -m blender_addon.cli batch ... --glb --fbx --device cpu` per mode, overlapped (default) and with
--no-overlap, interleaved. Prints each run's per-line seconds from batch_report.json and the sum over lines 2-6
(the first line also pays for starting the worker and loading the model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"


def prepare(work: Path) -> tuple[Path, Path, list[Path]]:
    sys.path.insert(0, str(ROOT))
    work.mkdir(parents=True, exist_ok=True)
    head = work / "head.npz"
    if not head.exists():
        from flametalk.testing import synthetic_flame as synthetic

        synthetic.write_npz(str(head), synthetic.make_arrays())
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").exists():
        import torch
        from flametalk.model.config import ARTalkConfig
        from flametalk.model.random_init import random_init_model

        checkpoint.mkdir(exist_ok=True)
        cfg = ARTalkConfig()
        torch.save(random_init_model(cfg, "exact", torch.device("cpu")).state_dict(), checkpoint / "model.pt")
        (checkpoint / "config.json").write_text(json.dumps(cfg.to_release_dict(), indent=1))
    lines = []
    for i in range(1, 4):
        for stem in ("cn1", "eng2"):
            path = work / "lines" / f"{stem}_{i}.wav"
            path.parent.mkdir(exist_ok=True)
            if not path.exists():
                shutil.copy(AUDIO / f"{stem}.wav", path)
            lines.append(path)
    return head, checkpoint, sorted(lines)


def run(head: Path, checkpoint: Path, lines: list[Path], mode: str, overlap: bool, out: Path) -> list[float]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "blender_addon.cli", "batch", *map(str, lines), "--flame", str(head),
           "--checkpoint", str(checkpoint), "--out-dir", str(out), "--glb", "--fbx", "--device", "cpu",
           "--worker-python", sys.executable, "--mode", mode] + ([] if overlap else ["--no-overlap"])
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    report = json.loads((out / "batch_report.json").read_text())
    seconds = [float(e["seconds"]) for e in report["lines"]]
    print(f"{mode:5s} {'overlap' if overlap else 'turns':7s} wall {wall:6.2f} s  lines {seconds}  "
          f"lines 2-{len(seconds)}: {sum(seconds[1:]):.2f} s", flush=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["fast", "exact"])
    p.add_argument("--work", type=Path, default=Path("/tmp/flametalk_bench_batch"))
    args = p.parse_args()
    head, checkpoint, lines = prepare(args.work)
    for _ in range(args.rounds):
        for mode in args.modes:
            for overlap in (True, False):
                run(head, checkpoint, lines, mode, overlap, args.work / "out")


if __name__ == "__main__":
    main()
