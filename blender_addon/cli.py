"""Headless command line (run with a Python that has the bpy module):

    python -m blender_addon.cli animate --flame FLAME --motion MOTION.npz --out take.blend [--glb F] [--fbx F]

Builds the FLAME rig from the user's FLAME file, keys the motion at the scene fps (default 25) and saves the .blend
(optionally a .glb/.fbx too). The head mesh keeps FLAME's vertex order, so a checker can evaluate the saved file
frame by frame against its own FLAME forward pass. Bad input: one line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .flame import FlameFileError, load_flame, load_shape_coefficients

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A user mistake found by the CLI itself (paths, options)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise CliError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m blender_addon.cli", description="FlameTalk headless tools (Blender as bpy).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    animate = commands.add_parser("animate", help="build the FLAME rig, key a motion, save a .blend")
    animate.add_argument("--flame", required=True, help="FLAME file: generic_model.pkl, FLAME_with_eye.pt or .npz")
    animate.add_argument("--motion", required=True, help="motion .npz: 'motion' (T, 106) float32 and 'fps'")
    animate.add_argument("--out", required=True, help="output .blend")
    animate.add_argument("--glb", help="also export glTF binary here")
    animate.add_argument("--fbx", help="also export FBX here")
    animate.add_argument("--fps", type=float, default=25.0, help="scene frame rate (default 25)")
    animate.add_argument("--shape", help="identity: up to 300 FLAME shape coefficients (.npy/.npz/.txt)")
    animate.add_argument("--take", default="FlameTalk take", help="name of the take's actions")
    animate.add_argument("--start-frame", type=int, default=1, help="scene frame of the first motion frame")
    animate.add_argument("--flame-version", choices=("2020", "2023"), help="override the detected FLAME version")
    return parser


def _check_output(path: str | None, suffix: str, option: str) -> str | None:
    if path is None:
        return None
    path = os.path.abspath(path)
    if not path.lower().endswith(suffix):
        raise CliError(f"{option} must end with {suffix}: {path}")
    if not os.path.isdir(os.path.dirname(path)):
        raise CliError(f"{option}: folder does not exist: {os.path.dirname(path)}")
    return path


def _set_scene_fps(scene: object, fps: float) -> None:
    if not (0 < fps <= 1000):
        raise CliError(f"--fps must be positive, got {fps:g}")
    whole = max(1, round(fps))
    scene.render.fps = whole
    scene.render.fps_base = whole / fps  # e.g. 29.97 -> 30 / 1.001


def _export(rig: object, glb: str | None, fbx: str | None) -> None:
    import bpy

    if not (glb or fbx):
        return
    bpy.ops.object.select_all(action="DESELECT")
    for obj in (rig.armature, rig.mesh):  # the helper mesh is an implementation detail: leave it out
        obj.select_set(True)
    bpy.context.view_layer.objects.active = rig.armature
    if glb:
        bpy.ops.export_scene.gltf(
            filepath=glb, export_format="GLB", use_selection=True, export_animation_mode="ACTIVE_ACTIONS",
            export_morph_normal=False, export_try_sparse_sk=False,
        )
    if fbx:
        bpy.ops.export_scene.fbx(
            filepath=fbx, use_selection=True, object_types={"ARMATURE", "MESH"}, add_leaf_bones=False,
            bake_anim=True, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
        )


def animate(args: argparse.Namespace) -> int:
    out = _check_output(args.out, ".blend", "--out")
    glb = _check_output(args.glb, ".glb", "--glb")
    fbx = _check_output(args.fbx, ".fbx", "--fbx")
    try:
        import bpy
    except ImportError:
        raise CliError("needs Blender's Python module 'bpy' (pip install bpy==5.0.1 on Python 3.11)") from None
    from . import keyframes, rig

    # Read and check every input before touching the scene.
    model = load_flame(args.flame, version=args.flame_version, use_torch=False)
    shape = load_shape_coefficients(args.shape, model.n_shape) if args.shape else None
    motion, motion_fps = keyframes.load_motion(args.motion)

    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    scene = bpy.context.scene
    _set_scene_fps(scene, args.fps)
    flame_rig = rig.build_rig(model, shape)
    take = keyframes.write_take(flame_rig, motion, motion_fps, name=args.take, start_frame=args.start_frame)
    keyframes.fit_scene_range(scene, take)
    scene.frame_set(scene.frame_start)
    for warning in flame_rig.warnings + take.warnings:
        print(f"flametalk: warning: {warning}", file=sys.stderr)
    bpy.ops.wm.save_as_mainfile(filepath=out, check_existing=False)
    _export(flame_rig, glb, fbx)
    first, last = take.frame_range
    print(f"flametalk: wrote {out} ({len(motion)} frames at {motion_fps:g} fps -> scene frames {first:g}..{last:g})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return animate(args)
    except (CliError, FlameFileError, ValueError) as err:
        message = " ".join(str(err).split())  # always exactly one line
        print(f"flametalk: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as err:  # bpy operators report their failures this way (e.g. an export)
        message = " ".join(str(err).split())
        print(f"flametalk: error: Blender failed: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
