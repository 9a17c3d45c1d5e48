"""core/paths.py (no bpy): the asset cache rule is flametalk's, and problems with a checkpoint or a file are one
readable line."""

from __future__ import annotations

from pathlib import Path

import pytest

from blender_addon.core import paths


def test_cache_path_rule_matches_flametalk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assets = pytest.importorskip("flametalk.assets")
    for env in ({"FLAMETALK_CACHE": str(tmp_path / "c")}, {"XDG_CACHE_HOME": str(tmp_path / "x")},
                {"XDG_CACHE_HOME": "relative/ignored"}, {}):
        monkeypatch.delenv("FLAMETALK_CACHE", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert paths.cache_dir() == assets.cache_dir()
        assert paths.default_checkpoint_dir() == assets.default_checkpoint_dir()
        assert paths.style_dir() == assets.style_dir()


def test_checkpoint_and_file_problems(tmp_path: Path) -> None:
    assert "checkpoint not found" in paths.checkpoint_problem(tmp_path / "nope")
    assert "no weights file" in paths.checkpoint_problem(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    assert "config.json missing" in paths.checkpoint_problem(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert paths.checkpoint_problem(tmp_path) is None and paths.checkpoint_problem(tmp_path / "model.pt") is None
    (tmp_path / "style_motion").mkdir()
    (tmp_path / "style_motion" / "natural_0.pt").write_bytes(b"x")
    assert paths.release_styles(tmp_path) == ["natural_0"]
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "empty" in paths.file_problem(tmp_path / "empty.wav", "audio file")
    assert "not found" in paths.file_problem(tmp_path / "x.wav", "audio file")


def test_absolute_collapses_dots_and_keeps_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("link/../link/take.blend") == str(tmp_path / "link" / "take.blend")  # not .../real/...
    assert paths.absolute(Path("out") / ".." / "a.blend") == str(tmp_path / "a.blend")
