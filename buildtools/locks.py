"""Per-platform lock files of the worker runtime and the wheels they name.

`wheels/requirements-<platform>.txt` (committed) pins every wheel of the worker's Python environment for one
Blender platform, with its sha256 and file name. `resolve()` writes it; `fetch()` fills `wheels/<platform>/`
(git-ignored) with exactly those files. The add-on later installs them offline with
`pip install --no-index --no-deps --require-hashes`, so the lock must be the complete dependency closure.

Why a closure check of our own: `pip download --platform X` picks wheels for X but evaluates environment markers
(`sys_platform == "win32"`, ...) for the machine it runs on, so a Windows-only dependency would be missed and a
Linux-only one kept. After pip's resolution we re-walk every wheel's Requires-Dist with X's markers, fetch what is
missing and drop what is not needed.
"""

from __future__ import annotations

import email.parser
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

PYTHON_VERSION = "3.11"  # Blender 4.2 LTS .. 5.0 bundle CPython 3.11
PYPI = "https://pypi.org/simple"
TORCH_VERSION = "2.13.0"
# Top-level pins of the worker runtime: the versions the test suite runs with (scripts/setup_env.sh).
RUNTIME_PINS = (
    "transformers==5.23.0", "numpy==1.26.4", "scipy==1.17.1", "soundfile==0.14.0", "soxr==1.1.0",
    "tqdm==4.70.1", "pip==26.3",
)  # fmt: skip


@dataclass(frozen=True)
class Platform:
    name: str  # Blender's platform name (manifest `platforms`)
    pip_platforms: tuple[str, ...]  # pip --platform tags, best first
    markers: dict[str, str]  # PEP 508 environment of the target
    torch: str  # the torch requirement that runs there without extra GPU packages
    torch_index: str  # the package index that serves it
    torch_note: str  # what that build can do (shown in the add-on and the README)


def _markers(sys_platform: str, system: str, machine: str, os_name: str) -> dict[str, str]:
    return {
        "sys_platform": sys_platform, "platform_system": system, "platform_machine": machine, "os_name": os_name,
        "python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".9",
        "implementation_name": "cpython", "platform_python_implementation": "CPython",
        "implementation_version": PYTHON_VERSION + ".9", "platform_release": "", "platform_version": "",
    }  # fmt: skip


PLATFORMS: dict[str, Platform] = {
    # Blender 4.2+ on Linux needs glibc 2.28, so manylinux_2_28 and older wheels all run there.
    # PyPI's Linux torch is the CUDA build (502 MB plus ~3 GB of nvidia-* wheels); the CPU build comes from
    # PyTorch's own index.
    "linux-x64": Platform(
        "linux-x64", (*(f"manylinux_2_{m}_x86_64" for m in range(28, 16, -1)), "manylinux2014_x86_64"),
        _markers("linux", "Linux", "x86_64", "posix"), f"torch=={TORCH_VERSION}+cpu",
        "https://download.pytorch.org/whl/cpu", "CPU"),
    "windows-x64": Platform(
        "windows-x64", ("win_amd64",), _markers("win32", "Windows", "AMD64", "nt"), f"torch=={TORCH_VERSION}",
        PYPI, "CPU"),
    # torch 2.13's macOS wheel is macosx_14_0: the bundled runtime needs macOS 14 (Blender itself needs 11.2).
    "macos-arm64": Platform(
        "macos-arm64", ("macosx_14_0_arm64",), _markers("darwin", "Darwin", "arm64", "posix"),
        f"torch=={TORCH_VERSION}", PYPI, "CPU + Apple Metal (MPS)"),
}

LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})"
                       r"\s+#\s+(?P<file>\S+\.whl)\s*$")


class LockError(Exception):
    """The lock cannot be resolved or its wheels cannot be fetched; `str()` says what to do."""


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    sha256: str
    filename: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}  # {self.filename}"


@dataclass
class WheelInfo:
    path: Path
    name: str  # canonical
    version: Version
    requires: list[Requirement] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lock_path(wheels_dir: Path, platform: str) -> Path:
    return wheels_dir / f"requirements-{platform}.txt"


def read_lock(path: Path) -> list[Entry]:
    if not path.is_file():
        raise LockError(f"no lock file {path}: run `python build.py --lock`")
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = LOCK_LINE.match(raw.strip())
        if not match:
            raise LockError(f"{path}:{number}: not a lock line: {raw!r}")
        entries.append(Entry(match["name"], match["version"], match["sha"], match["file"]))
    return entries


def write_lock(path: Path, platform: str, entries: Iterable[Entry]) -> None:
    header = (
        f"# FlameTalk worker runtime for {platform}, CPython {PYTHON_VERSION}. Written by `python build.py --lock`.\n"
        "# The add-on installs exactly these wheels, offline: pip install --no-index --no-deps --require-hashes\n"
    )
    body = "".join(e.line() + "\n" for e in sorted(entries, key=lambda e: e.name))
    path.write_text(header + body, encoding="utf-8")


def wheel_info(path: Path) -> WheelInfo:
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        meta_name = next((n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")),
                         None)
        if meta_name is None:
            raise LockError(f"{path.name}: no .dist-info/METADATA")
        meta = email.parser.Parser().parsestr(archive.read(meta_name).decode("utf-8"), headersonly=True)
    return WheelInfo(path, canonicalize_name(name), version,
                     [Requirement(r) for r in meta.get_all("Requires-Dist") or ()])


def _applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def closure(wheels: dict[str, WheelInfo], roots: list[Requirement], env: dict[str, str]
            ) -> tuple[set[str], dict[str, SpecifierSet]]:
    """Names the target needs from `roots`, and {name: combined specifier} for those no wheel here satisfies."""
    wanted: dict[str, SpecifierSet] = {}
    extras: dict[str, set[str]] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, set()) for r in roots]
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, env, parent_extras):
            continue
        name = canonicalize_name(req.name)
        wanted[name] = wanted.get(name, SpecifierSet()) & req.specifier
        extras.setdefault(name, set()).update(req.extras)
        key = (name, frozenset(extras[name]))
        if name in wheels and key not in walked:
            walked.add(key)
            todo.extend((dep, extras[name]) for dep in wheels[name].requires)
    missing = {name: spec for name, spec in wanted.items()
               if name not in wheels or not spec.contains(wheels[name].version, prereleases=True)}
    return set(wanted), missing


def pip_download(platform: Platform, dest: Path, args: list[str], index: str | None = None) -> None:
    command = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
        "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp" + PYTHON_VERSION.replace(".", ""),
        *[f"--platform={tag}" for tag in platform.pip_platforms], "-d", str(dest), *args,
    ]
    if index and index != PYPI:
        command += ["--extra-index-url", index]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("ERROR")] or result.stderr.splitlines()[-3:]
        raise LockError(f"pip download for {platform.name} failed: " + " | ".join(errors))


def resolve(platform: Platform, wheels_dir: Path, log=print) -> list[Entry]:
    """Resolve the runtime for `platform`, download its wheels into wheels/<platform>/, write the lock."""
    roots = [Requirement(platform.torch), *map(Requirement, RUNTIME_PINS)]
    with tempfile.TemporaryDirectory(prefix=f"flametalk-lock-{platform.name}-") as tmp:
        scratch = Path(tmp)
        log(f"[{platform.name}] resolving {len(roots)} pins with pip")
        # pip picks mutually compatible versions for the pins (its markers are the build machine's: fixed below).
        pip_download(platform, scratch, list(RUNTIME_PINS))
        # torch's metadata names Linux-only CUDA packages that pip would try to fetch for any target: no deps here.
        pip_download(platform, scratch, ["--no-deps", platform.torch], platform.torch_index)
        for _ in range(20):  # fix-point: each round fetches what the target's markers add or constrain
            wheels = {info.name: info for info in map(wheel_info, sorted(scratch.glob("*.whl")))}
            needed, missing = closure(wheels, roots, platform.markers)
            if not missing:
                break
            log(f"[{platform.name}] for the target: {', '.join(f'{n}{s}' for n, s in missing.items())}")
            for name in missing:
                if name in wheels:
                    wheels[name].path.unlink()
            pip_download(platform, scratch, ["--no-deps", *(f"{n}{s}" for n, s in missing.items())])
        else:
            raise LockError(f"[{platform.name}] dependency closure did not settle: {missing}")
        entries = []
        target = wheels_dir / platform.name
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(needed):
            info = wheels[name]
            shutil.copy2(info.path, target / info.path.name)
            entries.append(Entry(name, str(info.version), sha256_of(info.path), info.path.name))
        dropped = sorted(set(wheels) - needed)
        if dropped:
            log(f"[{platform.name}] not needed there: {', '.join(dropped)}")
    write_lock(lock_path(wheels_dir, platform.name), platform.name, entries)
    _prune(target, {e.filename for e in entries})
    return entries


def _prune(folder: Path, keep: set[str]) -> None:
    for path in folder.glob("*.whl"):
        if path.name not in keep:
            path.unlink()


def fetch(platform: Platform, wheels_dir: Path, offline: bool = False, log=print) -> list[Entry]:
    """Make wheels/<platform>/ hold exactly the lock's files (sha256-checked); download what is missing."""
    entries = read_lock(lock_path(wheels_dir, platform.name))
    target = wheels_dir / platform.name
    target.mkdir(parents=True, exist_ok=True)

    def bad(e: Entry) -> bool:
        path = target / e.filename
        return not path.is_file() or sha256_of(path) != e.sha256

    todo = [e for e in entries if bad(e)]
    if todo and offline:
        raise LockError(f"{len(todo)} wheels missing from {target} (e.g. {todo[0].filename}) and --offline given")
    for batch, index in ((
            [e for e in todo if e.name == "torch"], platform.torch_index),
            ([e for e in todo if e.name != "torch"], None)):
        if not batch:
            continue
        log(f"[{platform.name}] downloading {len(batch)} wheels")
        for e in batch:
            (target / e.filename).unlink(missing_ok=True)  # a partial or stale file would be kept by pip
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            req.write("".join(f"{e.name}=={e.version} --hash=sha256:{e.sha256}\n" for e in batch))
        try:
            pip_download(platform, target, ["--no-deps", "--require-hashes", "-r", req.name], index)
        finally:
            Path(req.name).unlink()
    still = [e.filename for e in entries if bad(e)]
    if still:
        raise LockError(f"[{platform.name}] after downloading, these do not match the lock: {', '.join(still)}")
    _prune(target, {e.filename for e in entries})
    return entries
