"""Time the retarget core (fit, then transfer + solve) for a 60-s motion on a ~50,000-vertex head with 53 keys.

The head is the ICT head (../shared/characters/ict_face.glb) subdivided once (every triangle into 4: ~53,000
vertices), in cm and moved; the FLAME-format model is the ICT head itself (13,294 vertices, more than FLAME's
5,023) with all 100 expression components used (the 53 ICT shapes, then 47 random mixtures of them), a jaw joint
and zero pose correctives, driven by a smooth random 1,500-frame motion with the jaw moving (so the per-frame
skinning path runs). Prints one JSON line: seconds for fit and for transfer+solve, peak RSS, sizes.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_retarget.py [--frames 1500]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "inference"), str(ROOT / "tests")]

from fixtures.ict_flame import ict, ict_character, ict_flame_arrays, to_flame  # noqa: E402
from flametalk.flame.reader import validate  # noqa: E402
from flametalk.retarget import Transfer, fit, solve, symmetry_pairs  # noqa: E402
from flametalk.testing.synthetic_flame import random_motion  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500)
    args = parser.parse_args()
    mesh = ict()
    arrays = dict(ict_flame_arrays(tuple(mesh.names)))
    shapedirs = arrays["shapedirs"].copy()
    mix = np.random.default_rng(0).normal(size=(len(mesh.names), 100 - len(mesh.names))) / len(mesh.names) ** 0.5
    deltas = to_flame(mesh.deltas.astype(np.float64))  # (53, V, 3)
    shapedirs[:, :, 300 + len(mesh.names):] = np.einsum("kva,km->vam", deltas, mix)
    arrays["shapedirs"] = shapedirs
    flame = validate(arrays, "2020", "bench")
    character = ict_character(subdivide=True)
    motion = random_motion(args.frames, seed=5, expr_scale=0.2).astype(np.float64)
    motion[:, 103] = np.abs(motion[:, 103])  # the jaw opens (positive x), as in real motion
    motion[:, 104:] *= 0.1

    t0 = time.perf_counter()
    fitted = fit(flame, character)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    transfer = Transfer(flame, fitted)
    gram, rhs, norms = transfer.project(character.deltas[:, transfer.face], motion)
    t_project = time.perf_counter() - t0
    t1 = time.perf_counter()
    weights, residual = solve(gram, rhs, norms, character.ranges, len(transfer.face), fitted.mm_per_unit,
                              symmetry_pairs(character.names))
    t_solve = time.perf_counter() - t1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "vertices": character.n_verts, "face_vertices": len(transfer.face), "keys": character.n_keys,
        "flame_vertices": flame.n_verts, "frames": args.frames,
        "fit_s": round(t_fit, 2), "fit_rms_mm": round(fitted.rms_mm, 4),
        "transfer_s": round(t_project, 2), "solve_s": round(t_solve, 2),
        "transfer_plus_solve_s": round(t_project + t_solve, 2),
        "residual_rms_mm_mean": round(float(residual.mean()), 3), "weights_max": float(weights.max()),
        "peak_rss_mb": round(peak_mb, 1),
    }))


if __name__ == "__main__":
    main()
