"""The farm manifest (core/manifest.py, no bpy, no Ray): CSV and JSON Lines, paths relative to the manifest, a
wrong row as one line with its row number (the others go on), limits, and the resume key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blender_addon.core import manifest
from blender_addon.core.manifest import ManifestError, line_key, read_manifest


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_with_overrides_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    rows = read_manifest(_write(tmp_path / "sub" / "lines.csv", (
        "audio,name,style,flame,mode,fps,glb,fbx,shape,start_frame\n"
        "a.wav,l1,,,,,,,,\n"
        "../b.wav,l2,natural_0,heads/h.npz,fast,29.97,yes,0,id.npy,10\n"
        "/abs/c.wav,l3,styles/s.npy,,exact,24,,true,,\n")))
    assert [r.name for r in rows] == ["l1", "l2", "l3"] and [r.number for r in rows] == [1, 2, 3]
    assert all(r.error is None for r in rows)
    assert rows[0].audio == str(tmp_path / "sub" / "a.wav") and rows[0].overrides == {}
    assert rows[1].audio == str(tmp_path / "b.wav")
    assert rows[1].overrides == {"style": "natural_0", "flame": str(tmp_path / "sub" / "heads" / "h.npz"),
                                 "mode": "fast", "fps": 29.97, "glb": True, "fbx": False,
                                 "shape": str(tmp_path / "sub" / "id.npy"), "start_frame": 10}
    assert rows[2].audio == "/abs/c.wav"
    assert rows[2].overrides == {"style": str(tmp_path / "sub" / "styles" / "s.npy"), "mode": "exact", "fps": 24.0,
                                 "fbx": True}


def test_jsonl_rows(tmp_path: Path) -> None:
    lines = [{"audio": "a.wav", "name": "x1"}, {"audio": "b.wav", "name": "x2", "glb": True, "fps": 30},
             {"audio": "c.wav", "name": "x3", "start_frame": 5}]
    rows = read_manifest(_write(tmp_path / "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n"))
    assert [(r.name, r.audio, r.overrides) for r in rows] == [
        ("x1", str(tmp_path / "a.wav"), {}), ("x2", str(tmp_path / "b.wav"), {"glb": True, "fps": 30.0}),
        ("x3", str(tmp_path / "c.wav"), {"start_frame": 5})]


def test_bad_rows_are_one_line_each_and_the_others_go_on(tmp_path: Path) -> None:
    rows = read_manifest(_write(tmp_path / "m.csv", (
        "audio,name,mode,fps\n"
        "a.wav,good1,,\n"
        "b.wav,,,\n"                      # no name
        "c.wav,bad_mode,slow,\n"          # bad mode
        "d.wav,good1,,\n"                 # duplicate name
        "e.wav,extra,exact,25,surplus\n"  # more values than columns
        "f.wav,../escape,,\n"             # a folder in the name
        "g.wav,badfps,,0\n"
        ",noaudio,,\n"
        "h.wav,good2,fast,30\n")))
    errors = {r.number: r.error for r in rows}
    assert [r.name for r in rows if r.error is None] == ["good1", "good2"]
    assert errors[2] == "manifest row 2 (row2): no name"
    assert errors[3] == "manifest row 3 (bad_mode): mode must be exact or fast, got 'slow'"
    assert errors[4] == "manifest row 4 (good1): the name is used by an earlier row"
    assert errors[5] == "manifest row 5: more values than columns (5 for 4)"
    assert errors[6].startswith("manifest row 6 (../escape): name '../escape' is not a plain file stem")
    assert errors[7] == "manifest row 7 (badfps): fps must be between 1 and 240, got 0"
    assert errors[8] == "manifest row 8 (noaudio): no audio path"
    assert all("\n" not in e for e in errors.values() if e)


def test_bad_jsonl_lines(tmp_path: Path) -> None:
    text = "\n".join([json.dumps({"audio": "a.wav", "name": "ok"}), "{not json", "[1, 2]",
                      json.dumps({"audio": "b.wav", "name": "n2", "voice": "x"}),
                      json.dumps({"audio": "c.wav", "name": "n3", "character": "mh.blend"}),
                      json.dumps({"audio": "d.wav", "name": "n4", "glb": "maybe"})])
    rows = read_manifest(_write(tmp_path / "m.jsonl", text))
    assert rows[0].error is None
    assert rows[1].error.startswith("manifest row 2: not JSON (")
    assert rows[2].error == "manifest row 3: not a JSON object"
    assert rows[3].error.startswith("manifest row 4 (n2): unknown column 'voice'")
    assert rows[4].error == ("manifest row 5 (n3): character: not supported yet (the farm keys the FLAME head; "
                             "give `flame`)")
    assert rows[5].error == "manifest row 6 (n4): glb must be true or false, got 'maybe'"


def test_whole_manifest_errors_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(ManifestError, match="header row with at least the columns audio and name"):
        read_manifest(_write(tmp_path / "h.csv", "file,stem\na.wav,x\n"))
    with pytest.raises(ManifestError, match="unknown column 'voice' in the manifest's header"):
        read_manifest(_write(tmp_path / "u.csv", "audio,name,voice\na.wav,x,y\n"))
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(_write(tmp_path / "e.csv", "audio,name\n"))
    (tmp_path / "bin.csv").write_bytes(b"audio,name\n\xff\xfe,x\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(tmp_path / "bin.csv")
    big = _write(tmp_path / "big.csv", "audio,name\n" + "".join(f"a{i}.wav,n{i}\n" for i in range(20)))
    monkeypatch.setattr(manifest, "MAX_ROWS", 10)
    with pytest.raises(ManifestError, match="more than 10 rows"):
        read_manifest(big)
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(ManifestError, match="larger than"):
        read_manifest(big)
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 1 << 20)
    monkeypatch.setattr(manifest, "MAX_ROWS", 1000)
    rows = read_manifest(_write(tmp_path / "long.csv", f"audio,name\n{'x' * 5000}.wav,long\n"))
    assert rows[0].error == "manifest row 1 (long): audio is longer than 4096 characters"


def test_line_key_follows_every_input(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"one")
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"w1")
    files = {"audio": str(audio), "checkpoint": str(weights), "style": None}
    base = line_key({"mode": "exact", "fps": 25.0}, files)
    assert base == line_key({"fps": 25.0, "mode": "exact"}, dict(files))  # order-free, deterministic
    assert line_key({"mode": "fast", "fps": 25.0}, files) != base
    audio.write_bytes(b"two")
    changed_audio = line_key({"mode": "exact", "fps": 25.0}, files)
    assert changed_audio != base
    weights.write_bytes(b"w2")
    assert line_key({"mode": "exact", "fps": 25.0}, files) not in (base, changed_audio)
    cache: dict[str, str] = {}
    first = line_key({}, files, cache)
    weights.write_bytes(b"w3")  # within one run the cache answers (the checkpoint is hashed once)
    assert line_key({}, files, cache) == first
