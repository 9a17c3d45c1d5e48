"""`python -m blender_addon.cli animate`: builds, keys, saves; the saved file replays FLAME exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures import hostile_files  # noqa: E402
from fixtures.common import REPO  # noqa: E402
from fixtures.report import record  # noqa: E402
from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon.cli import main as cli  # noqa: E402
from blender_addon.flame import flame_to_blender, forward_motion, load_flame  # noqa: E402
from blender_addon.scene import rig  # noqa: E402

TOL = 1e-4


def _run_cli(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    if not block_torch:
        command = [sys.executable, "-m", "blender_addon.cli", "animate", *args]
    else:  # as in Blender: `import torch` fails
        code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'cli'; "
                "runpy.run_module('blender_addon.cli', run_name='__main__')")
        command = [sys.executable, "-c", code, "animate", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("cli")
    full = synthetic.make_arrays(seed=21)
    small = synthetic.make_arrays(n_verts=400, n_faces=600, seed=22)
    motion = synthetic.random_motion(20, seed=23, rot_scale=0.4)
    np.savez(folder / "motion.npz", motion=motion, fps=np.float32(25))
    np.savez(folder / "short.npz", motion=motion[:, :100], fps=np.float32(25))
    (folder / "garbled.npz").write_bytes(b"PK\x03\x04 not really a zip")
    try:
        small_path = synthetic.write_pt(str(folder / "FLAME_with_eye.pt"), small)
    except ImportError:  # no torch to write the .pt layout: the official pickle layout instead
        small_path = synthetic.write_pkl_2020(str(folder / "small_model.pkl"), small)
    return {
        "folder": str(folder),
        "flame": synthetic.write_pkl_2020(str(folder / "generic_model.pkl"), full),
        "small": small_path,
        "evil": hostile_files.write_malicious_pkl(str(folder / "evil.pkl"), str(folder / "pwned")),
        "motion": str(folder / "motion.npz"),
        "short": str(folder / "short.npz"),
        "garbled": str(folder / "garbled.npz"),
    }


def _open(path: str) -> rig.FlameRig:
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
    return rig.find_rig(bpy.data.objects["FLAME_rig"])


def test_animate_full_size_replays_flame(inputs: dict[str, str]) -> None:
    out = Path(inputs["folder"]) / "take.blend"
    result = _run_cli("--flame", inputs["flame"], "--motion", inputs["motion"], "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "flametalk: wrote" in result.stdout
    flame_rig = _open(str(out))
    scene = bpy.context.scene
    assert (scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end) == (25, 1.0, 1, 20)
    assert len(flame_rig.mesh.data.vertices) == 5023
    motion = np.load(inputs["motion"])["motion"]
    expected = flame_to_blender(forward_motion(load_flame(inputs["flame"]), motion))
    worst = 0.0
    for i in (0, 4, 9, 13, 19):
        scene.frame_set(1 + i)
        worst = max(worst, float(np.abs(rig.evaluated_world_vertices(flame_rig.mesh) - expected[i]).max()))
    record("command line", "animate .blend max vertex error", f"{worst:.2e} m")
    assert worst < TOL


def test_animate_30fps_with_exports(inputs: dict[str, str]) -> None:
    """Also: reads FLAME_with_eye.pt with torch unavailable, as inside Blender."""
    folder = Path(inputs["folder"])
    out, glb, fbx = folder / "t30.blend", folder / "t30.glb", folder / "t30.fbx"
    result = _run_cli("--flame", inputs["small"], "--motion", inputs["motion"], "--out", str(out), "--fps", "30",
                      "--glb", str(glb), "--fbx", str(fbx), "--take", "Hello", block_torch=True)
    assert result.returncode == 0, result.stderr
    assert glb.stat().st_size > 10_000 and fbx.stat().st_size > 10_000
    flame_rig = _open(str(out))
    scene = bpy.context.scene
    assert scene.render.fps == 30 and scene.frame_end == 24  # 20 frames at 25 fps -> keys 1 .. 23.8
    assert flame_rig.armature.animation_data.action.name == "Hello"
    motion = np.load(inputs["motion"])["motion"]
    expected = flame_to_blender(forward_motion(load_flame(inputs["small"]), motion))
    scene.frame_set(7)  # motion frame 5 sits exactly on scene frame 1 + 5 * 30 / 25 = 7
    assert np.abs(rig.evaluated_world_vertices(flame_rig.mesh) - expected[5]).max() < TOL


def test_malicious_flame_file_exit_code_and_one_line(inputs: dict[str, str]) -> None:
    out = Path(inputs["folder"]) / "evil.blend"
    result = _run_cli("--flame", inputs["evil"], "--motion", inputs["motion"], "--out", str(out))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flametalk: error:") and "refused" in lines[0], result.stderr
    assert not out.exists() and not (Path(inputs["folder"]) / "pwned").exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_flame", "FLAME file not found"),
        ("missing_motion", "nope.npz' does not exist"),
        ("short_motion", "must have shape (frames, 106) (100 expression + 3 head + 3 jaw), got (20, 100)"),
        ("garbled_motion", "is not a valid .npz motion file"),
        ("bad_out_folder", "folder does not exist"),
        ("bad_fps", "--fps must be positive"),
        ("no_args", "required"),
    ],
)
def test_bad_input_one_line(case: str, expected: str, inputs: dict[str, str], capsys) -> None:
    folder = Path(inputs["folder"])
    args = {"--flame": inputs["small"], "--motion": inputs["motion"], "--out": str(folder / f"{case}.blend")}
    if case == "missing_flame":
        args["--flame"] = str(folder / "nope.pkl")
    elif case == "missing_motion":
        args["--motion"] = str(folder / "nope.npz")
    elif case == "short_motion":
        args["--motion"] = inputs["short"]
    elif case == "garbled_motion":
        args["--motion"] = inputs["garbled"]
    elif case == "bad_out_folder":
        args["--out"] = str(folder / "no" / "such" / "x.blend")
    elif case == "bad_fps":
        args["--fps"] = "0"
    argv = ["animate"] + ([] if case == "no_args" else [x for kv in args.items() for x in kv])
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.data.objects.new("keep_me", None)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flametalk: error:") and expected in err[0], err
    assert not Path(args["--out"]).exists()
    if case != "bad_fps":  # input errors are found before the scene is touched
        assert [o.name for o in bpy.data.objects] == ["keep_me"]
