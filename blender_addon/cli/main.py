"""Headless command line (run with a Python that has the bpy module):

    python -m blender_addon.cli animate --flame FLAME (--audio A [--checkpoint C] [--style S] | --motion M.npz)
        --out take.blend [--glb F] [--fbx F] [--scene-fps N] [--start-frame N] [controls...]

Builds the FLAME rig from the user's FLAME file, then either generates a take from `--audio` with the model (the
same code path as the add-on's Generate button: generate.py, the torch worker process, controls, keys, sound strip)
or keys an existing motion file (`--motion`, optionally with `--audio` for the sound strip), and saves the .blend
(optionally a .glb/.fbx too). The head mesh keeps FLAME's vertex order, so a checker can evaluate the saved file
frame by frame against its own FLAME forward pass. Bad input: one line on stderr, exit status 2, nothing written;
other failures (worker crash, Blender error): one line, exit status 1.

Outputs: every output folder is checked for writability (a probe file) before any work. A take's files (.blend,
.glb, .fbx) are written to temporaries in the same folder (`.NAME.flametalk-tmp-PID.EXT`) and renamed into place
together once all are complete, so a failed, interrupted or disk-full run leaves the previous files untouched;
leftovers of a killed run (its temporaries, Blender's `X.blend@`) are removed by the next run.

Interrupts: SIGINT (Ctrl-C) or SIGTERM stops `animate`/`batch` after cleaning up the take in progress (its
temporaries removed, the previous files kept); `batch` still writes batch_report.json for the lines finished; the
worker is stopped and the exit status is 130. A second signal exits at once. While Blender saves or exports, the
signal is held until the operator returns (raised inside one, Blender would turn it into an operator error).

The worker Python is `--worker-python`, else env FLAMETALK_WORKER_PYTHON / the managed runtime (as the add-on's
preferences), else this Python (`sys.executable`: in a development checkout it has torch and flametalk).
`animate` makes one take; `batch` (batch.py) makes one per audio file with one warm worker, the model computing
the next line while Blender writes the current one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .flame import FlameFileError, load_flame, load_shape_coefficients

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


class CliError(Exception):
    """A user mistake found by the CLI itself (paths, options)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived: stop after cleaning up the take in progress."""


class _InterruptState:
    signal: int | None = None  # the first signal received, None while running normally
    held = 0  # > 0 while Blender saves/exports: the signal is only recorded, raised afterwards


def interrupted() -> bool:
    return _InterruptState.signal is not None


def check_interrupt() -> None:
    """Raise Interrupted if a signal arrived meanwhile (e.g. during an operator, where it was held)."""
    if _InterruptState.signal is not None:
        raise Interrupted(signal.Signals(_InterruptState.signal).name)


def _on_signal(signum: int, _frame: object) -> None:
    if _InterruptState.signal is not None:  # the second one: no more cleaning up
        try:
            os.write(2, b"flametalk: interrupted again: exiting now\n")
        except OSError:
            pass
        os._exit(EXIT_INTERRUPTED)
    _InterruptState.signal = signum
    if _InterruptState.held == 0:
        raise Interrupted(signal.Signals(signum).name)


@contextmanager
def handle_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted (once; a second one exits at once) inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _InterruptState.signal, _InterruptState.held = None, 0
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def hold_interrupts() -> Iterator[None]:
    """While Blender saves or exports, only record a signal (raised inside an operator, Blender would report it
    as the operator's error and go on); the caller calls check_interrupt() afterwards."""
    _InterruptState.held += 1
    try:
        yield
    finally:
        _InterruptState.held -= 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise CliError(f"{message} (see --help)")


def _add_take_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `animate` and `batch`: the head, the model, the scene and the animator controls."""
    parser.add_argument("--flame", required=True, help="FLAME file: generic_model.pkl, FLAME_with_eye.pt or .npz")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the FlameTalk asset cache)")
    parser.add_argument("--style", help="style: none, a release clip name (natural_0) or a .pt/.npy/.npz file")
    parser.add_argument("--style-start", type=int, default=0, help="first frame of the style clip (files)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default auto)")
    parser.add_argument("--mode", choices=("exact", "fast"), default="exact", help="numeric mode (default exact)")
    parser.add_argument("--worker-python", help="Python with torch + flametalk that runs the model")
    parser.add_argument("--timeout", type=float, help="give up generating after this many seconds")
    parser.add_argument("--fps", "--scene-fps", dest="fps", type=float, default=25.0,
                        help="scene frame rate, e.g. 24, 25, 30, 29.97 (default 25)")
    parser.add_argument("--shape", help="identity: up to 300 FLAME shape coefficients (.npy/.npz/.txt)")
    parser.add_argument("--start-frame", type=int, default=1, help="scene frame of the first motion frame")
    parser.add_argument("--flame-version", choices=("2020", "2023"), help="override the detected FLAME version")
    parser.add_argument("--jaw", type=float, default=1.0, help="jaw intensity (default 1)")
    parser.add_argument("--expression", type=float, default=1.0, help="expression intensity (default 1)")
    parser.add_argument("--head", type=float, default=1.0, help="head-motion intensity, 0 = still (default 1)")
    parser.add_argument("--smoothing", type=float, default=0.0, help="Gaussian sigma in 25 fps frames (0 = off)")
    parser.add_argument("--simplify", type=float, metavar="MAX_ERROR",
                        help="fewer keys: largest expression-value error allowed")
    parser.add_argument("--simplify-rotation", type=float, default=0.25, metavar="DEGREES",
                        help="with --simplify: largest rotation error allowed (default 0.25)")
    parser.add_argument("--nla", action="store_true", help="push the take onto NLA tracks")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m blender_addon.cli", description="FlameTalk headless tools (Blender as bpy).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    animate = commands.add_parser("animate", help="build the FLAME rig, generate or key a take, save a .blend")
    animate.add_argument("--motion", help="motion .npz to key: 'motion' (T, 106) float32 and 'fps'")
    animate.add_argument("--audio", help="speech to generate from (with --motion: only the sound strip)")
    animate.add_argument("--out", required=True, help="output .blend")
    animate.add_argument("--glb", help="also export glTF binary here")
    animate.add_argument("--fbx", help="also export FBX here")
    animate.add_argument("--take", help="take name (default: <audio stem>_take1, or 'FlameTalk take')")
    _add_take_options(animate)
    batch = commands.add_parser("batch", help="many dialogue lines, one warm worker: a .blend per line")
    batch.add_argument("audio_files", nargs="+", metavar="AUDIO", help="speech files, one take each")
    batch.add_argument("--out-dir", required=True, help="folder for <audio stem>.blend (+ .glb / .fbx) per line")
    batch.add_argument("--glb", action="store_true", help="also export <audio stem>.glb")
    batch.add_argument("--fbx", action="store_true", help="also export <audio stem>.fbx")
    batch.add_argument("--spare-cores", type=int, default=1, metavar="N",
                       help="CPU cores the model leaves to Blender while Blender writes a line and the model computes "
                            "the next (default 1; 0 = the model takes all); while Blender waits, the model takes all")
    batch.add_argument("--no-overlap", action="store_true",
                       help="generate each line only after the one before is written (for a machine shared with "
                            "other jobs)")
    _add_take_options(batch)
    return parser


_TMP_MARK = ".flametalk-tmp-"  # a take's files while being written: .NAME.flametalk-tmp-PID.EXT
_OLD_MARK = ".flametalk-old-"  # the previous file, moved aside for the moment of the swap


def check_writable_folder(folder: str, option: str) -> None:
    """CliError unless a file can be created in `folder` (a probe: permission bits say nothing for root, a
    read-only mount or a full quota)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".flametalk-probe-", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CliError(f"{option}: cannot write in {folder} ({reason}): choose a writable folder") from None
    os.close(handle)
    os.unlink(probe)


def _check_output(path: str | None, suffix: str, option: str) -> str | None:
    if path is None:
        return None
    path = os.path.abspath(path)
    if not path.lower().endswith(suffix):
        raise CliError(f"{option} must end with {suffix}: {path}")
    if not os.path.isdir(os.path.dirname(path)):
        raise CliError(f"{option}: folder does not exist: {os.path.dirname(path)}")
    if os.path.isdir(path):
        raise CliError(f"{option} is a folder: {path}")
    check_writable_folder(os.path.dirname(path), option)
    return path


def _side_path(final: str, mark: str, pid: int | None = None) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, f".{name}{mark}{os.getpid() if pid is None else pid}{os.path.splitext(name)[1]}")


def _pid_alive(pid: int, path: str) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier line
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: go by age instead
        try:
            return time.time() - os.path.getmtime(path) < 3600
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_leftovers(folder: str, finals: Sequence[str] = ()) -> list[str]:
    """Remove what a killed FlameTalk run left in `folder`: its temporaries (also Blender's `tmp@`) and, after a
    swap cut short, the previous file moved aside (put back when its final name is empty). Files of a run still
    alive are left alone. Also removes Blender's `X.blend@` of each of `finals` about to be written. Returns the
    paths removed or restored."""
    touched: list[str] = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return touched
    for entry in entries:
        for mark in (_TMP_MARK, _OLD_MARK):
            at = entry.find(mark)
            if not entry.startswith(".") or at < 0:
                continue
            digits = entry[at + len(mark):].split(".", 1)[0].rstrip("@")
            if not digits.isdigit():
                continue
            path = os.path.join(folder, entry)
            if _pid_alive(int(digits), path):
                continue
            final = os.path.join(folder, entry[1:at])
            try:
                if mark == _OLD_MARK and not entry.endswith("@") and not os.path.exists(final):
                    os.replace(path, final)
                else:
                    os.unlink(path)
                touched.append(path)
            except OSError:
                pass
    for final in finals:
        stale = final + "@"  # Blender writes X.blend@ and renames it: a kill in between leaves it behind
        if final.lower().endswith(".blend") and os.path.isfile(stale):
            try:
                os.unlink(stale)
                touched.append(stale)
            except OSError:
                pass
    return touched


class StagedOutputs:
    """A take's output files written to temporaries in their own folders, renamed into place together by
    `commit()`; on leaving the block without a commit (an error, an interrupt) the temporaries are removed and the
    previous files stay as they were."""

    def __init__(self, finals: Sequence[str]):
        self.finals = [os.path.abspath(f) for f in finals]
        self.temps = {final: _side_path(final, _TMP_MARK) for final in self.finals}
        self.committed = False

    def path(self, final: str) -> str:
        return self.temps[os.path.abspath(final)]

    def __enter__(self) -> StagedOutputs:
        for folder in {os.path.dirname(f) for f in self.finals}:
            clean_leftovers(folder, [f for f in self.finals if os.path.dirname(f) == folder])
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def discard(self) -> None:
        for temp in self.temps.values():
            for path in (temp, temp + "@"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def commit(self) -> None:
        """Swap every final file for its temporary; if any step fails, the previous files are put back."""
        missing = [t for t in self.temps.values() if not os.path.isfile(t)]
        if missing:
            raise RuntimeError(f"an output was not written: {missing[0]}")
        moved: list[tuple[str, str]] = []  # (previous file moved aside, its final name)
        placed: list[str] = []
        try:
            for final in self.finals:
                if os.path.lexists(final):
                    aside = _side_path(final, _OLD_MARK)
                    os.replace(final, aside)
                    moved.append((aside, final))
            for final in self.finals:
                os.replace(self.temps[final], final)
                placed.append(final)
        except BaseException:
            for final in placed:
                try:
                    os.unlink(final)
                except OSError:
                    pass
            for aside, final in moved:
                try:
                    os.replace(aside, final)
                except OSError:
                    pass
            raise
        for aside, _final in moved:
            try:
                os.unlink(aside)
            except OSError:
                pass
        self.committed = True


def write_json_atomic(path: str, data: object) -> None:
    """`data` as JSON at `path` through a temporary in the same folder (never a half-written file)."""
    import json

    staged = StagedOutputs([path])
    with staged:
        with open(staged.path(path), "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        staged.commit()


def check_fps(fps: float) -> None:
    if not (0 < fps <= 1000):
        raise CliError(f"--fps must be positive, got {fps:g}")


def _set_scene_fps(scene: object, fps: float) -> None:
    from .timing import fps_settings

    check_fps(fps)
    scene.render.fps, scene.render.fps_base = fps_settings(fps)  # e.g. 29.97 -> 30 / 1.001


def _style(args: argparse.Namespace) -> object:
    from .generate import StyleSpec

    spec = (args.style or "").strip()
    if spec.lower() in ("", "none", "default"):
        return StyleSpec()
    if os.path.sep in spec or "/" in spec or os.path.splitext(spec)[1].lower() in (".pt", ".pth", ".npy", ".npz"):
        return StyleSpec(kind="FILE", path=os.path.abspath(spec), start=args.style_start)
    return StyleSpec(kind="RELEASE", name=spec)


def _request(args: argparse.Namespace, scene: object) -> object:
    from . import paths
    from .controls import Controls
    from .generate import GenerateRequest
    from .preferences import default_worker_python

    controls = Controls(jaw=args.jaw, expression=args.expression, head=args.head, smoothing=args.smoothing,
                        simplify=args.simplify is not None, expression_tolerance=args.simplify or 0.0,
                        rotation_tolerance_deg=args.simplify_rotation)
    try:
        controls.check()
    except ValueError as err:
        raise CliError(str(err)) from None
    return GenerateRequest(
        rig=None, audio=os.path.abspath(args.audio) if args.audio else "",
        checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else str(paths.default_checkpoint_dir()),
        worker_python=args.worker_python or default_worker_python() or sys.executable,
        device=args.device.lower(), mode=args.mode, style=_style(args), start_frame=args.start_frame,
        controls=controls, push_to_nla=args.nla, add_sound_strip=bool(args.audio), range_mode="FIT",
        take_name=args.take or ("" if args.audio else "FlameTalk take"), scene=scene)


def animate(args: argparse.Namespace) -> int:
    prep = prepare_take(args)
    job = start_generation(prep)  # the worker computes while the head is being built
    try:
        write_take(prep, job)
    except Exception:
        check_interrupt()  # e.g. the worker request failing because of the signal
        raise
    finally:
        if job is not None:
            if interrupted():
                job.cancel()
            job.close()
    return 0


def _stop_workers() -> None:
    from . import worker_client

    worker_client.stop_all()


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
    request: Any  # generate.GenerateRequest


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
    from . import generate, keyframes

    if flame is None:
        flame = load_flame(args.flame, version=args.flame_version, use_torch=False)
    shape = load_shape_coefficients(args.shape, flame.n_shape) if args.shape else None
    motion = motion_fps = None
    if args.motion:
        motion, motion_fps = keyframes.load_motion(args.motion)
    req = _request(args, None)
    if motion is None:
        generate.check_inputs(req)
    elif args.audio:
        problem = generate.audio_problem(req.audio)
        if problem:
            raise CliError(problem)
    return PreparedTake(args, out, glb, fbx, flame, shape, motion, motion_fps, req)


def start_generation(prep: PreparedTake) -> Any:
    """Submit the take's generation to the warm worker now (before its head exists), or None for --motion.
    Returns a started generate.GenerateJob; the caller closes it."""
    if prep.motion is not None:
        return None
    from .generate import GenerateJob

    job = GenerateJob(prep.request, rig_required=False)
    try:
        job.start()
    except BaseException:
        job.close()
        raise
    return job


def write_take(prep: PreparedTake, job: Any = None, busy: Callable[[bool], None] | None = None) -> dict[str, object]:
    """Fresh scene, FLAME head, keys (from `job`'s motion, or the --motion file), .blend and exports.
    `busy(False)` is called when Blender starts waiting for the worker, `busy(True)` when it works again."""
    import bpy

    from . import export, generate, rig

    req = prep.request
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    scene = req.scene = bpy.context.scene
    _set_scene_fps(scene, prep.args.fps)
    flame_rig = req.rig = rig.build_rig(prep.flame, prep.shape)
    if prep.motion is not None:
        result = generate.apply_motion(flame_rig, prep.motion, prep.motion_fps, audio=req.audio or None, req=req,
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
        staged.commit()
    first, last = take.frame_range
    print(f"flametalk: wrote {prep.out} (take {take.name}: {len(result.motion)} frames at 25 fps -> scene frames "
          f"{first:g}..{last:g}, {take.n_keys} keys)")
    worker = {} if job is None else {"generate_seconds": job.result_event.get("seconds"),
                                     "audio_reused": bool(job.result_event.get("audio_cached")),
                                     "worker_pid": (job.client.hello or {}).get("pid")}
    return {"take": take.name, "frames": len(result.motion), "keys": take.n_keys, "glb": prep.glb, "fbx": prep.fbx,
            **worker}


def batch(args: argparse.Namespace) -> int:
    from .batch import run_batch

    return run_batch(args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .generate import GenerateError
    except ImportError:  # no bpy: animate() reports it

        class GenerateError(Exception):  # type: ignore[no-redef]
            kind = "input"

    with handle_interrupts():
        try:
            code = _run(argv, GenerateError)
        except Interrupted:
            code = EXIT_INTERRUPTED
            print("flametalk: interrupted: the take in progress was discarded, finished files are kept",
                  file=sys.stderr)
        if interrupted():  # also when a signal came during the final swap: the worker goes, the status says so
            code = EXIT_INTERRUPTED
            with hold_interrupts():
                _stop_workers()
        return code


def _run(argv: Sequence[str] | None, GenerateError: type) -> int:  # noqa: N803 - the class, bpy or stand-in
    try:
        args = _parser().parse_args(argv)
        return batch(args) if args.command == "batch" else animate(args)
    except Interrupted:
        raise
    except GenerateError as err:
        message = " ".join(str(err).split())
        print(f"flametalk: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT if err.kind == "input" else 1
    except (CliError, FlameFileError, ValueError) as err:
        message = " ".join(str(err).split())  # always exactly one line
        print(f"flametalk: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as err:  # bpy operators report their failures this way (e.g. an export)
        message = " ".join(str(err).split())
        print(f"flametalk: error: Blender failed: {message}", file=sys.stderr)
        return 1
    except MemoryError:
        print("flametalk: error: out of memory (nothing was written)", file=sys.stderr)
        return 1


def _exit(code: int) -> None:
    """bpy 4.2's module crashes while the interpreter shuts down after a glTF export (exit 139 after everything
    was written). There, skip the teardown once the outputs are closed; later versions exit normally."""
    import bpy

    if bpy.app.version < (4, 4, 0):
        from . import worker_client

        worker_client.stop_all()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    # Run the package's module, not this `__main__` copy: batch.py imports the former, and the interrupt state,
    # the Interrupted class and the staging helpers must be the same objects on both sides.
    import importlib

    _exit(importlib.import_module(__spec__.name if __spec__ else "blender_addon.cli").main())
