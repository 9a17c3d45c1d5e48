"""FLAME rig in Blender (bpy 5.0.1 headless) deforms exactly like the numpy FLAME forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures import hostile_files  # noqa: E402
from fixtures.report import record  # noqa: E402
from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon import registration  # noqa: E402
from blender_addon.flame import (  # noqa: E402
    JOINT_NAMES,
    axis_angle_to_quaternion,
    flame_to_blender,
    forward,
    forward_motion,
    load_flame,
)
from blender_addon.scene import compat, keyframes, rig  # noqa: E402

TOL = 1e-4  # metres
MAX_ERRORS: dict[str, float] = {}  # per check, the worst seen; in the run's report


@pytest.fixture(scope="module")
def flame_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("flame_rig")
    arrays = synthetic.make_arrays(seed=5)  # full FLAME size: 5023 vertices, 9976 faces
    shape = np.random.default_rng(6).normal(size=300)
    np.save(folder / "shape.npy", shape)
    evil = hostile_files.write_malicious_pkl(str(folder / "evil.pkl"), str(folder / "pwned"))
    (folder / "garbled.pkl").write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    bad = dict(arrays, posedirs=arrays["posedirs"][:, :, :20])
    return {
        "pkl": synthetic.write_pkl_2020(str(folder / "generic_model.pkl"), arrays),
        "shape": str(folder / "shape.npy"),
        "evil": evil,
        "sentinel": str(folder / "pwned"),
        "garbled": str(folder / "garbled.pkl"),
        "wrong_shape": synthetic.write_npz(str(folder / "wrong.npz"), bad),
        "missing": str(folder / "missing.pkl"),
    }


@pytest.fixture(scope="module")
def model(flame_files: dict[str, str]):
    return load_flame(flame_files["pkl"], use_torch=False)


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.context.scene.render.fps = 25  # Blender's default is 24; ARTalk motion is 25 fps
    yield
    bpy.ops.wm.read_homefile(use_empty=True)


def _record(name: str, err: float) -> None:
    MAX_ERRORS[name] = max(MAX_ERRORS.get(name, 0.0), err)
    record("FLAME rig: max vertex error (m)", name, f"{MAX_ERRORS[name]:.2e}")


def _check_frame(flame_rig: rig.FlameRig, expected_flame: np.ndarray, label: str) -> float:
    got = rig.evaluated_world_vertices(flame_rig.mesh)
    err = float(np.abs(got - flame_to_blender(expected_flame)).max())
    _record(label, err)
    assert err < TOL, f"{label}: max vertex error {err:.3g} m"
    return err


def _set_frame(frame: float) -> None:
    whole = int(np.floor(frame))
    bpy.context.scene.frame_set(whole, subframe=float(frame - whole))


def test_rig_structure(model) -> None:
    flame_rig = rig.build_rig(model)
    mesh = flame_rig.mesh.data
    assert (len(mesh.vertices), len(mesh.polygons)) == (5023, 9976)
    np.testing.assert_allclose(
        np.array([v.co for v in mesh.vertices[:50]]), flame_to_blender(model.v_template[:50]), atol=1e-7
    )
    names = [kb.name for kb in mesh.shape_keys.key_blocks]
    assert names == ["Basis"] + [f"exp_{i:03d}" for i in range(100)] + [f"pose_{i:03d}" for i in range(36)]
    assert all(kb.slider_min == -10 and kb.slider_max == 10 for kb in mesh.shape_keys.key_blocks[1:])
    bones = flame_rig.armature.data.bones
    for j, name in enumerate(JOINT_NAMES):
        parent = model.parents[j]
        assert (bones[name].parent.name if bones[name].parent else None) == (JOINT_NAMES[parent] if j else None)
        # bone axes == FLAME axes: the rest rotation is the FLAME -> Blender axis change
        np.testing.assert_allclose(np.array(bones[name].matrix_local)[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]],
                                   atol=1e-6)
    assert {g.name for g in flame_rig.mesh.vertex_groups} == {"DEF-" + n for n in JOINT_NAMES}
    drivers = list(mesh.shape_keys.animation_data.drivers) + list(
        flame_rig.helper.data.shape_keys.animation_data.drivers)
    assert len(drivers) == 36 + 100
    assert all(fc.driver.is_simple_expression and fc.driver.is_valid for fc in drivers)
    assert rig.find_rig(flame_rig.mesh).armature == flame_rig.armature


def test_keyed_motion_matches_forward_pass(model, flame_files: dict[str, str]) -> None:
    shape = np.load(flame_files["shape"])
    flame_rig = rig.build_rig(model, shape)
    motion = synthetic.random_motion(12, seed=2, rot_scale=0.4)
    take = keyframes.write_take(flame_rig, motion, 25.0, name="take A")
    expected = forward_motion(model, motion, shape)
    np.testing.assert_array_equal(take.frames, np.arange(1, 13))
    for i in (0, 3, 7, 11, 5):
        _set_frame(take.frames[i])
        _check_frame(flame_rig, expected[i], "keyed 25 fps")
    # Half-way between keys: linear keys interpolate quaternion components (not unit length); Blender normalises
    # the bone's quaternion and so must the pose-corrective drivers. Expected: FLAME with the interpolated values.
    curves = compat.iter_action_fcurves(flame_rig.armature.animation_data.action)
    assert all(k.interpolation == "LINEAR" for fc in curves for k in fc.keyframe_points)
    for i in (2, 8):
        mid = 0.5 * (motion[i] + motion[i + 1])
        for sl in (slice(100, 103), slice(103, 106)):
            q = axis_angle_to_quaternion(motion[i, sl]) + axis_angle_to_quaternion(motion[i + 1, sl])
            mid[sl] = _quat_to_axis_angle(q)
        _set_frame(take.frames[i] + 0.5)
        _check_frame(flame_rig, forward_motion(model, mid[None], shape)[0], "between keys")


def _quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q)
    vec_norm = np.linalg.norm(q[1:])
    return q[1:] / vec_norm * 2 * np.arctan2(vec_norm, q[0]) if vec_norm > 1e-12 else np.zeros(3)


def test_fractional_keys_at_30_fps(model) -> None:
    bpy.context.scene.render.fps = 30
    flame_rig = rig.build_rig(model)
    motion = synthetic.random_motion(10, seed=3)
    take = keyframes.write_take(flame_rig, motion, 25.0, name="take 30")
    np.testing.assert_allclose(take.frames, 1 + np.arange(10) * 1.2)
    expected = forward_motion(model, motion)
    for i in (1, 4, 9):
        _set_frame(take.frames[i])
        _check_frame(flame_rig, expected[i], "keyed 30 fps")


def test_every_joint_and_expression_by_hand(model) -> None:
    """Neck and eyes too (ARTalk leaves them at rest, users may not): set bones and sliders directly."""
    flame_rig = rig.build_rig(model)
    rng = np.random.default_rng(4)
    for _ in range(2):
        pose, expr = rng.normal(size=15) * 0.35, rng.normal(size=100) * 1.5
        for j, name in enumerate(JOINT_NAMES):
            flame_rig.armature.pose.bones[name].rotation_quaternion = axis_angle_to_quaternion(pose[3 * j:3 * j + 3])
        for e, value in enumerate(expr):
            flame_rig.key.key_blocks[f"exp_{e:03d}"].value = value
        bpy.context.view_layer.update()
        _check_frame(flame_rig, forward(model, pose, expr)[0][0], "all joints")


@pytest.mark.parametrize("layout", ["pkl2020", "pkl2023", "npz", "pt"])
def test_every_layout_builds_an_exact_rig(layout: str, tmp_path: Path) -> None:
    arrays = synthetic.make_arrays(n_verts=400, n_faces=700, seed=12)
    if layout == "pt":
        pytest.importorskip("torch")  # only to write the file; the add-on reads it without torch
    writer = {"pkl2020": synthetic.write_pkl_2020, "pkl2023": synthetic.write_pkl_2023,
              "npz": synthetic.write_npz, "pt": synthetic.write_pt}[layout]
    name = {"pkl2023": "flame2023.pkl", "npz": "flame.npz", "pt": "FLAME_with_eye.pt"}.get(layout, "generic_model.pkl")
    small = load_flame(writer(str(tmp_path / name), arrays), use_torch=False)
    flame_rig = rig.build_rig(small)
    assert flame_rig.warnings == small.warnings and (layout == "pkl2023") == bool(small.warnings)
    motion = synthetic.random_motion(3, seed=13, rot_scale=0.5)
    keyframes.write_take(flame_rig, motion, name=layout)
    _set_frame(3)
    _check_frame(flame_rig, forward_motion(small, motion)[2], f"layout {layout}")


def test_takes_keep_earlier_actions_and_curves_stay_exact(model) -> None:
    flame_rig = rig.build_rig(model)
    motion_a, motion_b = synthetic.random_motion(6, seed=7), synthetic.random_motion(6, seed=8)
    take_a = keyframes.write_take(flame_rig, motion_a, name="A")
    take_b = keyframes.write_take(flame_rig, motion_b, name="B")
    assert flame_rig.armature.animation_data.action == take_b.bone_action
    assert flame_rig.key.animation_data.action == take_b.shape_action
    assert all(a.use_fake_user for a in (take_a.bone_action, take_a.shape_action))
    keyframes.assign_take(flame_rig, take_a.bone_action, take_a.shape_action)
    _set_frame(3)
    _check_frame(flame_rig, forward_motion(model, motion_a[2:3])[0], "take switch")
    # Editing the jaw curve afterwards: the pose correctives and joint offsets follow the bone, mesh stays exact.
    edited = motion_a[2:3].copy()
    edited[0, 103:106] = [0.5, 0.05, -0.1]
    quat = axis_angle_to_quaternion(edited[0, 103:106])
    for fcurve in compat.iter_action_fcurves(take_a.bone_action):
        if fcurve.data_path == 'pose.bones["jaw"].rotation_quaternion':
            fcurve.keyframe_points[2].co.y = quat[fcurve.array_index]
            fcurve.update()
    _set_frame(3)
    _check_frame(flame_rig, forward_motion(model, edited)[0], "edited jaw curve")


def test_saved_file_reloads_without_scripts(model, tmp_path: Path) -> None:
    flame_rig = rig.build_rig(model)
    motion = synthetic.random_motion(8, seed=9)
    keyframes.write_take(flame_rig, motion, name="saved")
    path = str(tmp_path / "rig.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
    reloaded = rig.find_rig(bpy.data.objects["FLAME_rig"])
    expected = forward_motion(model, motion)
    for i in (2, 6):
        _set_frame(1 + i)
        _check_frame(reloaded, expected[i], "reloaded .blend")


def _scene_counts() -> tuple[int, ...]:
    data = bpy.data
    return (len(data.objects), len(data.meshes), len(data.armatures), len(data.actions), len(data.shape_keys),
            len(bpy.context.scene.collection.all_objects))


@pytest.mark.parametrize("case", ["missing", "garbled", "evil", "wrong_shape"])
def test_operator_bad_input_leaves_scene_unchanged(case: str, flame_files: dict[str, str]) -> None:
    registration.register()
    try:
        before = _scene_counts()
        with pytest.raises(RuntimeError) as info:
            bpy.ops.flametalk.build_head(filepath=flame_files[case])
        expected = {"missing": "not found", "garbled": "damaged", "evil": "refused", "wrong_shape": "'posedirs'"}
        assert expected[case] in str(info.value)
        assert _scene_counts() == before
        assert not Path(flame_files["sentinel"]).exists()
    finally:
        registration.unregister()


def test_operator_builds_head(flame_files: dict[str, str]) -> None:
    registration.register()
    try:
        assert bpy.ops.flametalk.build_head(filepath=flame_files["pkl"], shape_filepath=flame_files["shape"]) == {
            "FINISHED"}
        assert {o.name for o in bpy.data.objects} == {"FLAME_rig", "FLAME_head", "FLAME_joint_offsets"}
        assert bpy.context.view_layer.objects.active.name == "FLAME_rig"
    finally:
        registration.unregister()


def test_compat_sequencer_strips() -> None:

    editor = bpy.context.scene.sequence_editor_create()
    assert len(compat.sequencer_strips(editor)) == 0
    assert compat.has_slotted_actions() == (bpy.app.version >= (4, 4, 0))

