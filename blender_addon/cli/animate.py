"""`python -m blender_addon.cli animate`: one take. The worker computes the motion while the FLAME head is built,
then the take is keyed and written (take.py)."""

from __future__ import annotations

import argparse

from .interrupts import check_interrupt, interrupted
from .take import prepare_take, start_generation, write_take


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

