"""Build the FlameTalk Blender extension: one validated zip per platform, each carrying its worker runtime.

    python build.py                         # every platform: fetch the locked wheels, build + validate dist/*.zip
    python build.py --platform linux-x64    # just one (repeatable)
    python build.py --lock                  # re-resolve wheels/requirements-<platform>.txt first (network)
    python build.py --offline               # never download: wheels/<platform>/ must hold the locked files
    python build.py --torch-from-index      # leave torch out: the add-on downloads it at set-up, with a notice

Steps: build the `flametalk` wheel from inference/; make wheels/<platform>/ hold exactly the lock's wheels (pip
download, sha256-checked); stage blender_addon/ (no caches) plus its `flame/` package copied from
inference/flametalk/flame/ (the one source of the FLAME reader and the shared contract) with a one-platform
blender_manifest.toml and runtime_wheels/ (the wheels + requirements.txt with hashes + runtime.json); zip it with
Blender's extension CLI (`blender_ext.py build --split-platforms`) and check the result with `blender_ext.py
validate`.
Needs the developer environment (.venv: bpy provides the extension CLI, `packaging` reads wheels).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from buildtools import locks, manifest

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_addon"
FLAME_SOURCE = ROOT / "inference" / "flametalk" / "flame"  # shipped as the add-on's `flame` package
RUNTIME_DIR = "runtime_wheels"  # must match blender_addon/worker/runtime.py BUNDLE_DIR
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def _stage_ignore(folder: str, names: list[str]) -> set[str]:
    """Caches everywhere; at the top level also the source manifest (rendered per platform), a runtime folder and
    a `flame` folder of a developer's own (the stage always gets a fresh copy of FLAME_SOURCE)."""
    ignored = set(_IGNORE(folder, names))
    if Path(folder).resolve() == ADDON.resolve():
        ignored |= {"blender_manifest.toml", RUNTIME_DIR, "flame"} & set(names)
    return ignored


def copy_flame(target: Path) -> None:
    """The shared FLAME package's modules (*.py only: no caches, no tests) as `target` (the add-on's flame/)."""
    target.mkdir(parents=True)
    for module in sorted(FLAME_SOURCE.glob("*.py")):
        shutil.copy2(module, target / module.name)


def project_version() -> str:
    with open(ROOT / "inference" / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["version"]


def extension_cli() -> Path:
    """Blender's stdlib-only extension tool, shipped inside the bpy package."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("build.py: needs the bpy module for Blender's extension CLI (run `bash scripts/setup_env.sh` and "
                 "use .venv/bin/python)")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        sys.exit("build.py: blender_ext.py not found inside the bpy package")
    return found[-1]


def build_flametalk_wheel(out: Path) -> Path:
    """Build from a clean copy so setuptools' build/ and egg-info never land in the source tree."""
    with tempfile.TemporaryDirectory(prefix="flametalk-src-") as tmp:
        src = Path(tmp) / "inference"
        shutil.copytree(ROOT / "inference", src, ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "*.egg-info", "build", "dist"))
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
             "-q", "-w", str(out), str(src)], capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"build.py: building the flametalk wheel failed:\n{result.stderr[-2000:]}")
    wheels = sorted(out.glob(f"flametalk-{project_version()}-*.whl"))
    if not wheels:
        sys.exit(f"build.py: no flametalk wheel in {out}")
    return wheels[-1]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the wheels are large: a hard link costs nothing
    except OSError:
        shutil.copy2(src, dst)


def unpacked_bytes(wheels: list[Path]) -> int:
    total = 0
    for path in wheels:
        with zipfile.ZipFile(path) as archive:
            total += sum(info.file_size for info in archive.infolist())
    return total


def stage(platform: locks.Platform, version: str, entries: list[locks.Entry], flametalk_whl: Path,
          wheels_dir: Path, stage_root: Path, torch_from_index: bool) -> Path:
    source = stage_root / platform.name / manifest.EXTENSION_ID
    shutil.rmtree(source.parent, ignore_errors=True)
    shutil.copytree(ADDON, source, ignore=_stage_ignore)
    copy_flame(source / "flame")
    (source / "blender_manifest.toml").write_text(manifest.render(version, [platform.name]), encoding="utf-8")
    bundle = source / RUNTIME_DIR
    bundle.mkdir()
    torch_entry = next(e for e in entries if e.name == "torch")
    shipped = [e for e in entries if not (torch_from_index and e.name == "torch")]
    for entry in shipped:
        _link_or_copy(wheels_dir / platform.name / entry.filename, bundle / entry.filename)
    shutil.copy2(flametalk_whl, bundle / flametalk_whl.name)
    own = locks.Entry("flametalk", version, locks.sha256_of(flametalk_whl), flametalk_whl.name)
    requirements = "".join(e.line() + "\n" for e in [*shipped, own])
    (bundle / "requirements.txt").write_text(requirements, encoding="utf-8")
    pip_entry = next(e for e in entries if e.name == "pip")
    torch_path = wheels_dir / platform.name / torch_entry.filename
    info = {
        "format": 1,
        "platform": platform.name,
        "python": locks.PYTHON_VERSION,
        "flametalk": version,
        "requirements": "requirements.txt",
        "requirements_sha256": locks.sha256_of(bundle / "requirements.txt"),
        "pip_wheel": pip_entry.filename,
        "installed_bytes": unpacked_bytes([*bundle.glob("*.whl")] + ([torch_path] if torch_from_index else [])),
        "torch": {
            "requirement": f"torch=={torch_entry.version}",
            "bundled": not torch_from_index,
            "index_url": platform.torch_index,
            "build": platform.torch_note,
            "download_bytes": torch_path.stat().st_size,
        },
    }
    (bundle / "runtime.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return source


def run_cli(cli: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, str(cli), *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"build.py: blender_ext.py {args[0]} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def check_zip(path: Path, platform: str) -> None:
    """What Blender's validate does not know about: our runtime folder is complete and the manifest is ours."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        generated = archive.read("blender_manifest.toml").decode("utf-8")
        requirements = archive.read(f"{RUNTIME_DIR}/requirements.txt").decode("utf-8")
    if f'platforms = ["{platform}"]' not in generated:
        sys.exit(f"build.py: {path.name}: manifest is not for {platform} only")
    wanted = ["__init__.py", "flame/__init__.py", "flame/contract.py", f"{RUNTIME_DIR}/runtime.json"]
    wanted += [f"{RUNTIME_DIR}/{line.rsplit('# ', 1)[1]}" for line in requirements.splitlines() if line.strip()]
    lacking = [name for name in wanted if name not in names]
    if lacking:
        sys.exit(f"build.py: {path.name} lacks {', '.join(lacking)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append", choices=sorted(locks.PLATFORMS),
                        help="build only this platform (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the zips go (default: dist/)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="locks + wheel cache (default: wheels/)")
    parser.add_argument("--lock", action="store_true", help="re-resolve the lock files (needs PyPI)")
    parser.add_argument("--offline", action="store_true", help="never download wheels")
    parser.add_argument("--torch-from-index", action="store_true",
                        help="do not bundle torch: the add-on installs it from the platform's index at set-up")
    args = parser.parse_args(argv)
    platforms = [locks.PLATFORMS[p] for p in (args.platform or manifest.ALL_PLATFORMS)]
    version = project_version()
    cli = extension_cli()

    source_manifest = ADDON / "blender_manifest.toml"  # the source folder stays a valid extension for developers
    if not source_manifest.is_file() or source_manifest.read_text(encoding="utf-8") != manifest.render(version):
        source_manifest.write_text(manifest.render(version), encoding="utf-8")

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flametalk-build-"))
    try:
        flametalk_whl = build_flametalk_wheel(work / "wheel")
        report = []
        for platform in platforms:
            try:
                if args.lock:
                    entries = locks.resolve(platform, args.wheels)
                else:
                    entries = locks.fetch(platform, args.wheels, offline=args.offline)
            except locks.LockError as err:
                sys.exit(f"build.py: {err}")
            source = stage(platform, version, entries, flametalk_whl, args.wheels, work / "stage",
                           args.torch_from_index)
            zip_name = f"{manifest.EXTENSION_ID}-{version}-{platform.name.replace('-', '_')}.zip"
            (args.out / zip_name).unlink(missing_ok=True)
            run_cli(cli, "build", "--source-dir", str(source), "--output-dir", str(args.out), "--split-platforms")
            zip_path = args.out / zip_name
            run_cli(cli, "validate", str(zip_path))
            check_zip(zip_path, platform.name)
            info = json.loads((source / RUNTIME_DIR / "runtime.json").read_text())
            report.append((zip_path, info))
            print(f"[{platform.name}] {zip_path.relative_to(ROOT) if zip_path.is_relative_to(ROOT) else zip_path}: "
                  f"{zip_path.stat().st_size / 1e6:.1f} MB, validated", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nzip                                   size     runtime (installed)  torch")
    for zip_path, info in report:
        torch = info["torch"]
        where = "bundled" if torch["bundled"] else f"downloaded at set-up from {torch['index_url']}"
        print(f"{zip_path.name:<37} {zip_path.stat().st_size / 1e6:6.1f} MB  {info['installed_bytes'] / 1e6:8.0f} MB"
              f"          {torch['requirement']} ({torch['build']}, {torch['download_bytes'] / 1e6:.0f} MB) {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
