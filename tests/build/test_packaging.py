"""Packaging pieces that need no build: lock files, the target-marker closure, the manifest, runtime bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fixtures.common import REPO
from packaging.requirements import Requirement
from packaging.version import Version

from blender_addon import runtime  # noqa: E402
from buildtools import locks, manifest  # noqa: E402

RUNTIME_NEEDS = {"torch", "transformers", "numpy", "scipy", "soundfile", "soxr", "tqdm", "pip", "tokenizers",
                 "safetensors", "huggingface-hub"}


@pytest.mark.parametrize("platform", sorted(locks.PLATFORMS))
def test_each_platform_has_a_complete_hash_pinned_lock(platform):
    entries = locks.read_lock(locks.lock_path(REPO / "wheels", platform))
    names = {e.name for e in entries}
    assert RUNTIME_NEEDS <= names
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


def _bundle(tmp_path: Path, bundled: bool = True, python: str = "3.11") -> runtime.Bundle:
    info = {"python": python, "platform": "linux-x64", "flametalk": "0.1.0", "requirements": "requirements.txt",
            "requirements_sha256": "a" * 64, "pip_wheel": "pip.whl",
            "torch": {"requirement": "torch==2.13.0", "bundled": bundled, "index_url": "https://pypi.org/simple",
                      "build": "CPU", "download_bytes": 122_000_000}}
    (tmp_path / "runtime.json").write_text(json.dumps(info))
    bundle = runtime.read_bundle(tmp_path)
    assert bundle is not None
    return bundle


def test_torch_notice_only_when_set_up_needs_the_network(tmp_path):
    assert runtime.torch_notice(_bundle(tmp_path)) == ""
    notice = runtime.torch_notice(_bundle(tmp_path, bundled=False))
    assert "torch==2.13.0" in notice and "https://pypi.org/simple" in notice and "122 MB" in notice
    assert "download.pytorch.org/whl/cu" in runtime.torch_notice(_bundle(tmp_path),
                                                                  "https://download.pytorch.org/whl/cu128")


def test_status_and_refusals(tmp_path):
    (tmp_path / "b").mkdir()
    bundle = _bundle(tmp_path / "b")
    target = tmp_path / "rt"
    assert runtime.status(target, bundle)[0] == "missing"
    target.mkdir()
    (target / runtime.STAMP).write_text(json.dumps({"state": "incomplete"}))
    assert runtime.status(target, bundle)[0] == "incomplete"
    python = runtime.venv_python(target)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (target / runtime.STAMP).write_text(json.dumps({"state": "ready", "base_python": sys.executable,
                                                    "requirements_sha256": "b" * 64}))
    assert runtime.status(target, bundle)[0] == "outdated"
    # A folder that is not a runtime is never deleted; a bundle for another Python is refused up front.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_text("x")
    with pytest.raises(runtime.RuntimeSetupError, match="not a FlameTalk runtime"):
        runtime.setup_runtime(bundle, other, sys.executable)
    assert (other / "holiday.jpg").exists()
    with pytest.raises(runtime.RuntimeSetupError, match="needs Python 3.99"):
        runtime.setup_runtime(_bundle(tmp_path / "b", python="3.99"), tmp_path / "new", sys.executable)
    assert not (tmp_path / "new").exists()
    assert runtime.current_platform() == "linux-x64" or sys.platform != "linux"
