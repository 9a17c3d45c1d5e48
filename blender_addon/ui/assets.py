"""Preferences > FlameTalk > Model Files: download the ARTalk release files (and, with consent, FLAME_with_eye.pt)
with the worker's Python (`python -m flametalk assets download`), so an animator never opens a terminal.

The download itself is flametalk's (sha256-checked, resumable, into the per-user asset cache); this module only
runs it in a subprocess, shows its progress and turns its outcome into one message. Blender's process stays free of
torch and of network code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import bpy
from bpy.props import BoolProperty

from ..core import paths
from .settings import worker_settings

FLAME_LICENCE_URL = "https://flame.is.tue.mpg.de"
_PERCENT = re.compile(r"(\d{1,3})%")
_STATE: dict[str, object] = {"proc": None, "status": "", "percent": 0}


def download_command(python: str, accept_flame_license: bool) -> list[str]:
    cmd = [python, "-m", "flametalk", "assets", "download"]
    return [*cmd, "--accept-flame-license"] if accept_flame_license else cmd


def summarize(returncode: int, output: Sequence[str]) -> str:
    """One line for the user from the CLI's exit code and output (the full text goes to the console)."""
    errors = [ln for ln in output if ln.startswith("flametalk: error:")]
    if returncode == 0:
        return "model files downloaded and verified"
    if returncode == 3:
        return ("cannot reach the model hub: download the files by hand (the system console lists each file, "
                f"its address and where to put it), or copy them into {paths.default_checkpoint_dir()}")
    if errors:
        return errors[-1].removeprefix("flametalk: error:").strip().splitlines()[0]
    tail = [ln for ln in output if ln.strip()]
    return f"download failed (exit code {returncode}): {tail[-1] if tail else 'no output'}"


def _pump(proc: subprocess.Popen[str], lines: list[str]) -> None:
    """Read the CLI's merged output; tqdm redraws with carriage returns, so split on both line ends."""
    assert proc.stdout is not None
    buf = ""
    while True:
        chunk = proc.stdout.read(1)
        if not chunk:
            break
        if chunk in "\r\n":
            if buf.strip():
                lines.append(buf)
                m = _PERCENT.search(buf)
                if m:
                    _STATE["percent"] = int(m.group(1))
            buf = ""
        else:
            buf += chunk
    if buf.strip():
        lines.append(buf)


class FLAMETALK_OT_download_assets(bpy.types.Operator):
    """Download the ARTalk weights, config and style clips into the FlameTalk asset cache (sha256-checked)"""

    bl_idname = "flametalk.download_assets"
    bl_label = "Download Model Files"
    bl_options: ClassVar[set[str]] = {"REGISTER", "INTERNAL"}

    accept_flame_license: BoolProperty(
        name="I registered at the FLAME website and accept the FLAME licence",
        description=f"Also download FLAME_with_eye.pt (FLAME 2020); only after accepting its licence at "
                    f"{FLAME_LICENCE_URL}", default=False)

    def _start(self, context: bpy.types.Context) -> tuple[subprocess.Popen[str], list[str], threading.Thread] | None:
        python = worker_settings(context).python
        if not python or not Path(python).is_file():
            self.report({"ERROR"}, "no worker Python yet: set up the runtime (or choose a Worker Python) first")
            return None
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
        proc = subprocess.Popen(download_command(python, self.accept_flame_license), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                                errors="replace", env=env, creationflags=flags)
        lines: list[str] = []
        pump = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
        pump.start()
        _STATE.update(proc=proc, status="downloading", percent=0)
        return proc, lines, pump

    def _finish(self, proc: subprocess.Popen[str], lines: list[str], pump: threading.Thread) -> set[str]:
        pump.join(timeout=5)
        _STATE.update(proc=None, status="")
        print("\n".join(lines))  # the whole story (file list, paths) for the system console
        message = summarize(proc.returncode, lines)
        self.report({"INFO"} if proc.returncode == 0 else {"ERROR"}, message)
        return {"FINISHED"} if proc.returncode == 0 else {"CANCELLED"}

    def execute(self, context: bpy.types.Context) -> set[str]:  # blocking: batch, scripts, tests
        started = self._start(context)
        if started is None:
            return {"CANCELLED"}
        started[0].wait()
        return self._finish(*started)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        started = self._start(context)
        if started is None:
            return {"CANCELLED"}
        self._job = started
        self._timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        proc = self._job[0]
        if event.type == "ESC":
            proc.terminate()  # the partial download stays as *.part and resumes next time
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        for area in context.screen.areas if context.screen else []:
            area.tag_redraw()
        if proc.poll() is None:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(*self._job)


def draw_assets_section(prefs: bpy.types.AddonPreferences, context: bpy.types.Context,
                        layout: bpy.types.UILayout) -> None:
    """The preferences' Model Files rows (drawn by ui/preferences.py)."""
    box = layout.box()
    box.label(text="Model Files", icon="FILE_BLEND")
    ckpt = paths.default_checkpoint_dir()
    problem = paths.checkpoint_problem(ckpt)
    box.label(text=f"ARTalk weights: {'missing' if problem else 'present'} in {ckpt}",
              icon="ERROR" if problem else "CHECKMARK")
    if _STATE["proc"] is not None:
        box.label(text=f"Downloading... {_STATE['percent']}% (Esc cancels; it resumes next time)", icon="SORTTIME")
        return
    row = box.row()
    row.operator(FLAMETALK_OT_download_assets.bl_idname, text="Download Model Files").accept_flame_license = False
    op = row.operator(FLAMETALK_OT_download_assets.bl_idname, text="...and FLAME (I accept its licence)")
    op.accept_flame_license = True


CLASSES: tuple[type, ...] = (FLAMETALK_OT_download_assets,)
