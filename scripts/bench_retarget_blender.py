"""Time `python -m blender_addon.cli retarget` end to end: 60 s of motion onto a ~53,000-vertex head with 53 keys.

Builds (once, in --work) the ICT head (../shared/characters/ict_face.glb) x100 (cm), triangulated and subdivided
once in Blender (53,041 vertices, the shape keys subdivided with it), saved as ict_50k_cm.blend; the ICT-based
FLAME-format model (tests/fixtures/ict_flame.py: 27 of the ICT shapes as expression basis, a jaw joint); a
1,500-frame motion (the 27 expression channels with known smooth weights, a moving jaw, a small head turn). Then
runs the CLI --rounds times (round 1 fits the character; later rounds reuse the fit stored in round 1's
OUT.blend, as a user's second take does) and prints one JSON line per round: the --report seconds (fit, solve =
transfer + bounded least squares on the worker, write = keying + saving) and the CLI's wall time, then a summary
line with min/median/max of solve + write over the rounds that reused the fit.

    .venv/bin/python scripts/bench_retarget_blender.py [--work /tmp/bench_retarget] [--rounds 3] [--frames 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "inference"), str(ROOT / "tests"), str(ROOT)]

from fixtures.gltf import ICT_FACE  # noqa: E402
from fixtures.ict_flame import expr_keys, smooth_weights, write_ict_flame  # noqa: E402


def build_head(path: Path) -> int:
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.import_scene.gltf(filepath=str(ICT_FACE))
    obj = bpy.data.objects["ICT_Face"]
    obj.scale = (100.0, 100.0, 100.0)
    bpy.ops.object.select_all(action="DESELECT")
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.transform_apply(location=True, rotation=True, scale=True)
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.mesh.quads_convert_to_tris()
    bpy.ops.mesh.subdivide(number_cuts=1)
    bpy.ops.object.mode_set(mode="OBJECT")
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return len(obj.data.vertices)


def motion(frames: int) -> np.ndarray:
    keys = expr_keys()
    out = np.zeros((frames, 106), np.float32)
    out[:, : len(keys)] = smooth_weights(frames, len(keys), seed=5)
    t = np.arange(frames) / 25.0
    out[:, 103] = 0.1 * (1 - np.cos(2 * np.pi * 1.3 * t))  # the jaw opens and closes
    out[:, 100] = 0.05 * np.sin(2 * np.pi * 0.2 * t)  # a small head turn
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/bench_retarget")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1500)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    head = work / "ict_50k_cm.blend"
    if not head.exists():
        print(json.dumps({"built": str(head), "vertices": build_head(head)}), flush=True)
    flame = work / "ict_flame.npz"
    if not flame.exists():
        write_ict_flame(flame, expr_keys())
    np.savez(work / "motion.npz", motion=motion(args.frames), fps=np.float32(25))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "inference"), str(ROOT)])}
    totals = []
    for round_ in range(args.rounds):
        character = head if round_ == 0 else work / "out_0.blend"
        out, report = work / f"out_{round_}.blend", work / f"report_{round_}.json"
        clock = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "blender_addon.cli", "retarget", "--flame", str(flame),
                               "--motion", str(work / "motion.npz"), "--character", str(character),
                               "--out", str(out), "--report", str(report)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - clock
        if done.returncode:
            sys.exit(done.stderr)
        seconds = json.loads(report.read_text())["seconds"]
        line = {"round": round_, "character": character.name, **seconds,
                "solve_plus_write": round(seconds["solve"] + seconds["write"], 3), "cli_wall": round(wall, 2)}
        if round_:
            totals.append(line["solve_plus_write"])
        print(json.dumps(line), flush=True)
    if totals:
        print(json.dumps({"solve_plus_write": {"min": min(totals), "median": statistics.median(totals),
                                               "max": max(totals)}, "rounds": len(totals)}))


if __name__ == "__main__":
    main()
