"""Write a FLAME-layout stand-in head built from Blender's Suzanne, for pictures and demos without FLAME.

    python scripts/standin_head.py suzanne_flame.npz

FLAME itself is licensed and cannot ship with the project, and the random test heads in
blender_addon/flame/synthetic.py are not meant to be looked at. This file has FLAME's keys and shapes (5 joints,
300 shape + 100 expression directions, 36 pose correctives) on a subdivided, triangulated Suzanne: the jaw bone
carries the lower front of the face, and the expression directions are smooth random fields over the face, so a
keyed take visibly opens the mouth and moves the cheeks. It is a picture prop, not a face model.

The picture docs/images/readme_frame.png was made with it, the reduced parity model (tests' conftest
`parity_checkpoint_dir`; its motion is far larger than the release's, hence the scaled-down jaw and head) and the
demo line:
    python scripts/standin_head.py suzanne.npz
    FLAMETALK_FLAME=suzanne.npz FLAMETALK_CHECKPOINT=CKPT python scripts/demo.py       # demo/demo.wav
    python -m flametalk generate demo/demo.wav --checkpoint CKPT --out m.npz
    python -m blender_addon.cli animate --flame suzanne.npz --motion m.npz --jaw 0.35 --head 0.15 --out pic.blend
    python scripts/render_preview.py pic.blend docs/images/readme_frame.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blender_addon.flame import synthetic  # noqa: E402
from blender_addon.flame.reader import JOINT_NAMES, N_SHAPE  # noqa: E402

HEAD_WIDTH_M = 0.16


def suzanne() -> tuple[np.ndarray, np.ndarray]:
    """Suzanne's vertices in FLAME's frame (metres, +Y up, face toward +Z) and its triangles."""
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add()
    obj = bpy.context.active_object
    obj.modifiers.new("subdivide", "SUBSURF").levels = 1
    obj.modifiers.new("triangulate", "TRIANGULATE")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    mesh = obj.evaluated_get(depsgraph).to_mesh()
    co = np.empty(3 * len(mesh.vertices))
    mesh.vertices.foreach_get("co", co)
    tris = np.empty(3 * len(mesh.polygons), dtype=np.int64)
    mesh.polygons.foreach_get("vertices", tris)
    blender = co.reshape(-1, 3)
    flame = np.stack([blender[:, 0], blender[:, 2], -blender[:, 1]], axis=1)  # inverse of flame_to_blender
    flame *= HEAD_WIDTH_M / np.ptp(flame[:, 0])
    return flame - flame.mean(axis=0), tris.reshape(-1, 3).astype(np.uint32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def stand_in(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    verts, faces = suzanne()
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    size = hi - lo
    rel = (verts - lo) / size  # 0..1 per axis
    mouth_y = lo[1] + 0.30 * size[1]
    targets = np.array([
        [0.0, lo[1] + 0.05 * size[1], lo[2] + 0.35 * size[2]],  # root: under the head, toward the back
        [0.0, lo[1] + 0.25 * size[1], lo[2] + 0.35 * size[2]],  # neck
        [0.0, mouth_y + 0.08 * size[1], lo[2] + 0.45 * size[2]],  # jaw hinge, behind the mouth
        [0.18 * size[0], lo[1] + 0.62 * size[1], hi[2] - 0.1 * size[2]],  # eyes
        [-0.18 * size[0], lo[1] + 0.62 * size[1], hi[2] - 0.1 * size[2]],
    ])
    j_regressor = np.zeros((len(JOINT_NAMES), len(verts)))
    for j, target in enumerate(targets):
        nearest = np.argsort(np.linalg.norm(verts - target, axis=1))[:6]
        j_regressor[j, nearest] = 1.0 / nearest.size
    # LBS: the lower front of the face follows the jaw, smoothly; the rest follows the neck.
    jaw = _sigmoid((mouth_y - verts[:, 1]) / (0.02 * size[1])) * _sigmoid((rel[:, 2] - 0.55) / 0.05)
    weights = np.zeros((len(verts), len(JOINT_NAMES)))
    weights[:, 2], weights[:, 1] = jaw, 1.0 - jaw
    # Expressions: smooth quadratic displacement fields, strongest on the front of the face.
    front = _sigmoid((rel[:, 2] - 0.5) / 0.08)[:, None]
    basis = np.stack([np.ones(len(verts)), rel[:, 0] - 0.5, rel[:, 1] - 0.5, (rel[:, 0] - 0.5) ** 2,
                      (rel[:, 1] - 0.5) ** 2, (rel[:, 0] - 0.5) * (rel[:, 1] - 0.5)], axis=1)
    n_expr = 100
    expr = np.einsum("vb,bdk->vdk", basis, rng.normal(size=(basis.shape[1], 3, n_expr))) * front[:, :, None]
    expr *= 1.5e-3 / np.sqrt(1 + np.arange(n_expr) / 10)
    shapedirs = np.concatenate([np.zeros((len(verts), 3, N_SHAPE)), expr], axis=2)
    return {
        "v_template": verts, "f": faces, "shapedirs": shapedirs,
        "posedirs": np.zeros((len(verts), 3, 9 * (len(JOINT_NAMES) - 1))), "J_regressor": j_regressor,
        "weights": weights, "kintree_table": np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": j_regressor @ verts,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".npz"):
        sys.exit("usage: python scripts/standin_head.py OUT.npz")
    print(synthetic.write_npz(sys.argv[1], stand_in()))
