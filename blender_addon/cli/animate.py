"""`python -m blender_addon.cli animate`: one take. The worker computes the motion while the FLAME head is built,
then the take is keyed and written (take.py). With --character the take goes onto that character instead
(retarget.py: generate, then fit and solve on the worker, then key)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..flame.contract import MOTION_FPS
from .interrupts import check_interrupt, interrupted
from .retarget import character_take_name, check_character_args, generated_motion, run_retarget
from .take import CliError, PreparedTake, prepare_take, start_generation, write_take


@contextmanager
def _generation(prep: PreparedTake) -> Iterator[Any]:
    """The take's generation on the warm worker (None for --motion): an error caused by a signal is the interrupt;
    on the way out the job is cancelled if interrupted, and always closed."""
    job = start_generation(prep)
    try:
        yield job
    except Exception:
        check_interrupt()  # e.g. the worker request failing because of the signal
        raise
    finally:
        if job is not None:
            if interrupted():
                job.cancel()
            job.close()


def animate(args: argparse.Namespace) -> int:
    if args.character:
        return animate_character(args)
    prep = prepare_take(args)
    with _generation(prep) as job:  # the worker computes while the head is being built
        write_take(prep, job)
    return 0



def animate_character(args: argparse.Namespace) -> int:
    """`animate --character`: the motion (generated from --audio, or --motion) keyed onto the character
    (retarget.py) instead of a FLAME head."""
    outputs = check_character_args(args)
    prep = prepare_take(args)  # audio, checkpoint, motion, --out/--glb/--fbx: checked before anything runs
    outputs.update(out=prep.out, glb=prep.glb, fbx=prep.fbx)
    if not Path(args.flame).is_file():
        raise CliError(f"FLAME file not found: {Path(args.flame).absolute()}")
    with _generation(prep) as job:
        motion = prep.motion if job is None else generated_motion(job, args.timeout)
        if prep.motion is not None and abs(prep.motion_fps - MOTION_FPS) > 1e-6:
            raise CliError(f"the motion is at {prep.motion_fps:g} fps; retargeting reads {MOTION_FPS} fps motion")
        run_retarget(args, motion, outputs, character_take_name(args))
    return 0
