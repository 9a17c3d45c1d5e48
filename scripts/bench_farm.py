"""Farm throughput: lines per minute of `python -m blender_addon.cli farm` for 3-s lines, on a local Ray instance
(one node) and on a two-node local cluster (ray.cluster_utils.Cluster: two raylets sharing this machine's cores).

    .venv/bin/python scripts/bench_farm.py [--lines 12] [--mode exact] [--work DIR] [--nodes 1 2] [--exports]

Uses bench_batch.py's full-size synthetic head and random-weight checkpoint (built once in --work) and --lines
distinct 3-s lines cut from ../shared/audio (eng2 and three pieces of cn1, at different gains so no line reuses
another's audio features). Prints per run: wall time, lines per minute after the first line finished (the model
load is paid once per model process), and the median model and Blender seconds per line from farm_report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_batch import AUDIO, prepare  # noqa: E402


def make_lines(work: Path, count: int) -> Path:
    import numpy as np
    import soundfile

    folder = work / "farm_lines"
    folder.mkdir(parents=True, exist_ok=True)
    pieces = []
    for stem, starts in (("eng2", (0.2,)), ("cn1", (0.0, 3.0, 6.0))):
        audio, rate = soundfile.read(str(AUDIO / f"{stem}.wav"))
        pieces += [(audio[int(s * rate):int((s + 3.0) * rate)], rate) for s in starts]
    rows = ["audio,name"]
    for i in range(count):
        audio, rate = pieces[i % len(pieces)]
        path = folder / f"line{i:03d}.wav"
        if not path.exists():
            soundfile.write(str(path), np.clip(audio * (1.0 - 0.05 * (i // len(pieces))), -1, 1), rate)
        rows.append(f"{path.name},line{i:03d}")
    manifest = folder / f"lines{count}.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def run(manifest: Path, head: Path, checkpoint: Path, out: Path, mode: str, exports: bool,
        address: str | None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "blender_addon.cli", "farm", str(manifest), "--out-dir", str(out), "--flame",
           str(head), "--checkpoint", str(checkpoint), "--device", "cpu", "--mode", mode,
           "--worker-python", sys.executable] + (["--glb", "--fbx"] if exports else [])
    cmd += ["--ray", address] if address else []
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"farm failed ({run.returncode}): {run.stderr[-2000:]}")
    lines = json.loads((out / "farm_report.json").read_text())["lines"]
    model = [e["model_seconds"] for e in lines]
    blender = [e["blender_seconds"] for e in lines]
    nodes = len({e["node"] for e in lines})
    print(f"{'local' if address is None else 'cluster'} ({nodes} writer node(s)): {len(lines)} lines in {wall:.1f} s "
          f"wall, {steady_rate(out, len(lines)):.1f} lines/min after the first line; median model "
          f"{statistics.median(model):.2f} s (first {max(model):.1f} s: model load), median Blender "
          f"{statistics.median(blender):.2f} s per line", flush=True)


def steady_rate(out: Path, count: int) -> float:
    """Lines per minute between the first and the last finished .blend (the model loads before the first)."""
    stamps = sorted(p.stat().st_mtime for p in out.glob("*.blend"))
    return (count - 1) / max(stamps[-1] - stamps[0], 1e-9) * 60.0 if len(stamps) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=12)
    p.add_argument("--mode", default="exact", choices=("exact", "fast"))
    p.add_argument("--work", type=Path, default=Path("/tmp/flametalk_bench_batch"))
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--exports", action="store_true", help="also --glb --fbx per line")
    args = p.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "inference"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    head, checkpoint, _ = prepare(args.work)
    manifest = make_lines(args.work, args.lines)
    for nodes in args.nodes:
        if nodes == 1:
            run(manifest, head, checkpoint, args.work / "farm_out_1", args.mode, args.exports, None)
            continue
        from ray.cluster_utils import Cluster

        cpus = max(2, (os.cpu_count() or 2) // nodes)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        try:
            run(manifest, head, checkpoint, args.work / f"farm_out_{nodes}", args.mode, args.exports, cluster.address)
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    main()
