"""`python -m blender_addon.cli batch`: many dialogue lines, one warm worker, model and Blender working at once.

Per line the worker computes the motion (torch) and Blender builds the head, keys it, saves the .blend and exports
(single-threaded Python; glTF and FBX export dominate). Run one after the other, each side waits for the other; here
line N+1 is submitted to the worker before Blender starts writing line N, so the model computes while Blender
writes; meanwhile the worker leaves `--spare-cores` CPU threads to Blender, and takes them all again while Blender
waits for it (the worker's spare_cores command, applied between 4-s windows). Lines are still written, reported and
numbered in order; a line that fails is reported in one line and skipped, the others still run. Ctrl-C (SIGINT) or
SIGTERM stops the batch after discarding the line in progress: batch_report.json lists the finished lines (and
`not_written`), the worker is stopped, exit status 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.paths import absolute
from ..core.staging import clean_leftovers, write_json_atomic
from ..flame import load_flame
from .interrupts import EXIT_INTERRUPTED, Interrupted, check_interrupt, hold_interrupts, interrupted
from .retarget import character_take_name, check_character_args, generated_motion, run_retarget
from .take import CliError, PreparedTake, check_fps, check_writable_folder, prepare_take, start_generation, write_take

REPORT_NAME = "batch_report.json"


@dataclass
class _Line:
    audio: str
    stem: str
    args: argparse.Namespace
    prep: PreparedTake | None = None
    job: Any = None  # scene.job.GenerateJob submitted ahead of its turn
    error: Exception | None = None  # found while preparing or submitting: reported in its turn
    submitted: bool = False
    entry: dict[str, object] = field(default_factory=dict)


def _line_args(args: argparse.Namespace, audio: str, stem: str, out_dir: str) -> argparse.Namespace:
    return argparse.Namespace(**{
        **vars(args), "audio": audio, "motion": None, "take": None, "out": str(Path(out_dir) / f"{stem}.blend"),
        "glb": str(Path(out_dir) / f"{stem}.glb") if args.glb else None,
        "fbx": str(Path(out_dir) / f"{stem}.fbx") if args.fbx else None,
        "csv": str(Path(out_dir) / f"{stem}.csv") if getattr(args, "csv", False) else None, "report": None})


def _submit(line: _Line, flame: Any) -> None:
    """Check the line's inputs and hand its generation to the worker; a failure waits for the line's turn."""
    line.submitted = True
    try:
        line.prep = prepare_take(line.args, flame)
        line.job = start_generation(line.prep)
    except Exception as err:  # reported in order, when the line's turn comes
        line.error = err


def _write(line: _Line, spare_cores: int) -> dict[str, object]:
    if line.error is not None:
        raise line.error
    assert line.prep is not None

    def busy(working: bool) -> None:  # Blender works: leave it cores; Blender waits: the model takes them all
        if spare_cores and line.job is not None:
            line.job.client.spare_cores(spare_cores if working else 0)

    if getattr(line.args, "character", None):  # the motion keyed onto the character (retarget.py); the fit is made once
        outputs = {"out": line.prep.out, "glb": line.prep.glb, "fbx": line.prep.fbx, "csv": line.args.csv,
                   "report": None}
        busy(False)
        motion = generated_motion(line.job, line.args.timeout)
        busy(True)
        return run_retarget(line.args, motion, outputs, character_take_name(line.args))
    try:
        return write_take(line.prep, line.job, busy)
    except Exception as err:
        if getattr(err, "kind", None) != "crash":
            raise
    # The worker died while this line was queued behind another (or computing): once more on a fresh worker,
    # as if the lines had run one after the other.
    if line.job is not None:
        line.job.close()
    line.job = start_generation(line.prep)
    return write_take(line.prep, line.job, busy)


def run_batch(args: argparse.Namespace) -> int:
    """One take per audio file with one warm worker (the model loads once for the whole list).

    A line that fails is reported as one line and skipped; the others still run. `batch_report.json` in the output
    folder lists every line (status, frames, seconds, files). Exit code: 0 all lines done, 1 some failed.
    """
    out_dir = absolute(args.out_dir)
    if not Path(out_dir).is_dir():
        raise CliError(f"--out-dir does not exist: {out_dir}")
    check_writable_folder(out_dir, "--out-dir")  # before any line is generated
    clean_leftovers(out_dir)  # temporaries of a killed run
    check_fps(args.fps)
    if args.spare_cores < 0:
        raise CliError(f"--spare-cores must be 0 or more, got {args.spare_cores}")
    stems = [Path(a).stem for a in args.audio_files]
    if len(set(stems)) != len(stems):
        raise CliError("two audio files share a name; their outputs would overwrite each other: rename one")
    flame = load_flame(args.flame, version=args.flame_version, use_torch=False)  # a bad head fails the batch at once
    if args.character:
        check_character_args(argparse.Namespace(**{**vars(args), "csv": None, "report": None}))
    lines = [_Line(a, s, _line_args(args, a, s, out_dir)) for a, s in zip(args.audio_files, stems, strict=True)]
    failed = 0
    started = time.perf_counter()
    stopped = False
    try:
        for i, line in enumerate(lines):
            check_interrupt()  # a signal during the line before (e.g. during its final swap) stops here
            if not line.submitted:  # the first line, or every line with --no-overlap
                _submit(line, flame)
            if i + 1 < len(lines) and not args.no_overlap:  # the worker starts it once this line's motion is done
                _submit(lines[i + 1], flame)
            entry = line.entry
            try:
                result = _write(line, 0 if args.no_overlap else args.spare_cores)
                entry.update(audio=absolute(line.audio), blend=line.args.out, **result, status="ok")
            except Exception as err:  # one line per failed dialogue line; the batch goes on
                check_interrupt()  # ...unless the signal caused it: then the line is not finished, not failed
                failed += 1
                entry.update(audio=absolute(line.audio), blend=line.args.out, status="failed",
                             error=" ".join(str(err).split()))
                print(f"flametalk: error: {line.stem}: {entry['error']}", file=sys.stderr)
            finally:
                if line.job is not None:
                    if interrupted():
                        line.job.cancel()
                    line.job.close()
                    line.job = None
            # wall time this line added to the batch (its motion was mostly computed during the line before)
            now = time.perf_counter()
            entry["seconds"] = round(now - started, 3)
            started = now
    except Interrupted:  # the line in progress left nothing (its temporaries are gone); report the finished ones
        stopped = True
    finally:
        with hold_interrupts():  # a second signal exits at once; the first no longer interrupts the cleanup
            for line in lines:  # cancel what was submitted ahead and remove its files
                if line.job is not None:
                    line.job.cancel()
                    line.job.close()
    with hold_interrupts():
        report = [line.entry for line in lines if line.entry.get("status")]
        summary: dict[str, object] = {"lines": report, "failed": failed}
        if stopped or interrupted():
            summary["interrupted"] = True
            summary["not_written"] = [absolute(line.audio) for line in lines if not line.entry.get("status")]
        write_json_atomic(str(Path(out_dir) / REPORT_NAME), summary)
    done = len(report) - failed
    if stopped or interrupted():
        print(f"flametalk: interrupted: {done} of {len(lines)} lines written to {out_dir} ({REPORT_NAME} lists "
              f"them); the line in progress was discarded", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"flametalk: batch done: {done} of {len(report)} lines written to {out_dir}")
    return 1 if failed else 0

