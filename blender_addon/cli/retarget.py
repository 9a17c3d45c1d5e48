"""`python -m blender_addon.cli retarget`: key FLAME motion onto a character with shape keys.

    python -m blender_addon.cli retarget --flame FLAME --motion M.npz --character CHAR --out OUT.blend
        [--object NAME] [--shape-keys all|arkit|N1,N2,...] [--jaw-bone B] [--head-bone B | --no-head]
        [--scene-fps F] [--start-frame S] [--glb G] [--fbx X] [--csv C] [--report R.json]

CHAR: .glb/.gltf/.fbx (Blender's importers, into an empty scene) or .blend (opened; the mesh named by --object,
else the only mesh with shape keys). The character is written as a character file, the worker fits FLAME to it
(unless the mesh carries a stored fit) and solves the shape key weights (flametalk.retarget), and the weights are
keyed as a take (scene/retarget.py); the fit is stored on the mesh. Motion frame t lands on scene frame
S + t * F / 25. OUT.blend, the exports, the CSV (Live Link Face layout, core/livelink.py) and the report are
written together through core/staging.py. Bad input: one line, exit 2, no file written.

`animate --character CHAR --audio A.wav` generates the motion with the model first (animate.py), `batch
--character` does so per line (batch.py); both end here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.controls import Controls, apply_controls
from ..core.livelink import arkit_columns, write_live_link_csv
from ..core.staging import StagedOutputs
from ..flame.contract import MOTION_FPS
from ..worker.runtime import automatic_worker_python
from .interrupts import check_interrupt, hold_interrupts
from .take import CliError, _check_output, _set_scene_fps, check_fps

CHARACTER_SUFFIXES = (".glb", ".gltf", ".fbx", ".blend")
_FIT_CACHE: dict[tuple, dict[str, Any]] = {}  # fits made in this process (a batch fits its character once)


def add_character_options(parser: argparse.ArgumentParser, with_character: bool = True,
                          per_line: bool = False) -> None:
    """Options of `retarget` that `animate --character` and `batch --character` share (`per_line`: the batch's
    --csv is a flag, <audio stem>.csv beside each .blend; no --report)."""
    if with_character:
        parser.add_argument("--character", help="key the take onto this character (.glb/.gltf/.fbx or .blend with "
                                                "a mesh with shape keys) instead of a FLAME head")
    parser.add_argument("--object", help="the character mesh (default: the only mesh with shape keys)")
    parser.add_argument("--shape-keys", default="all", metavar="all|arkit|N1,N2,...",
                        help="which shape keys to solve for (default all)")
    parser.add_argument("--jaw-bone", help="jaw bone of the character's armature: it takes FLAME's jaw rotation")
    head = parser.add_mutually_exclusive_group()
    head.add_argument("--head-bone", help="head/neck bone that takes the head rotation (default: the object)")
    head.add_argument("--no-head", action="store_true", help="leave the head rotation out")
    parser.add_argument("--face-group", help="vertex group limiting the fit to the face")
    if per_line:
        parser.add_argument("--csv", action="store_true", help="with --character: also <audio stem>.csv (Live "
                                                               "Link Face CSV of the ARKit weights)")
        return
    parser.add_argument("--csv", help="also write the ARKit weights as Live Link Face CSV here")
    parser.add_argument("--report", help="also write the fit and solve numbers as JSON here")


def add_retarget_parser(commands: Any, parser_class: type) -> argparse.ArgumentParser:
    parser = commands.add_parser("retarget", help="key FLAME motion onto a character with shape keys")
    parser.add_argument("--flame", required=True, help="FLAME file the motion belongs to")
    parser.add_argument("--motion", required=True, help="motion .npz (T, 106) at 25 fps")
    parser.add_argument("--character", required=True, help="character: .glb/.gltf/.fbx or .blend")
    parser.add_argument("--out", required=True, help="output .blend")
    parser.add_argument("--glb", help="also export glTF binary here")
    parser.add_argument("--fbx", help="also export FBX here")
    parser.add_argument("--take", help="take name (default: <motion stem>_<character>)")
    parser.add_argument("--fps", "--scene-fps", dest="fps", type=float, default=float(MOTION_FPS),
                        help=f"scene frame rate (default {MOTION_FPS})")
    parser.add_argument("--start-frame", type=int, default=1, help="scene frame of the first motion frame")
    parser.add_argument("--flame-version", choices=("2020", "2023"), help="override the detected FLAME version")
    parser.add_argument("--worker-python", help="Python with flametalk (numpy, scipy) that runs the solve")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds")
    parser.add_argument("--jaw", type=float, default=1.0, help="jaw intensity (default 1)")
    parser.add_argument("--expression", type=float, default=1.0, help="expression intensity (default 1)")
    parser.add_argument("--head", type=float, default=1.0, help="head-motion intensity (default 1)")
    parser.add_argument("--smoothing", type=float, default=0.0, help=f"Gaussian sigma in {MOTION_FPS} fps frames")
    parser.add_argument("--simplify", type=float, metavar="MAX_ERROR", help="fewer keys: largest weight error")
    parser.add_argument("--nla", action="store_true", help="push the take onto NLA tracks")
    add_character_options(parser, with_character=False)
    return parser


def check_character_args(args: argparse.Namespace) -> dict[str, str | None]:
    """Output paths and the character's file checked before anything runs; returns the absolute outputs."""
    character = str(Path(args.character).absolute())
    if not Path(character).is_file():
        raise CliError(f"character file not found: {character}")
    if not character.lower().endswith(CHARACTER_SUFFIXES):
        raise CliError(f"--character must be a .glb, .gltf, .fbx or .blend file: {character}")
    spec = (args.shape_keys or "").strip()
    if not spec or (spec.lower() not in ("all", "arkit") and not [k for k in spec.split(",") if k.strip()]):
        raise CliError("--shape-keys must be all, arkit or a comma-separated list of shape key names")
    return {"csv": _check_output(args.csv, ".csv", "--csv"), "report": _check_output(args.report, ".json",
                                                                                         "--report")}


def _keys(spec: str) -> str | list[str]:
    spec = spec.strip()
    if spec.lower() in ("all", "arkit"):
        return spec.lower()
    return [k.strip() for k in spec.split(",") if k.strip()]


def load_character_scene(path: str) -> None:
    """An empty scene holding the character file's objects (.blend: that file opened)."""
    import bpy

    path = str(Path(path).absolute())
    try:
        if path.lower().endswith(".blend"):
            bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
            return
        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        if path.lower().endswith(".fbx"):
            bpy.ops.import_scene.fbx(filepath=path)
        else:
            bpy.ops.import_scene.gltf(filepath=path)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise CliError(f"cannot read the character {Path(path).name}: {first}") from None


def solve_on_worker(args: argparse.Namespace, obj: Any, motion: np.ndarray) -> tuple[dict, dict]:
    """scene/retarget.solve with the command line's options; a worker's input error is a CliError."""
    from ..scene import retarget

    python = args.worker_python or automatic_worker_python() or sys.executable
    try:
        return retarget.solve(obj, motion, args.flame, python, keys=_keys(args.shape_keys),
                              face_group=args.face_group, jaw_bone=args.jaw_bone, flame_version=args.flame_version,
                              timeout=args.timeout, fit_cache=_FIT_CACHE)
    except retarget.RetargetError as err:
        if err.kind == "input":
            raise CliError(str(err)) from None
        raise RuntimeError(str(err)) from None


def run_retarget(args: argparse.Namespace, motion: np.ndarray, outputs: dict[str, str | None],
                 take_name: str) -> dict[str, Any]:
    """Character loaded, motion solved on the worker, keyed, every output written (staged). `motion`: (T, 106)
    at 25 fps, controls not yet applied."""
    import bpy

    from ..scene import character, retarget, takes

    controls = Controls(jaw=args.jaw, expression=args.expression, head=args.head, smoothing=args.smoothing)
    try:
        controls.check()
    except ValueError as err:
        raise CliError(str(err)) from None
    motion = apply_controls(motion, controls)
    load_character_scene(args.character)
    obj = character.find_character(args.object)
    retarget.check_bones(obj, args.jaw_bone, args.head_bone)
    scene = bpy.context.scene
    _set_scene_fps(scene, args.fps)
    result, event = solve_on_worker(args, obj, motion)
    if outputs.get("csv") and not arkit_columns(result["names"]):
        raise CliError("--csv needs ARKit-named shape keys (e.g. jawOpen, eyeBlinkLeft or eyeBlink_L); the solved "
                       "keys have none (use --shape-keys arkit or all)")
    check_interrupt()
    clock = time.perf_counter()
    simplify = None if args.simplify is None else (float(args.simplify), 0.25 * np.pi / 180)
    take = retarget.key_character_take(obj, result, take_name, scene, start_frame=args.start_frame,
                                       jaw_bone=args.jaw_bone, head_bone=args.head_bone,
                                       head_to_object=not args.no_head, simplify=simplify, push_to_nla=args.nla)
    first, last = take.frame_range
    takes.fit_range(scene, first, last)
    scene.frame_set(scene.frame_start)
    report = {"fit": result["report"]["fit"], "frames": len(result["weights"]), "shape_keys": result["names"],
              "residual_rms_mm": result["report"]["residual_rms_mm"],
              "seconds": {"fit": event["seconds"].get("fit", 0.0),
                          "solve": round(event["seconds"].get("transfer", 0.0) + event["seconds"]["solve"], 3),
                          "write": 0.0}}
    finals = [p for p in (outputs["out"], outputs.get("glb"), outputs.get("fbx"), outputs.get("csv"),
                          outputs.get("report")) if p]
    with hold_interrupts(), StagedOutputs(finals) as staged:
        try:
            bpy.ops.wm.save_as_mainfile(filepath=staged.path(outputs["out"]), check_existing=False, copy=True)
            check_interrupt()
            for option in ("glb", "fbx"):
                if outputs.get(option):
                    retarget.export_character(obj, take, staged.path(outputs[option]))
                    check_interrupt()
            if outputs.get("csv"):
                write_live_link_csv(staged.path(outputs["csv"]), result["names"], result["weights"])
            report["seconds"]["write"] = round(time.perf_counter() - clock, 3)
            if outputs.get("report"):
                with open(staged.path(outputs["report"]), "w", encoding="utf-8") as handle:
                    json.dump(report, handle, indent=1)
        except Exception:
            check_interrupt()
            raise
        staged.commit()
    fit = report["fit"]
    print(f"flametalk: wrote {outputs['out']} (take {take.name} on '{obj.name}': {len(result['weights'])} frames "
          f"-> scene frames {first:g}..{last:g}, {len(result['names'])} shape keys, {take.n_keys} keys; fit "
          f"{fit['rms_mm']:.2f} mm RMS over {fit['vertices_used']} vertices, residual "
          f"{report['residual_rms_mm']:.2f} mm)")
    return {"take": take.name, "frames": len(result["weights"]), "keys": take.n_keys, "report": report,
            "object": obj.name}


def generated_motion(job: Any, timeout: float | None) -> np.ndarray:
    """Wait for a GenerateJob (animate/batch --character) and read its motion (before the controls)."""
    from ..flame.motionfile import read_motion

    job.wait(timeout)
    return read_motion(job.out).motion


def character_take_name(args: argparse.Namespace) -> str:
    source = args.audio or args.motion
    stem = Path(source).stem if source else "take"
    return args.take or f"{stem}_{Path(args.character).stem}"


def retarget(args: argparse.Namespace) -> int:
    from ..scene import keyframes

    outputs: dict[str, str | None] = {"out": _check_output(args.out, ".blend", "--out"),
                                      "glb": _check_output(args.glb, ".glb", "--glb"),
                                      "fbx": _check_output(args.fbx, ".fbx", "--fbx")}
    outputs.update(check_character_args(args))
    check_fps(args.fps)
    if not Path(args.flame).is_file():
        raise CliError(f"FLAME file not found: {Path(args.flame).absolute()}")
    try:
        import bpy  # noqa: F401
    except ImportError:
        raise CliError("needs Blender's Python module 'bpy' (pip install bpy==5.0.1 on Python 3.11)") from None
    motion, fps = keyframes.load_motion(args.motion)
    if abs(fps - MOTION_FPS) > 1e-6:
        raise CliError(f"the motion is at {fps:g} fps; retargeting reads FlameTalk motion at {MOTION_FPS} fps")
    args.audio = None
    run_retarget(args, motion, outputs, character_take_name(args))
    return 0
