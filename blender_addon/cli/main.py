"""Headless command line (run with a Python that has the bpy module):

    python -m blender_addon.cli animate --flame FLAME (--audio A [--checkpoint C] [--style S] | --motion M.npz)
        --out take.blend [--glb F] [--fbx F] [--scene-fps N] [--start-frame N] [controls...]
    python -m blender_addon.cli retarget --flame FLAME --motion M.npz --character CHAR --out OUT.blend [...]
        (retarget.py: the motion keyed onto a character with shape keys; `animate`/`batch` take --character too)

Builds the FLAME rig from the user's FLAME file, then either generates a take from `--audio` with the model (the
same code path as the add-on's Generate button: scene/job.py, the torch worker process, controls, keys, sound
strip)
or keys an existing motion file (`--motion`, optionally with `--audio` for the sound strip), and saves the .blend
(optionally a .glb/.fbx too). The head mesh keeps FLAME's vertex order, so a checker can evaluate the saved file
frame by frame against its own FLAME forward pass. Bad input: one line on stderr, exit status 2, nothing written;
other failures (worker crash, Blender error): one line, exit status 1.

Outputs: every output folder is checked for writability (a probe file) before any work. A take's files (.blend,
.glb, .fbx) are written to temporaries in the same folder (`.NAME.flametalk-tmp-PID.EXT`) and renamed into place
together once all are complete (core/staging.py), so a failed, interrupted or disk-full run leaves the previous
files untouched; leftovers of a killed run (its temporaries, Blender's `X.blend@`) are removed by the next run.

Interrupts: SIGINT (Ctrl-C) or SIGTERM stops `animate`/`batch` after cleaning up the take in progress (its
temporaries removed, the previous files kept); `batch` still writes batch_report.json for the lines finished; the
worker is stopped and the exit status is 130. A second signal exits at once. While Blender saves or exports, the
signal is held until the operator returns (raised inside one, Blender would turn it into an operator error).

The worker Python is `--worker-python`, else env FLAMETALK_WORKER_PYTHON / the managed runtime (as the add-on's
preferences), else this Python (`sys.executable`: in a development checkout it has torch and flametalk).
`animate` (animate.py) makes one take; `batch` (batch.py) makes one per audio file with one warm worker, the model
computing the next line while Blender writes the current one; `farm` (farm.py) runs a manifest of lines on a Ray
cluster (model and Blender writer actors, resumable); all go through take.py. This module parses the
arguments and turns every failure into one line and an exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..flame import FlameFileError
from ..flame.contract import MOTION_DIM, MOTION_FPS
from ..worker import client as worker_client
from .animate import animate
from .batch import run_batch
from .farm import add_farm_parser, run_farm
from .interrupts import EXIT_INTERRUPTED, Interrupted, handle_interrupts, hold_interrupts, interrupted
from .retarget import add_character_options, add_retarget_parser, retarget
from .take import CliError

EXIT_BAD_INPUT = 2


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
    parser.add_argument("--fps", "--scene-fps", dest="fps", type=float, default=float(MOTION_FPS),
                        help=f"scene frame rate, e.g. 24, 25, 30, 29.97 (default {MOTION_FPS})")
    parser.add_argument("--shape", help="identity: up to 300 FLAME shape coefficients (.npy/.npz/.txt)")
    parser.add_argument("--start-frame", type=int, default=1, help="scene frame of the first motion frame")
    parser.add_argument("--flame-version", choices=("2020", "2023"), help="override the detected FLAME version")
    parser.add_argument("--jaw", type=float, default=1.0, help="jaw intensity (default 1)")
    parser.add_argument("--expression", type=float, default=1.0, help="expression intensity (default 1)")
    parser.add_argument("--head", type=float, default=1.0, help="head-motion intensity, 0 = still (default 1)")
    parser.add_argument("--smoothing", type=float, default=0.0,
                        help=f"Gaussian sigma in {MOTION_FPS} fps frames (0 = off)")
    parser.add_argument("--simplify", type=float, metavar="MAX_ERROR",
                        help="fewer keys: largest expression-value error allowed")
    parser.add_argument("--simplify-rotation", type=float, default=0.25, metavar="DEGREES",
                        help="with --simplify: largest rotation error allowed (default 0.25)")
    parser.add_argument("--nla", action="store_true", help="push the take onto NLA tracks")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m blender_addon.cli", description="FlameTalk headless tools (Blender as bpy).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    animate = commands.add_parser("animate", help="build the FLAME rig, generate or key a take, save a .blend")
    animate.add_argument("--motion", help=f"motion .npz to key: 'motion' (T, {MOTION_DIM}) float32 and 'fps'")
    animate.add_argument("--audio", help="speech to generate from (with --motion: only the sound strip)")
    animate.add_argument("--out", required=True, help="output .blend")
    animate.add_argument("--glb", help="also export glTF binary here")
    animate.add_argument("--fbx", help="also export FBX here")
    animate.add_argument("--take", help="take name (default: <audio stem>_take1, or 'FlameTalk take')")
    _add_take_options(animate)
    add_character_options(animate)
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
    add_farm_parser(commands, _add_take_options)
    add_character_options(batch, per_line=True)
    add_retarget_parser(commands, _Parser)
    return parser



def _stop_workers() -> None:
    worker_client.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from ..scene.job import GenerateError
    except ImportError:  # no bpy: prepare_take() reports it

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


def _run(argv: Sequence[str] | None, GenerateError: type) -> int:  # the class, bpy or stand-in
    try:
        args = _parser().parse_args(argv)
        if args.command == "farm":
            return run_farm(args)
        if args.command == "retarget":
            return retarget(args)
        return run_batch(args) if args.command == "batch" else animate(args)
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
