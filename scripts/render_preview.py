"""Render a preview PNG of a FlameTalk .blend: the frame where the jaw is most open, Workbench, front view.

    python scripts/render_preview.py take.blend preview.png [--size 512] [--frame N]

Workbench because it needs no GPU and is the quickest of Blender's engines headless.
The camera is placed from the head's evaluated bounding box, looking at the face (FLAME's +Z face is Blender's -Y).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import bpy
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blender_addon.scene import compat


def jaw_open_frame(arm: bpy.types.Object) -> int | None:
    """The keyed frame with the largest jaw rotation (smallest quaternion w), or None without jaw keys."""
    action = arm.animation_data.action if arm.animation_data else None
    if action is None:
        return None
    for fc in compat.iter_action_fcurves(action):
        if fc.data_path == 'pose.bones["jaw"].rotation_quaternion' and fc.array_index == 0 and fc.keyframe_points:
            co = np.empty(2 * len(fc.keyframe_points))
            fc.keyframe_points.foreach_get("co", co)
            frames, w = co[0::2], co[1::2]
            return round(frames[int(np.argmin(w))])
    return None


def head_bounds(mesh: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = mesh.evaluated_get(depsgraph)
    data = evaluated.to_mesh()
    try:
        co = np.empty(3 * len(data.vertices))
        data.vertices.foreach_get("co", co)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(evaluated.matrix_world)
    pts = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    return pts.min(axis=0), pts.max(axis=0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("blend")
    parser.add_argument("png")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frame", type=int, help="frame to render (default: jaw most open)")
    args = parser.parse_args(argv)

    bpy.ops.wm.open_mainfile(filepath=args.blend)
    scene = bpy.context.scene
    meshes = [o for o in scene.objects if o.type == "MESH" and o.data.shape_keys and not o.hide_render]
    arms = [o for o in scene.objects if o.type == "ARMATURE"]
    if not meshes:
        print(f"render_preview: no FLAME head in {args.blend}", file=sys.stderr)
        return 2
    mesh = max(meshes, key=lambda o: len(o.data.vertices))
    frame = args.frame or (jaw_open_frame(arms[0]) if arms else None) or scene.frame_start
    scene.frame_set(frame)
    low, high = head_bounds(mesh)
    center, extent = (low + high) / 2, float(np.max(high - low))

    cam_data = bpy.data.cameras.new("FlameTalk preview")
    cam_data.lens = 85.0
    camera = bpy.data.objects.new("FlameTalk preview", cam_data)
    scene.collection.objects.link(camera)
    distance = extent * 0.5 * cam_data.lens / cam_data.sensor_width * 2.6  # the head fills ~70 % of the frame
    camera.location = (center[0], low[1] - distance, center[2])
    camera.rotation_euler = (math.pi / 2, 0.0, 0.0)  # looking along +Y, at the face
    cam_data.clip_start, cam_data.clip_end = distance * 0.01, distance * 10
    scene.camera = camera

    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light, shading.color_type = "STUDIO", "SINGLE"
    shading.single_color = (0.80, 0.62, 0.52)
    shading.show_cavity = True
    scene.render.resolution_x = scene.render.resolution_y = args.size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = args.png
    bpy.ops.render.render(write_still=True)
    print(f"render_preview: wrote {args.png} (frame {frame})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
