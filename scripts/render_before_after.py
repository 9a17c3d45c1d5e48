"""Render the README's before/after picture: the ICT head at rest and keyed by a FlameTalk retarget.

What drives it (say so in any caption): no real FLAME model or trained ARTalk weights may be used here, so the
motion is a hand-made 1-s FLAME-format motion (the jaw opens to JAW rad, a symmetric smile and raised inner brows
rise with it) for the ICT-based FLAME-format test model of tests/fixtures/ict_flame.py (ICT's neutral as the
template, its 53 shapes as the expression basis, a jaw joint skinning the lower face), written as a FLAME .npz.
That motion goes through exactly what users run:
    python -m blender_addon.cli retarget --flame ict_flame.npz --motion speech.npz \
        --character ../shared/characters/ict_face.glb --out ict_take.blend --no-head --report report.json
(fit, transfer, bounded least squares onto the glTF head's own 53 shape keys, keyed as a character take). The
script then opens OUT.blend with the `bpy` module and renders, with Cycles on the CPU, the head with its shape keys
at 0 (left) beside the same head at the motion's widest-open frame (right), one PNG.

    .venv/bin/python scripts/render_before_after.py [--out docs/ict_before_after.png] [--samples 24]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "inference"), str(ROOT / "tests"), str(ROOT)]

from fixtures.gltf import ICT_FACE  # noqa: E402
from fixtures.ict_flame import ict, ict_flame_arrays  # noqa: E402

FRAMES, JAW, SMILE, BROWS = 25, 0.22, 0.6, 0.5


def write_inputs(folder: Path) -> tuple[str, str, int]:
    """(FLAME .npz, motion .npz, the widest-open motion frame)."""
    from flametalk.testing.synthetic_flame import write_npz

    names = tuple(ict().names)
    flame = write_npz(str(folder / "ict_flame.npz"), dict(ict_flame_arrays(names)))
    ramp = np.sin(np.pi * np.arange(FRAMES) / (FRAMES - 1))  # 0 -> 1 -> 0 over one second
    motion = np.zeros((FRAMES, 106), np.float32)
    motion[:, 103] = JAW * ramp  # jaw rotation about FLAME's x axis: positive opens
    for name, value in (("mouthSmile_L", SMILE), ("mouthSmile_R", SMILE), ("browInnerUp_L", BROWS),
                        ("browInnerUp_R", BROWS)):
        motion[:, names.index(name)] = value * ramp
    path = folder / "speech.npz"
    np.savez(path, motion=motion, fps=np.float32(25))
    return flame, str(path), int(np.argmax(ramp))


def retarget(flame: str, motion: str, out: Path, report: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "inference"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "blender_addon.cli", "retarget", "--flame", flame, "--motion",
                           motion, "--character", str(ICT_FACE), "--out", str(out), "--no-head", "--report",
                           str(report)], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    print(done.stdout.strip().splitlines()[-1])
    return json.loads(report.read_text())


def render(blend: Path, frame: int, png: Path, samples: int) -> dict[str, float]:
    import bpy

    bpy.ops.wm.open_mainfile(filepath=str(blend), load_ui=False)
    scene = bpy.context.scene
    obj = next(o for o in scene.objects if o.type == "MESH" and o.data.shape_keys is not None)
    scene.frame_set(scene.frame_start + frame)  # 25 fps scene: motion frame t at scene frame start + t
    weights = {b.name: round(b.value, 3) for b in obj.data.shape_keys.key_blocks[1:] if abs(b.value) > 0.05}
    corners = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    width = hi[0] - lo[0]
    # the neutral copy: the same mesh and shape keys, no animation, every key at 0
    rest = obj.copy()
    rest.data = obj.data.copy()
    rest.data.shape_keys.animation_data_clear()
    for block in rest.data.shape_keys.key_blocks[1:]:
        block.value = 0.0
    scene.collection.objects.link(rest)
    gap = 1.1 * width
    rest.location.x -= gap / 2
    obj.location.x += gap / 2
    skin = bpy.data.materials.new("skin")
    bsdf = skin.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (0.72, 0.52, 0.42, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.55
    for o in (obj, rest):
        o.data.materials.clear()
        o.data.materials.append(skin)
        for poly in o.data.polygons:
            poly.use_smooth = True
    # face height: from the chin to above the brows (the neck and scalp are cropped)
    top, bottom = lo[2] + 0.93 * (hi[2] - lo[2]), lo[2] + 0.30 * (hi[2] - lo[2])
    centre = ((lo[0] + hi[0]) / 2, lo[1], (top + bottom) / 2)
    cam_data = bpy.data.cameras.new("cam")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = 2.15 * width
    cam = bpy.data.objects.new("cam", cam_data)
    cam.location = (centre[0], centre[1] - 3 * width, centre[2])
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)  # looking along +Y, at the face
    scene.collection.objects.link(cam)
    scene.camera = cam
    for name, energy, loc in (("key", 8.0, (-1.2, -2.0, 1.2)), ("fill", 2.5, (1.5, -1.6, 0.2))):
        light_data = bpy.data.lights.new(name, "AREA")
        light_data.energy = energy * width**2 / 0.04
        light_data.size = width
        light = bpy.data.objects.new(name, light_data)
        light.location = tuple(c + width * d for c, d in zip(centre, loc, strict=True))
        dx, dy, dz = np.array(centre) - np.array(light.location)
        light.rotation_euler = (math.atan2(math.hypot(dx, dy), -dz), 0.0, math.atan2(-dx, dy))  # -Z at the face
        scene.collection.objects.link(light)
    world = scene.world or bpy.data.worlds.new("world")
    scene.world = world
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.055, 0.065, 1.0)
    render = scene.render
    render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    try:
        scene.cycles.use_denoising = True
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
    except (AttributeError, TypeError):
        scene.cycles.use_denoising = False
    render.resolution_x, render.resolution_y = 720, int(720 * (top - bottom) * 1.25 / (2.15 * width))
    render.resolution_percentage = 100
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.compression = 100
    render.filepath = str(png)
    bpy.ops.render.render(write_still=True)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "ict_before_after.png"))
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flametalk_render_") as tmp:
        folder = Path(tmp)
        flame, motion, peak = write_inputs(folder)
        report = retarget(flame, motion, folder / "ict_take.blend", folder / "report.json")
        weights = render(folder / "ict_take.blend", peak, Path(args.out).absolute(), args.samples)
    print(json.dumps({"png": args.out, "bytes": Path(args.out).stat().st_size, "frame": peak,
                      "fit_rms_mm": report["fit"]["rms_mm"], "residual_rms_mm": report["residual_rms_mm"],
                      "keys_above_0.05": weights}))


if __name__ == "__main__":
    main()
