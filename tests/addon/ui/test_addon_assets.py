"""Downloading the model files from the preferences: the command, and an offline hub as one clear message."""

from __future__ import annotations

import socket
import sys

import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.ui import assets as operators_assets  # noqa: E402


def test_download_command_and_messages():
    assert operators_assets.download_command("/py", False) == ["/py", "-m", "flametalk", "assets", "download"]
    assert operators_assets.download_command("/py", True)[-1] == "--accept-flame-license"
    assert operators_assets.summarize(0, []) == "model files downloaded and verified"
    assert operators_assets.summarize(2, ["x", "flametalk: error: disk full; free some space"]) == \
        "disk full; free some space"
    assert operators_assets.summarize(3, ["..."]).startswith("cannot reach the model hub")


def test_offline_download_reports_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import addon_utils

    with socket.socket() as s:  # a port nobody listens on: the hub is unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FLAMETALK_HUB_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("FLAMETALK_CACHE", str(tmp_path / "cache"))
    addon_utils.enable("blender_addon", default_set=True)
    try:
        prefs = bpy.context.preferences.addons["blender_addon"].preferences
        prefs.worker_python = sys.executable
        with pytest.raises(RuntimeError) as info:  # an operator's ERROR report surfaces as RuntimeError headless
            bpy.ops.flametalk.download_assets()
        message = str(info.value)
        assert "cannot reach the model hub" in message and str(tmp_path / "cache") in message
        assert message.strip().count("\n") == 0
        cache = tmp_path / "cache"
        assert not any(p.name.endswith(".pt") for p in cache.rglob("*")) if cache.exists() else True
        assert operators_assets._STATE["proc"] is None
    finally:
        addon_utils.disable("blender_addon", default_set=True)
