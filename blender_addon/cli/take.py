"""The take pipeline `animate` and `batch` share: read and check every input of a take (`prepare_take`), hand its
generation to the warm worker (`start_generation`), then build a fresh scene with the FLAME head, key the motion and
write the .blend (+ .glb / .fbx) through atomic staging (`write_take`).

Every input is checked before a scene or a file is touched; a user mistake is a CliError (one line). The scene
modules need bpy, so they are imported where used: without bpy, `prepare_take` reports it as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.controls import Controls
from ..core.staging import StagedOutputs
from ..core.timing import fps_settings
from ..flame import load_flame, load_shape_coefficients
from ..flame.contract import MOTION_FPS
from ..worker.runtime import automatic_worker_python
from .interrupts import check_interrupt, hold_interrupts


class CliError(Exception):
    """A user mistake found by the CLI itself (paths, options)."""



def check_writable_folder(folder: str, option: str) -> None:
    """CliError unless a file can be created in `folder` (a probe: permission bits say nothing for root, a
    read-only mount or a full quota)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".flametalk-probe-", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CliError(f"{option}: cannot write in {folder} ({reason}): choose a writable folder") from None
    os.close(handle)
    Path(probe).unlink()


def _check_output(path: str | None, suffix: str, option: str) -> str | None:
    if path is None:
        return None
    path = paths.absolute(path)
    if not path.lower().endswith(suffix):
        raise CliError(f"{option} must end with {suffix}: {path}")
    folder = str(Path(path).parent)
    if not Path(folder).is_dir():
        raise CliError(f"{option}: folder does not exist: {folder}")
    if Path(path).is_dir():
        raise CliError(f"{option} is a folder: {path}")
    check_writable_folder(folder, option)
    return path


def check_fps(fps: float) -> None:
    if not (0 < fps <= 1000):
        raise CliError(f"--fps must be positive, got {fps:g}")


def _set_scene_fps(scene: object, fps: float) -> None:
    check_fps(fps)
    scene.render.fps, scene.render.fps_base = fps_settings(fps)  # e.g. 29.97 -> 30 / 1.001


def _style(args: argparse.Namespace) -> object:
    from ..scene.job import StyleSpec

    spec = (args.style or "").strip()
    if spec.lower() in ("", "none", "default"):
        return StyleSpec()
    if os.path.sep in spec or "/" in spec or Path(spec).suffix.lower() in (".pt", ".pth", ".npy", ".npz"):
        return StyleSpec(kind="FILE", path=paths.absolute(spec), start=args.style_start)
    return StyleSpec(kind="RELEASE", name=spec)


def _request(args: argparse.Namespace, scene: object) -> object:
    from ..scene.job import GenerateRequest

    controls = Controls(jaw=args.jaw, expression=args.expression, head=args.head, smoothing=args.smoothing,
                        simplify=args.simplify is not None, expression_tolerance=args.simplify or 0.0,
                        rotation_tolerance_deg=args.simplify_rotation)
    try:
        controls.check()
    except ValueError as err:
        raise CliError(str(err)) from None
    return GenerateRequest(
        rig=None, audio=paths.absolute(args.audio) if args.audio else "",
        checkpoint=paths.absolute(args.checkpoint) if args.checkpoint else str(paths.default_checkpoint_dir()),
        worker_python=args.worker_python or automatic_worker_python() or sys.executable,
        device=args.device.lower(), mode=args.mode, style=_style(args), start_frame=args.start_frame,
        controls=controls, push_to_nla=args.nla, add_sound_strip=bool(args.audio), range_mode="FIT",
        take_name=args.take or ("" if args.audio else "FlameTalk take"), scene=scene)



@dataclass
class PreparedTake:
    """One take with every input read and checked and nothing written yet."""

    args: argparse.Namespace
    out: str
    glb: str | None
    fbx: str | None
    flame: Any  # FlameModel
    shape: Any  # identity coefficients or None
    motion: Any  # (T, 106) to key (--motion), or None: generate from the audio
    motion_fps: float | None
    request: Any  # scene.job.GenerateRequest


def prepare_take(args: argparse.Namespace, flame: Any = None) -> PreparedTake:
    """Read and check every input of one take before anything touches a scene or a file. `flame`: an already
    loaded head (the batch reads it once)."""
    if not (args.motion or args.audio):
        raise CliError("give --audio (generate a take) or --motion (key a motion file)")
    out = _check_output(args.out, ".blend", "--out")
    glb = _check_output(args.glb, ".glb", "--glb")
    fbx = _check_output(args.fbx, ".fbx", "--fbx")
    check_fps(args.fps)
    try:
        import bpy  # noqa: F401
    except ImportError:
        raise CliError("needs Blender's Python module 'bpy' (pip install bpy==5.0.1 on Python 3.11)") from None
    from ..scene import job, keyframes

    if flame is None:
        flame = load_flame(args.flame, version=args.flame_version, use_torch=False)
    shape = load_shape_coefficients(args.shape, flame.n_shape) if args.shape else None
    motion = motion_fps = None
    if args.motion:
        motion, motion_fps = keyframes.load_motion(args.motion)
    req = _request(args, None)
    if motion is None:
        job.check_inputs(req)
    elif args.audio:
        problem = job.audio_problem(req.audio)
        if problem:
            raise CliError(problem)
    return PreparedTake(args, out, glb, fbx, flame, shape, motion, motion_fps, req)


def start_generation(prep: PreparedTake) -> Any:
    """Submit the take's generation to the warm worker now (before its head exists), or None for --motion.
    Returns a started scene.job.GenerateJob; the caller closes it."""
    if prep.motion is not None:
        return None
    from ..scene.job import GenerateJob

    job = GenerateJob(prep.request, rig_required=False)
    try:
        job.start()
    except BaseException:
        job.close()
        raise
    return job


def write_take(prep: PreparedTake, job: Any = None, busy: Callable[[bool], None] | None = None,
               before_commit: Callable[[], None] | None = None) -> dict[str, object]:
    """Fresh scene, FLAME head, keys (from `job`'s motion, or the --motion file), .blend and exports.
    `busy(False)` is called when Blender starts waiting for the worker, `busy(True)` when it works again;
    `before_commit()` once every file is written to its temporary, just before they are renamed into place."""
    import bpy

    from ..scene import export, rig
    from ..scene.job import apply_motion

    req = prep.request
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    scene = req.scene = bpy.context.scene
    _set_scene_fps(scene, prep.args.fps)
    flame_rig = req.rig = rig.build_rig(prep.flame, prep.shape)
    if prep.motion is not None:
        result = apply_motion(flame_rig, prep.motion, prep.motion_fps, audio=req.audio or None, req=req,
                              scene=scene)
    else:
        if busy is not None:
            busy(False)
        job.wait(prep.args.timeout)
        if busy is not None:
            busy(True)
        result = job.finish(flame_rig, scene)
    take = result.take
    scene.frame_set(scene.frame_start)
    for warning in flame_rig.warnings + result.warnings:
        print(f"flametalk: warning: {warning}", file=sys.stderr)
    # Every file to a temporary beside it, then all renamed into place together: a failure or an interrupt
    # leaves the previous take's files, never a truncated or mismatched set.
    # A signal during the save or an export is held until the operator returns, then stops the take here: its
    # temporaries are removed. One arriving during the swap lets the swap finish (the take is complete).
    with hold_interrupts(), StagedOutputs([p for p in (prep.out, prep.glb, prep.fbx) if p]) as staged:
        try:
            bpy.ops.wm.save_as_mainfile(filepath=staged.path(prep.out), check_existing=False, copy=True)
            check_interrupt()
            if prep.glb:
                export.export_gltf(flame_rig, staged.path(prep.glb), take.name, atomic=False)
                check_interrupt()
            if prep.fbx:
                export.export_fbx(flame_rig, staged.path(prep.fbx), take.name, atomic=False)
                check_interrupt()
        except Exception:
            check_interrupt()  # an operator error caused by the signal is the interrupt, not a failure
            raise
        if before_commit is not None:
            before_commit()
        staged.commit()
    first, last = take.frame_range
    print(f"flametalk: wrote {prep.out} (take {take.name}: {len(result.motion)} frames at {MOTION_FPS} fps -> scene "
          f"frames {first:g}..{last:g}, {take.n_keys} keys)")
    worker = {} if job is None else {"generate_seconds": job.result_event.get("seconds"),
                                     "audio_reused": bool(job.result_event.get("audio_cached")),
                                     "worker_pid": (job.client.hello or {}).get("pid")}
    return {"take": take.name, "frames": len(result.motion), "keys": take.n_keys, "glb": prep.glb, "fbx": prep.fbx,
            **worker}
