"""A take's output files written atomically (stdlib only, no bpy): every file goes to a temporary beside its final
name (`.NAME.flametalk-tmp-PID.EXT`) and all are renamed into place together once complete, so a failed,
interrupted or disk-full run leaves the previous files untouched. What a killed run left behind (its temporaries,
a previous file moved aside during a swap cut short, Blender's `X.blend@`) is cleaned up by the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .paths import absolute

_TMP_MARK = ".flametalk-tmp-"  # a take's files while being written: .NAME.flametalk-tmp-PID.EXT
_OLD_MARK = ".flametalk-old-"  # the previous file, moved aside for the moment of the swap



def _side_path(final: str, mark: str, pid: int | None = None) -> str:
    path = Path(final)
    return str(path.parent / f".{path.name}{mark}{os.getpid() if pid is None else pid}{path.suffix}")


def _pid_alive(pid: int, path: str) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier line
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: go by age instead
        try:
            return time.time() - Path(path).stat().st_mtime < 3600
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
        entries = [p.name for p in Path(folder).iterdir()]  # iterdir() lists at the first next(): in the try
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
            path = Path(folder) / entry
            if _pid_alive(int(digits), str(path)):
                continue
            final = Path(folder) / entry[1:at]
            with contextlib.suppress(OSError):
                if mark == _OLD_MARK and not entry.endswith("@") and not final.exists():
                    path.replace(final)
                else:
                    path.unlink()
                touched.append(str(path))
    for final_name in finals:
        stale = final_name + "@"  # Blender writes X.blend@ and renames it: a kill in between leaves it behind
        if final_name.lower().endswith(".blend") and Path(stale).is_file():
            with contextlib.suppress(OSError):
                Path(stale).unlink()
                touched.append(stale)
    return touched


class StagedOutputs:
    """A take's output files written to temporaries in their own folders, renamed into place together by
    `commit()`; on leaving the block without a commit (an error, an interrupt) the temporaries are removed and the
    previous files stay as they were.

    Entering cleans what killed runs left in the output folders (`clean_leftovers`). Processes writing into a folder
    that other machines write into too (the farm's actors) set `clean_on_enter = False`: a live temporary of
    another machine's process looks dead from here (its pid means nothing on this machine)."""

    clean_on_enter = True

    def __init__(self, finals: Sequence[str]):
        self.finals = [absolute(f) for f in finals]
        self.temps = {final: _side_path(final, _TMP_MARK) for final in self.finals}
        self.committed = False

    def path(self, final: str) -> str:
        return self.temps[absolute(final)]

    def __enter__(self) -> StagedOutputs:
        for folder in {str(Path(f).parent) for f in self.finals} if self.clean_on_enter else ():
            clean_leftovers(folder, [f for f in self.finals if str(Path(f).parent) == folder])
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def discard(self) -> None:
        for temp in self.temps.values():
            for path in (temp, temp + "@"):
                Path(path).unlink(missing_ok=True)

    def commit(self) -> None:
        """Swap every final file for its temporary; if any step fails, the previous files are put back."""
        missing = [t for t in self.temps.values() if not Path(t).is_file()]
        if missing:
            raise RuntimeError(f"an output was not written: {missing[0]}")
        moved: list[tuple[str, str]] = []  # (previous file moved aside, its final name)
        placed: list[str] = []
        try:
            for final in self.finals:
                if os.path.lexists(final):
                    aside = _side_path(final, _OLD_MARK)
                    Path(final).replace(aside)
                    moved.append((aside, final))
            for final in self.finals:
                Path(self.temps[final]).replace(final)
                placed.append(final)
        except BaseException:
            for final in placed:
                with contextlib.suppress(OSError):
                    Path(final).unlink()
            for aside, final in moved:
                with contextlib.suppress(OSError):
                    Path(aside).replace(final)
            raise
        for aside, _final in moved:
            with contextlib.suppress(OSError):
                Path(aside).unlink()
        self.committed = True


def write_json_atomic(path: str, data: object) -> None:
    """`data` as JSON at `path` through a temporary in the same folder (never a half-written file)."""
    staged = StagedOutputs([path])
    with staged:
        with open(staged.path(path), "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
        staged.commit()

