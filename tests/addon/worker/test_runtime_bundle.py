"""worker/runtime.py bookkeeping without a build: what a bundle says it will download, the runtime's status, and the
set-ups it refuses before touching anything."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from blender_addon.worker import runtime


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
    with pytest.raises(runtime.RuntimeSetupError, match=re.escape("needs Python 3.99")):
        runtime.setup_runtime(_bundle(tmp_path / "b", python="3.99"), tmp_path / "new", sys.executable)
    assert not (tmp_path / "new").exists()
    assert runtime.current_platform() == "linux-x64" or sys.platform != "linux"
