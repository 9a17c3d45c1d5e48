"""`python -m blender_addon.cli retarget` on the real ICT head (glTF in m, .blend in cm, FBX exported by Blender and
re-imported): the keyed values are the core's solved weights at S + t * F / 25 and recover known weights; a
jaw-only motion drives jawOpen; a jaw bone takes the rotation; bad input is one line, exit 2, no file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.common import REPO  # noqa: E402
from fixtures.gltf import ICT_FACE  # noqa: E402
from fixtures.ict_flame import expr_keys, ict_flame, rotation, smooth_weights, write_ict_flame  # noqa: E402
from fixtures.report import record  # noqa: E402
from flametalk.retarget import Character, Fit, retarget  # noqa: E402

from blender_addon.scene import character as scene_character  # noqa: E402

FRAMES = 50


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blender_addon.cli", "retarget", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _import_ict() -> bpy.types.Object:
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.import_scene.gltf(filepath=str(ICT_FACE))
    return bpy.data.objects["ICT_Face"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("retarget_cli")
    keys = expr_keys()
    truth = smooth_weights(FRAMES, len(keys), seed=5)
    motion = np.zeros((FRAMES, 106), np.float32)
    motion[:, : len(keys)] = truth
    np.savez(folder / "motion.npz", motion=motion, fps=np.float32(25))
    jaw = np.zeros((FRAMES, 106), np.float32)
    angle = 0.12 * (1 - np.cos(2 * np.pi * np.arange(FRAMES) / 40))
    jaw[:, 103] = angle
    np.savez(folder / "jaw.npz", motion=jaw, fps=np.float32(25))
    nan = motion.copy()
    nan[7, 2] = np.nan
    np.savez(folder / "nan.npz", motion=nan, fps=np.float32(25))
    # the ICT head in cm, turned and moved, as a .blend (transforms applied: they reach the shape keys)
    obj = _import_ict()
    obj.scale = (100.0, 100.0, 100.0)
    obj.rotation_euler = (np.radians(4.0), np.radians(-3.0), np.radians(6.0))
    obj.location = (12.0, -30.0, 150.0)
    bpy.ops.object.select_all(action="DESELECT")
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.transform_apply(location=True, rotation=True, scale=True)
    bpy.data.objects.new("an_empty", None)
    bpy.context.scene.collection.objects.link(bpy.data.objects["an_empty"])
    bpy.ops.mesh.primitive_cube_add(size=0.2)  # a mesh without shape keys
    bpy.context.active_object.name = "plain_cube"
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "ict_cm.blend"))
    bpy.ops.object.select_all(action="DESELECT")
    obj.select_set(True)
    bpy.ops.export_scene.fbx(filepath=str(folder / "ict_cm.fbx"), use_selection=True, object_types={"MESH"})
    # a cube with a shape key: not a head
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.mesh.primitive_cube_add(size=0.2)
    cube = bpy.context.active_object
    cube.shape_key_add(name="Basis")
    cube.shape_key_add(name="jawOpen").data[0].co.z += 0.01
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "cube.blend"))
    return {"folder": folder, "flame": write_ict_flame(folder / "ict_flame.npz", keys), "keys": keys,
            "truth": truth, "motion": motion, "angle": angle}


def _keyed(path: Path, frames: np.ndarray, obj_name: str = "ICT_Face") -> tuple[bpy.types.Object, dict]:
    """The saved character and its keyed shape key values at the scene frames `frames`."""
    bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False, use_scripts=False)
    obj = bpy.data.objects[obj_name]
    action = obj.data.shape_keys.animation_data.action
    from blender_addon.scene import compat

    values = {}
    for fc in compat.iter_action_fcurves(action):
        name = fc.data_path.split('"')[1]
        values[name] = np.array([fc.evaluate(float(f)) for f in frames])
    return obj, values


def _core_weights(obj: bpy.types.Object, flame, motion: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The core's solve on the saved mesh with the fit stored on it (what the CLI keyed must equal this)."""
    arrays = scene_character.extract(obj)
    fit = scene_character.stored_fit(obj)
    assert fit is not None
    result = retarget(flame, Character(**arrays), motion, keys="all", fitted=Fit(**fit))
    return result.names, result.weights


@pytest.mark.parametrize("case", ["glb_m", "blend_cm", "fbx_cm"])
def test_known_weights_are_keyed_and_recovered(case: str, inputs: dict) -> None:
    folder = inputs["folder"]
    character = {"glb_m": str(ICT_FACE), "blend_cm": str(folder / "ict_cm.blend"),
                 "fbx_cm": str(folder / "ict_cm.fbx")}[case]
    out, report = folder / f"{case}.blend", folder / f"{case}.json"
    extra = ["--object", "ICT_Face"] if case == "blend_cm" else []
    fps, start = (30.0, 5) if case == "glb_m" else (25.0, 1)
    result = run_cli("--flame", inputs["flame"], "--motion", str(folder / "motion.npz"), "--character", character,
                     "--out", str(out), "--report", str(report), "--scene-fps", f"{fps:g}", "--start-frame",
                     str(start), "--no-head", *extra)
    assert result.returncode == 0, result.stderr
    frames = start + np.arange(FRAMES) * fps / 25.0
    obj, values = _keyed_fbx(out, frames) if case == "fbx_cm" else _keyed(out, frames)
    scene = bpy.context.scene
    assert scene.frame_start == start and scene.frame_end == int(np.ceil(frames[-1] - 1e-6))
    names, core = _core_weights(obj, ict_flame(inputs["keys"]), inputs["motion"])
    keyed = np.stack([values[n] for n in names], axis=1)
    np.testing.assert_allclose(keyed, core, atol=1e-5)  # what was keyed is the core's solve
    known = [names.index(k) for k in inputs["keys"]]
    error = float(np.abs(keyed[:, known] - inputs["truth"]).mean())
    others = [i for i in range(len(names)) if i not in known]
    rep = json.loads(report.read_text())
    record("retarget CLI", f"{case}: recovery mean abs error", f"{error:.4f}")
    record("retarget CLI", f"{case}: fit rms / residual",
           f"{rep['fit']['rms_mm']:.3f} / {rep['residual_rms_mm']:.3f} mm")
    assert error < 0.03 and np.abs(keyed[:, others]).mean() < 0.03
    assert rep["frames"] == FRAMES and rep["shape_keys"] == names and rep["residual_rms_mm"] < 0.5
    assert rep["fit"]["vertices_used"] > 0.95 * len(obj.data.vertices) and rep["fit"]["rms_mm"] < 0.5
    assert set(rep["seconds"]) == {"fit", "solve", "write"}
    assert scene_character.fit_summary(obj)["vertices_used"] == rep["fit"]["vertices_used"]  # stored with it


def _keyed_fbx(out: Path, frames: np.ndarray) -> tuple[bpy.types.Object, dict]:
    bpy.ops.wm.open_mainfile(filepath=str(out), load_ui=False, use_scripts=False)
    name = next(o.name for o in bpy.data.objects if o.type == "MESH" and scene_character.has_shape_keys(o))
    return _keyed(out, frames, name)


def test_jaw_only_motion_drives_jaw_open(inputs: dict) -> None:
    folder = inputs["folder"]
    out, csv = folder / "jaw.blend", folder / "jaw.csv"
    result = run_cli("--flame", inputs["flame"], "--motion", str(folder / "jaw.npz"), "--character",
                     str(ICT_FACE), "--out", str(out), "--shape-keys", "arkit", "--csv", str(csv))
    assert result.returncode == 0, result.stderr
    _, values = _keyed(out, 1 + np.arange(FRAMES))
    jaw = values["jawOpen"]
    assert np.corrcoef(jaw, inputs["angle"])[0, 1] > 0.9 and jaw.max() > 0.5
    assert max(np.abs(values[n]).max() for n in ("eyeBlink_L", "eyeBlink_R")) < 0.05
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and len(header) == 2 + 52 + 9
    assert len(lines) == 1 + FRAMES and lines[2].startswith("00:00:00:01.000,61,")
    col = header.index("JawOpen")
    np.testing.assert_allclose([float(line.split(",")[col]) for line in lines[1:]], jaw, atol=1e-5)


def test_jaw_bone_takes_the_rotation(inputs: dict) -> None:
    folder = inputs["folder"]
    obj = _import_ict()
    arm_data = bpy.data.armatures.new("rig")
    arm = bpy.data.objects.new("rig", arm_data)
    bpy.context.scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    head = arm_data.edit_bones.new("head")
    head.head, head.tail = (0, 0, -0.1), (0, 0, 0.05)
    jaw = arm_data.edit_bones.new("jaw")
    jaw.head, jaw.tail, jaw.parent = (0.0, -0.005, -0.005), (0.0, -0.08, -0.05), head
    bpy.ops.object.mode_set(mode="OBJECT")
    obj.parent = arm
    obj.modifiers.new("Armature", "ARMATURE").object = arm
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "ict_jaw.blend"))
    out = folder / "jaw_bone.blend"
    result = run_cli("--flame", inputs["flame"], "--motion", str(folder / "jaw.npz"), "--character",
                     str(folder / "ict_jaw.blend"), "--out", str(out), "--jaw-bone", "jaw", "--head-bone", "head",
                     "--shape-keys", "arkit")
    assert result.returncode == 0, result.stderr
    _, values = _keyed(out, 1 + np.arange(FRAMES))
    assert max(np.abs(v).max() for v in values.values()) < 0.02  # the bone explains the jaw
    rig = bpy.data.objects["rig"]
    bone = rig.pose.bones["jaw"]
    assert bone.rotation_mode == "QUATERNION"
    rest = np.array(rig.data.bones["jaw"].matrix_local)[:3, :3]
    for t in (0, 10, 20, 33):
        bpy.context.scene.frame_set(1 + t)
        q = np.array(bone.rotation_quaternion)
        expected_axis = rest.T @ np.array([1.0, 0.0, 0.0])  # FLAME's jaw opens about +x (Blender axes)
        angle = inputs["angle"][t]
        np.testing.assert_allclose(q, [np.cos(angle / 2), *(np.sin(angle / 2) * expected_axis)], atol=1e-4)
    np.testing.assert_allclose(np.array(rig.pose.bones["head"].rotation_quaternion), [1, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize(("case", "expected"), [
    ("no_shape_keys", "has no shape keys"),
    ("not_a_mesh", "is not a mesh"),
    ("cube", "could not fit the FLAME head"),
    ("nan_motion", "NaN"),
    ("unknown_key", "unknown shape key(s): nope"),
    ("bad_character_suffix", "must be a .glb, .gltf, .fbx or .blend"),
    ("missing_bone", "has no armature"),
])
def test_bad_input_one_line_exit_2_no_file(case: str, expected: str, inputs: dict) -> None:
    folder = inputs["folder"]
    args = {"--flame": inputs["flame"], "--motion": str(folder / "motion.npz"),
            "--character": str(folder / "ict_cm.blend"), "--out": str(folder / f"bad_{case}.blend"),
            "--report": str(folder / f"bad_{case}.json")}
    extra: list[str] = []
    if case == "no_shape_keys":
        extra = ["--object", "plain_cube"]
    elif case == "not_a_mesh":
        extra = ["--object", "an_empty"]
    elif case == "cube":
        args["--character"] = str(folder / "cube.blend")
    elif case == "nan_motion":
        args["--motion"] = str(folder / "nan.npz")
    elif case == "unknown_key":
        extra = ["--object", "ICT_Face", "--shape-keys", "jawOpen,nope"]
    elif case == "bad_character_suffix":
        args["--character"] = inputs["flame"]
    elif case == "missing_bone":
        extra = ["--object", "ICT_Face", "--jaw-bone", "jaw"]
    result = run_cli(*[x for kv in args.items() for x in kv], *extra)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("flametalk:")]
    assert len(lines) == 1 and lines[0].startswith("flametalk: error:") and expected in lines[0], result.stderr
    assert not Path(args["--out"]).exists() and not Path(args["--report"]).exists()
    assert not list(folder.glob(f".bad_{case}*"))


def test_rotation_helper_matches_blender() -> None:
    """The test's rotation(degrees) is Blender's XYZ Euler (the cm character was built with it)."""
    from mathutils import Euler

    deg = (4.0, -3.0, 6.0)
    np.testing.assert_allclose(np.array(Euler(np.radians(deg), "XYZ").to_matrix()), rotation(deg), atol=1e-7)


def test_animate_and_batch_onto_a_character(inputs: dict, parity_checkpoint_dir: Path) -> None:
    """animate --character generates with the model, then retargets; batch --character fits the character once."""
    from fixtures.common import AUDIO_DIR
    from flametalk.io.audio import load_audio

    folder = inputs["folder"]
    out, rep = folder / "animated.blend", folder / "animated.json"
    common = ["--flame", inputs["flame"], "--checkpoint", str(parity_checkpoint_dir), "--device", "cpu",
              "--character", str(ICT_FACE), "--shape-keys", "arkit"]
    result = subprocess.run([sys.executable, "-m", "blender_addon.cli", "animate", "--audio",
                             str(AUDIO_DIR / "eng2.wav"), "--out", str(out), "--report", str(rep), *common],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    frames = int(np.ceil(load_audio(AUDIO_DIR / "eng2.wav").size / 640))
    report = json.loads(rep.read_text())
    assert report["frames"] == frames and "jawOpen" in report["shape_keys"]
    _, values = _keyed(out, 1 + np.arange(frames))
    assert len(values) == len(report["shape_keys"])
    assert max(np.ptp(v) for v in values.values()) > 0.05  # the face moves (the test model's motion is not speech)
    assert min(v.min() for v in values.values()) >= 0 and max(v.max() for v in values.values()) <= 1
    batch_dir = folder / "batch"
    batch_dir.mkdir()
    result = subprocess.run([sys.executable, "-m", "blender_addon.cli", "batch", str(AUDIO_DIR / "eng2.wav"),
                             str(AUDIO_DIR / "cn1.wav"), "--out-dir", str(batch_dir), "--csv", *common],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = json.loads((batch_dir / "batch_report.json").read_text())["lines"]
    assert [e["status"] for e in lines] == ["ok", "ok"]
    assert lines[0]["report"]["seconds"]["fit"] > 0 and lines[1]["report"]["seconds"]["fit"] == 0  # fitted once
    for stem in ("eng2", "cn1"):
        assert (batch_dir / f"{stem}.blend").is_file() and (batch_dir / f"{stem}.csv").is_file()
    assert lines[0]["frames"] == frames


def test_exports_carry_the_take(inputs: dict) -> None:
    """--glb and --fbx: the character with its keyed shape keys; the glb re-imports with the same values."""
    folder = inputs["folder"]
    out, glb, fbx = folder / "exp.blend", folder / "exp.glb", folder / "exp.fbx"
    result = run_cli("--flame", inputs["flame"], "--motion", str(folder / "motion.npz"), "--character",
                     str(ICT_FACE), "--out", str(out), "--glb", str(glb), "--fbx", str(fbx), "--no-head")
    assert result.returncode == 0, result.stderr
    assert glb.stat().st_size > 100_000 and fbx.stat().st_size > 100_000
    _, values = _keyed(out, 1 + np.arange(FRAMES))
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.context.scene.render.fps = 25  # the importer converts the file's seconds to this scene's frames
    bpy.ops.import_scene.gltf(filepath=str(glb))
    obj = next(o for o in bpy.data.objects if o.type == "MESH")
    assert len(obj.data.vertices) == 13294
    key = obj.data.shape_keys
    assert key.animation_data is not None and key.animation_data.action is not None
    scene = bpy.context.scene
    for t in (0, 17, 49):
        scene.frame_set(1 + t)
        assert key.key_blocks["jawOpen"].value == pytest.approx(values["jawOpen"][t], abs=1e-4)
