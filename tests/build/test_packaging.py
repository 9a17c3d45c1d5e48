"""Packaging pieces that need no build: lock files, the target-marker closure, the manifest, the staged add-on."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fixtures.common import REPO
from packaging.requirements import Requirement
from packaging.version import Version

from buildtools import locks, manifest

RUNTIME_NEEDS = {"torch", "transformers", "numpy", "scipy", "soundfile", "soxr", "tqdm", "pip", "tokenizers",
                 "safetensors", "huggingface-hub"}


@pytest.mark.parametrize("platform", sorted(locks.PLATFORMS))
def test_each_platform_has_a_complete_hash_pinned_lock(platform):
    entries = locks.read_lock(locks.lock_path(REPO / "wheels", platform))
    names = {e.name for e in entries}
    assert names >= RUNTIME_NEEDS
    assert not any(n.startswith("nvidia-") for n in names)  # no CUDA stack in a bundled runtime
    torch = next(e for e in entries if e.name == "torch")
    assert Requirement(locks.PLATFORMS[platform].torch).specifier.contains(Version(torch.version))
    tags = {"linux-x64": ("manylinux", "none-any"), "windows-x64": ("win_amd64", "none-any"),
            "macos-arm64": ("macosx", "none-any")}[platform]
    assert all(any(t in e.filename for t in tags) for e in entries), [e.filename for e in entries]
    assert all("cp311" in e.filename or "abi3" in e.filename or "py3" in e.filename or "py2" in e.filename
               for e in entries)


def test_closure_follows_the_targets_markers_not_the_build_machines():
    def info(name: str, version: str, *requires: str) -> locks.WheelInfo:
        return locks.WheelInfo(Path(f"{name}.whl"), name, Version(version), [Requirement(r) for r in requires])

    wheels = {w.name: w for w in (
        info("tqdm", "4.0", 'colorama; platform_system == "Windows"'),
        info("torch", "2.13.0", 'nvidia-cublas; platform_system == "Linux"', "filelock"),
        info("filelock", "3.0"),
        info("colorama", "0.4"),
    )}
    roots = [Requirement("tqdm"), Requirement("torch==2.13.0")]
    needed, missing = locks.closure(wheels, roots, locks.PLATFORMS["windows-x64"].markers)
    assert needed == {"tqdm", "torch", "filelock", "colorama"} and not missing
    needed, missing = locks.closure(wheels, roots, locks.PLATFORMS["linux-x64"].markers)
    assert "colorama" not in needed and set(missing) == {"nvidia-cublas"}
    _, missing = locks.closure(wheels, [Requirement("filelock>=3.5")], locks.PLATFORMS["linux-x64"].markers)
    assert str(missing["filelock"]) == ">=3.5"  # present but too old: fetched again


def test_source_manifest_is_current_and_valid():
    version = tomllib.loads((REPO / "inference" / "pyproject.toml").read_text())["project"]["version"]
    source = (REPO / "blender_addon" / "blender_manifest.toml").read_text()
    assert source == manifest.render(version), "run `python build.py` to refresh blender_addon/blender_manifest.toml"
    import build

    result = subprocess.run([sys.executable, str(build.extension_cli()), "validate", str(REPO / "blender_addon")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wheels" not in source  # Blender must not unpack the runtime into its shared site-packages


def test_staged_addon_carries_its_own_flame_package(tmp_path):
    """build.py stages blender_addon/ without caches or a developer's flame/ folder and copies the shared FLAME
    package (*.py only) in as flame/."""
    import shutil

    import build

    stage = tmp_path / "flametalk"
    shutil.copytree(build.ADDON, stage, ignore=build._stage_ignore)
    build.copy_flame(stage / "flame")
    shipped = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    assert "blender_manifest.toml" not in shipped and not any("__pycache__" in p for p in shipped)
    assert {"__init__.py", "registration.py", "core/controls.py", "cli/__main__.py", "flame/contract.py"} <= shipped
    flame = sorted(p.removeprefix("flame/") for p in shipped if p.startswith("flame/"))
    assert flame == sorted(p.name for p in build.FLAME_SOURCE.glob("*.py"))
