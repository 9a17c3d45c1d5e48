"""The worker runtime: a private Python environment that runs `python -m flametalk.commands.worker`.

The extension zip carries the runtime as plain wheel files in `runtime_wheels/` (not as manifest wheels: Blender
would unpack those into the site-packages every extension shares, and torch alone is hundreds of MB). Set-up makes
a venv with Blender's own Python (`--without-pip`: some Python builds lack ensurepip), then runs pip straight from
the bundled pip wheel to install `runtime_wheels/requirements.txt` offline (`--no-index --no-deps
--require-hashes`: exactly the locked files), and finally starts the worker once to prove it works.
Where a zip was built without torch (build.py --torch-from-index), torch comes from the platform's package index
first; the caller shows `torch_notice()` before starting.

Stdlib only and no bpy at import time: tests drive it outside Blender.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform as _platform
import queue
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.paths import absolute
from .client import WorkerClient, WorkerError

BUNDLE_DIR = "runtime_wheels"  # beside the add-on's __init__.py; must match build.py RUNTIME_DIR
ADDON_PACKAGE = (__package__ or "blender_addon.worker").rpartition(".")[0]  # "bl_ext.<repo>.flametalk" installed
WORKER_PYTHON_ENV = "FLAMETALK_WORKER_PYTHON"
STAMP = "flametalk-runtime.json"
Progress = Callable[[float, str], None]


class RuntimeSetupError(Exception):
    """Set-up failed or was cancelled; `str()` is one readable line saying what to do."""


@dataclass(frozen=True)
class Bundle:
    folder: Path
    info: dict[str, Any]

    @property
    def requirements(self) -> Path:
        return self.folder / self.info["requirements"]

    @property
    def pip_wheel(self) -> Path:
        return self.folder / self.info["pip_wheel"]

    @property
    def torch(self) -> dict[str, Any]:
        return self.info["torch"]


def bundle_dir() -> Path:
    return Path(__file__).resolve().parent.parent / BUNDLE_DIR


def read_bundle(folder: Path | None = None) -> Bundle | None:
    """The runtime shipped in this extension, or None (a source checkout has none)."""
    folder = folder or bundle_dir()
    try:
        info = json.loads((folder / "runtime.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Bundle(folder, info)


def torch_notice(bundle: Bundle, index_url: str = "") -> str:
    """What set-up will download, or '' when it needs no network."""
    torch = bundle.torch
    if torch["bundled"] and not index_url:
        return ""
    size = f", {torch['download_bytes'] / 1e6:.0f} MB" if not index_url else ""
    return (f"{torch['requirement']} is not bundled here and will be downloaded from "
            f"{index_url or torch['index_url']}{size}")


def current_platform() -> str:
    """Blender's platform name for this machine (manifest `platforms`)."""
    machine = _platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x64" if machine in ("x86_64", "amd64") else machine
    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, sys.platform)
    return f"{system}-{arch}"


def venv_python(target: Path) -> Path:
    return target / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def default_runtime_dir(package: str | None = None) -> Path:
    """FLAMETALK_RUNTIME, else a short per-user folder on Windows (torch's deep paths exceed MAX_PATH under
    Blender's config folder), else the extension's user folder (kept across add-on updates), else per-user data."""
    if os.environ.get("FLAMETALK_RUNTIME"):
        return Path(os.environ["FLAMETALK_RUNTIME"])
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "flametalk" / "runtime"
    package = package or ADDON_PACKAGE
    if package.startswith("bl_ext."):
        import bpy

        return Path(bpy.utils.extension_path_user(package, path="runtime", create=False))
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "flametalk" / "runtime"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "flametalk" / "runtime"


def _read_stamp(target: Path) -> dict[str, Any]:
    try:
        return json.loads((target / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def status(target: Path, bundle: Bundle | None) -> tuple[str, str]:
    """('ready' | 'missing' | 'incomplete' | 'outdated' | 'broken', one line for the UI)."""
    stamp = _read_stamp(target)
    python = venv_python(target)
    if not stamp:
        return "missing", "No runtime yet: set it up (offline, from the bundled wheels)"
    if stamp.get("state") != "ready":
        return "incomplete", "The last set-up did not finish: set it up again"
    if not python.is_file():
        return "broken", f"The runtime's Python is gone ({python}): set it up again"
    base_python = stamp.get("base_python", "")
    if not base_python or not Path(base_python).exists():  # Path("") would be the current folder
        return "broken", f"The Python it was made from is gone ({stamp.get('base_python')}): set it up again"
    if bundle is not None and stamp.get("requirements_sha256") != bundle.info["requirements_sha256"]:
        return "outdated", "The add-on was updated: set the runtime up again"
    torch = stamp.get("torch", "")
    return "ready", f"Ready: flametalk {stamp.get('flametalk')}, torch {torch} ({python})"


def default_worker_python(target: Path | None = None) -> str:
    """The managed runtime's Python when it is ready, else '' (the preferences then ask for a Python)."""
    target = target or default_runtime_dir()
    return str(venv_python(target)) if status(target, read_bundle())[0] == "ready" else ""


def automatic_worker_python() -> str:
    """The worker Python used when none is chosen (an empty preference, no --worker-python): env
    FLAMETALK_WORKER_PYTHON, else the managed runtime's Python when it is ready, else ''."""
    env = os.environ.get(WORKER_PYTHON_ENV, "").strip()
    if env:
        return env
    try:
        found = default_worker_python()
    except Exception:  # a broken runtime must not break the panel
        return ""
    return os.fspath(found) if found else ""


def clean_env(offline: bool) -> dict[str, str]:
    """Environment for the runtime's pip and Python: nothing of Blender's or the user's Python settings leaks in.
    Offline steps also ignore pip configuration (an index or find-links there must not change what is installed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    if offline:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    return env


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


class _Step:
    """One subprocess whose output lines are read on a thread, so the caller can poll for cancel and disk use."""

    def __init__(self, command: list[str], env: dict[str, str]):
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        try:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         encoding="utf-8", errors="replace", env=env, creationflags=flags)
        except OSError as err:
            raise RuntimeSetupError(f"cannot run {command[0]} ({err})") from err
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def run(self, on_line: Callable[[str], None], on_tick: Callable[[], None],
            should_cancel: Callable[[], bool] | None, what: str) -> None:
        done = False
        while not done:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:
                done = True
            elif line:
                self.tail = [*self.tail, line][-20:]
                on_line(line)
            on_tick()
            if should_cancel and should_cancel():
                self.proc.kill()
                self.proc.wait()
                raise RuntimeSetupError("set-up cancelled: the runtime is incomplete, set it up again to use it")
        if self.proc.wait() != 0:
            errors = [ln for ln in self.tail if "ERROR" in ln or "Error" in ln] or self.tail[-2:]
            raise RuntimeSetupError(f"{what} failed: {' | '.join(errors)}")


def _python_version(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=60, env=clean_env(offline=True))
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeSetupError(f"cannot run the Python {python} ({err})") from err
    if out.returncode != 0:
        raise RuntimeSetupError(f"the Python {python} does not start: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def _fresh_target(target: Path) -> None:
    """Remove an earlier runtime; never a folder that is not one (the path may be user-chosen)."""
    if target.exists():
        if any(target.iterdir()) and not ((target / STAMP).exists() or (target / "pyvenv.cfg").exists()):
            raise RuntimeSetupError(f"{target} exists and is not a FlameTalk runtime: choose an empty folder")
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)


def _expected_bytes(folder: Path, skip_torch: bool) -> int:
    total = 0
    for wheel in folder.glob("*.whl"):
        if skip_torch and wheel.name.startswith("torch-"):
            continue
        with zipfile.ZipFile(wheel) as archive:
            total += sum(i.file_size for i in archive.infolist())
    return total


def setup_runtime(bundle: Bundle, target: Path, base_python: str, torch_index_url: str = "",
                  progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
                  verify_timeout: float = 300.0) -> dict[str, Any]:
    """Create the runtime at `target` from `bundle` with `base_python`; returns the worker's hello."""
    report = progress or (lambda fraction, message: None)
    want = bundle.info["python"]
    report(0.0, f"Checking {base_python}")
    have = _python_version(base_python)
    if have != want:
        raise RuntimeSetupError(f"the bundled runtime needs Python {want}, {base_python} is {have}: use Blender "
                                f"4.2-5.0 or point FlameTalk at an existing Python with torch")
    _fresh_target(target)
    stamp: dict[str, Any] = {"state": "incomplete", "base_python": absolute(base_python)}
    report(0.02, "Creating the environment")
    _Step([base_python, "-m", "venv", "--without-pip", str(target)], clean_env(offline=True)).run(
        lambda line: None, lambda: None, should_cancel, "creating the environment (python -m venv)")
    (target / STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    python = str(venv_python(target))
    pip = [python, str(bundle.pip_wheel / "pip")]  # pip runs straight from its wheel: nothing to bootstrap
    site = target / ("Lib" if sys.platform == "win32" else "lib")
    started = 0.05
    torch_bundled = bundle.torch["bundled"] and not torch_index_url
    if not torch_bundled:
        index = torch_index_url or bundle.torch["index_url"]
        report(started, f"Downloading {bundle.torch['requirement']} from {index}")

        def on_download(line: str) -> None:
            if line.startswith("Progress ") and " of " in line:
                done, total = (int(x) for x in line[len("Progress "):].split(" of "))
                report(0.05 + 0.35 * done / max(total, 1),
                       f"Downloading torch: {done / 1e6:.0f} / {total / 1e6:.0f} MB")

        _Step([*pip, "install", "--no-cache-dir", "--progress-bar", "raw", "--only-binary=:all:", "--index-url",
               index, "--find-links", str(bundle.folder), bundle.torch["requirement"]], clean_env(offline=False)).run(
            on_download, lambda: None, should_cancel, f"downloading torch from {index}")
        started = 0.4
    requirements = bundle.requirements
    if not torch_bundled:  # the bundled lock still names torch when a zip carries it but the user chose an index
        requirements = target / "requirements-offline.txt"
        requirements.write_text("".join(ln + "\n" for ln in bundle.requirements.read_text().splitlines()
                                        if not ln.startswith("torch==")), encoding="utf-8")
    expected = max(_expected_bytes(bundle.folder, skip_torch=not torch_bundled), 1)
    base_bytes = _folder_bytes(site)
    wheels_total = sum(1 for ln in requirements.read_text().splitlines() if ln.strip())
    seen = {"processed": 0, "last": 0.0}

    def on_line(line: str) -> None:
        if line.startswith("Processing "):
            seen["processed"] += 1
            report(started + 0.1 * (1 - started) * seen["processed"] / wheels_total,
                   f"Checking wheels ({seen['processed']}/{wheels_total})")

    def on_tick() -> None:  # pip is silent while it unpacks: show the bytes written so far
        if seen["processed"] >= wheels_total and time.monotonic() - seen["last"] > 1.0:
            seen["last"] = time.monotonic()
            written = _folder_bytes(site) - base_bytes
            share = min(written / expected, 1.0)
            report(started + (0.1 + 0.8 * share) * (1 - started) * 0.95, f"Installing: {written / 1e6:.0f} MB")

    report(started, "Installing the bundled wheels (offline)")
    _Step([*pip, "install", "--no-index", "--no-deps", "--require-hashes", "--only-binary=:all:", "--no-cache-dir",
           "--no-compile", "--find-links", str(bundle.folder), "-r", str(requirements)], clean_env(offline=True)).run(
        on_line, on_tick, should_cancel, "installing the bundled wheels")
    report(0.95, "Starting the worker to check the runtime")
    hello = verify_runtime(python, bundle.info["flametalk"], verify_timeout)
    stamp.update(state="ready", requirements_sha256=bundle.info["requirements_sha256"], flametalk=hello["flametalk"],
                 torch=hello.get("torch"), platform=bundle.info["platform"], created=time.strftime("%Y-%m-%d %H:%M"))
    (target / STAMP).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    report(1.0, f"Runtime ready: torch {hello.get('torch')}, devices {', '.join(hello.get('devices', []))}")
    return hello


def verify_runtime(python: str, flametalk_version: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Start the worker with `python`, read its hello, stop it. Also checks a user-chosen existing Python."""
    client = WorkerClient(python, env={"PYTHONNOUSERSITE": "1"})
    try:
        hello = client.start(timeout=timeout)
    except WorkerError as err:
        raise RuntimeSetupError(f"the worker does not start with {python}: {err}") from err
    finally:
        client.stop()
    if flametalk_version and hello.get("flametalk") != flametalk_version:
        raise RuntimeSetupError(f"{python} runs flametalk {hello.get('flametalk')}, this add-on needs "
                                f"{flametalk_version}: set the runtime up again")
    return hello
