"""Output folders and files of `python -m blender_addon.cli` (issue 19, items 4 and 5).

- An output folder that cannot take a file is reported before any work: exit 2, one line, nothing written
  (`animate` said "Blender failed" with exit 1; `batch` generated every line, then died in a traceback).
- A take's .blend/.glb/.fbx go to temporaries beside them and are renamed into place together: an export failing
  halfway (a full disk) leaves the previous files byte for byte, and no temporaries.
- Leftovers of a killed run (temporaries, Blender's `X.blend@`) are removed by the next run; a live run's are not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon.cli import main as cli  # noqa: E402
from blender_addon.core import staging  # noqa: E402
from blender_addon.scene import export  # noqa: E402

DEAD_PID = 4_000_000  # above Linux's pid_max: no process has it


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("outputs_in")
    np.savez(folder / "motion.npz", motion=synthetic.random_motion(12, seed=3), fps=np.float32(25))
    flame = synthetic.write_npz(str(folder / "head.npz"), synthetic.make_arrays(n_verts=300, n_faces=500, seed=5))
    (folder / "broken.wav").write_bytes(b"RIFF....not audio")
    return {"flame": flame, "motion": str(folder / "motion.npz"), "broken": str(folder / "broken.wav")}


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """An existing folder where no file can be created, for this user (root writes through permission bits, so
    root gets a filesystem that refuses new files)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys")
    try:
        handle, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        yield folder
        return
    os.close(handle)
    Path(probe).unlink()
    pytest.skip("no folder here refuses new files")


def _animate(inputs: dict[str, str], out: Path, *extra: str) -> int:
    return cli.main(["animate", "--flame", inputs["flame"], "--motion", inputs["motion"], "--out", str(out), *extra])


def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("flametalk: error: "), err
    return err[0]


@pytest.mark.parametrize("option", ["--out", "--glb", "--fbx"])
def test_animate_unwritable_folder_is_bad_input(option: str, inputs, unwritable: Path, tmp_path: Path,
                                                capsys) -> None:
    outs = {"--out": tmp_path / "t.blend", "--glb": tmp_path / "t.glb", "--fbx": tmp_path / "t.fbx"}
    outs[option] = unwritable / ("t" + outs[option].suffix)
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.data.objects.new("keep_me", None)
    code = _animate(inputs, outs["--out"], "--glb", str(outs["--glb"]), "--fbx", str(outs["--fbx"]))
    line = _one_error(capsys)
    assert code == 2 and f"{option}: cannot write in {unwritable}" in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere, not even the .blend
    assert [o.name for o in bpy.data.objects] == ["keep_me"]  # found before the scene was touched


def test_batch_unwritable_out_dir_fails_before_any_line(inputs, unwritable: Path, capsys) -> None:
    code = cli.main(["batch", inputs["broken"], "--flame", inputs["flame"], "--out-dir", str(unwritable), "--glb"])
    line = _one_error(capsys)
    assert code == 2 and f"--out-dir: cannot write in {unwritable}" in line, line


def _fill_previous(folder: Path) -> dict[str, bytes]:
    previous = {name: f"previous {name} ".encode() * 100 for name in ("t.blend", "t.glb", "t.fbx")}
    for name, data in previous.items():
        (folder / name).write_bytes(data)
    return previous


def test_export_failing_halfway_leaves_the_previous_take(inputs, tmp_path: Path, monkeypatch, capsys) -> None:
    """The FBX export dies after writing part of its file (a full disk): .blend, .glb and .fbx stay the previous
    ones, byte for byte (the old code had already replaced the .blend and .glb and left a truncated .fbx)."""
    previous = _fill_previous(tmp_path)
    calls = []

    def failing_fbx(rig, filepath, take=None, atomic=True):
        calls.append(filepath)
        Path(filepath).write_bytes(b"Kaydara FBX Binary  \x00" + b"\x00" * 1000)  # what got out before the disk filled
        raise RuntimeError("Error: [Errno 28] No space left on device")

    monkeypatch.setattr(export, "export_fbx", failing_fbx)
    code = _animate(inputs, tmp_path / "t.blend", "--glb", str(tmp_path / "t.glb"), "--fbx", str(tmp_path / "t.fbx"))
    assert code == 1 and "No space left on device" in _one_error(capsys)
    assert calls and Path(calls[0]).name.startswith(".t.fbx.flametalk-tmp-")  # written beside, not over, t.fbx
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == previous  # and no temporaries left


def test_takes_are_replaced_together_and_nothing_else_remains(inputs, tmp_path: Path, capsys) -> None:
    _fill_previous(tmp_path)
    code = _animate(inputs, tmp_path / "t.blend", "--glb", str(tmp_path / "t.glb"), "--fbx", str(tmp_path / "t.fbx"))
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.blend", "t.fbx", "t.glb"]
    assert (tmp_path / "t.blend").read_bytes()[:4] in (b"BLEN", b"\x28\xb5\x2f\xfd")  # plain or zstd-packed
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "t.blend"), load_ui=False, use_scripts=False)
    assert "FLAME_rig" in bpy.data.objects and bpy.data.filepath == str(tmp_path / "t.blend")
    assert (tmp_path / "t.glb").read_bytes()[:4] == b"glTF"
    assert (tmp_path / "t.fbx").read_bytes()[:18] == b"Kaydara FBX Binary"


def test_leftovers_of_a_killed_run_are_cleaned(inputs, tmp_path: Path, capsys) -> None:
    dead = [tmp_path / f".t.glb.flametalk-tmp-{DEAD_PID}.glb", tmp_path / f".t.blend.flametalk-tmp-{DEAD_PID}.blend@",
            tmp_path / f".other.fbx.flametalk-tmp-{DEAD_PID}.fbx", tmp_path / "t.blend@"]
    for path in dead:
        path.write_bytes(b"\x00" * 64)
    alive = tmp_path / f".t.glb.flametalk-tmp-{os.getppid()}.glb"  # a run still writing: left alone
    alive.write_bytes(b"in progress")
    code = _animate(inputs, tmp_path / "t.blend", "--glb", str(tmp_path / "t.glb"))
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t.blend", "t.glb", alive.name])


def test_a_swap_cut_short_puts_the_previous_file_back(tmp_path: Path) -> None:
    """Killed between moving t.fbx aside and renaming the new one in: the next run restores it."""
    aside = tmp_path / f".t.fbx.flametalk-old-{DEAD_PID}.fbx"
    aside.write_bytes(b"previous fbx")
    (tmp_path / f".t.fbx.flametalk-tmp-{DEAD_PID}.fbx").write_bytes(b"new, maybe incomplete")
    (tmp_path / f".u.glb.flametalk-old-{DEAD_PID}.glb").write_bytes(b"older glb")
    (tmp_path / "u.glb").write_bytes(b"new glb, swapped in")
    removed = staging.clean_leftovers(str(tmp_path))
    assert len(removed) == 3
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "t.fbx": b"previous fbx", "u.glb": b"new glb, swapped in"}


def test_batch_report_is_written_through_a_temporary(inputs, tmp_path: Path, capsys) -> None:
    """A batch whose only line is bad still writes its report, atomically, and leaves nothing else."""
    code = cli.main(["batch", inputs["broken"], "--flame", inputs["flame"], "--out-dir", str(tmp_path)])
    assert code == 1
    assert [p.name for p in tmp_path.iterdir()] == ["batch_report.json"]
    import json

    report = json.loads((tmp_path / "batch_report.json").read_text())
    assert report["failed"] == 1 and report["lines"][0]["status"] == "failed"
