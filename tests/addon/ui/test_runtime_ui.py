"""The preferences' Worker Runtime section draws in each state (headless Blender never draws, so a recording layout
stands in for UILayout), and the set-up operator explains itself in a source checkout (no bundled runtime)."""

from __future__ import annotations

import json
from typing import Any

import pytest

bpy = pytest.importorskip("bpy")
from blender_addon.ui import runtime as operators_runtime  # noqa: E402
from blender_addon.worker import runtime  # noqa: E402


class Recorder:
    """Accepts any UILayout call; keeps the texts and operator ids drawn."""

    def __init__(self, log: list[str] | None = None):
        self.log = [] if log is None else log

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Recorder:
            self.log.append(f"{name}:{kwargs.get('text') or (args[0] if args else '')}")
            return Recorder(self.log)

        return call


def _draw() -> list[str]:
    layout = Recorder()
    operators_runtime.draw_runtime_section(None, bpy.context, layout)
    return layout.log


def test_section_in_a_source_checkout_and_while_setting_up(monkeypatch, tmp_path):
    monkeypatch.setenv("FLAMETALK_RUNTIME", str(tmp_path / "rt"))
    log = _draw()
    assert any("No runtime yet" in line for line in log)
    assert any("No bundled runtime in this copy" in line for line in log)
    assert "operator:flametalk.check_worker" in log
    monkeypatch.setitem(operators_runtime._STATE, "running", True)
    monkeypatch.setitem(operators_runtime._STATE, "message", "Installing: 300 MB")
    log = _draw()
    assert any(line.startswith("progress:Installing: 300 MB") for line in log)
    assert "operator:flametalk.cancel_runtime_setup" in log


def test_section_with_a_bundle_offers_setup_and_shows_the_torch_notice(monkeypatch, tmp_path):
    monkeypatch.setenv("FLAMETALK_RUNTIME", str(tmp_path / "rt"))
    info = {"python": "3.11", "platform": "linux-x64", "flametalk": "0.1.0", "requirements": "requirements.txt",
            "requirements_sha256": "a" * 64, "pip_wheel": "pip.whl",
            "torch": {"requirement": "torch==2.13.0", "bundled": False, "index_url": "https://pypi.org/simple",
                      "build": "CPU", "download_bytes": 122_000_000}}
    (tmp_path / "runtime.json").write_text(json.dumps(info))
    monkeypatch.setattr(runtime, "bundle_dir", lambda: tmp_path)
    log = _draw()
    assert "operator:Set Up Runtime" in log and "operator:Set Up with Options..." in log
    assert any("will be downloaded from https://pypi.org/simple" in line for line in log)
