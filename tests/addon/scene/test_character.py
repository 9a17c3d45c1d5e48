"""scene/character.py: the ICT head read from Blender equals the file's arrays; relative keys, slider ranges, face
group and jaw bone come through; the fit stored on the mesh survives save and reload and is dropped when the mesh
changes; scene/retarget.py keys a result all-or-nothing."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.gltf import ICT_FACE  # noqa: E402
from fixtures.ict_flame import cached_fit, ict  # noqa: E402

from blender_addon.flame import characterfile  # noqa: E402
from blender_addon.scene import character, retarget  # noqa: E402


def _import_ict() -> bpy.types.Object:
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.import_scene.gltf(filepath=str(ICT_FACE))
    return bpy.data.objects["ICT_Face"]


def test_extract_matches_the_file_and_round_trips(tmp_path) -> None:
    obj = _import_ict()
    key = obj.data.shape_keys
    key.key_blocks["jawOpen"].slider_min, key.key_blocks["jawOpen"].slider_max = -0.5, 1.5
    # a key relative to another key: its delta is against that key, as Blender adds it
    key.key_blocks["mouthClose"].relative_key = key.key_blocks["jawOpen"]
    group = obj.vertex_groups.new(name="face")
    group.add(list(range(5000)), 1.0, "REPLACE")
    arrays = character.write_character_file(obj, str(tmp_path / "c.npz"), face_group="face")
    mesh = ict()
    assert arrays["names"] == mesh.names and arrays["rest"].shape == (13294, 3)
    np.testing.assert_array_equal(arrays["rest"], mesh.vertices)
    close = mesh.names.index("mouthClose")
    expected = mesh.deltas.copy()
    expected[close] = mesh.deltas[close] - mesh.deltas[mesh.names.index("jawOpen")]
    np.testing.assert_allclose(arrays["deltas"], expected, atol=1e-6)
    assert arrays["ranges"][mesh.names.index("jawOpen")].tolist() == [-0.5, 1.5]
    assert arrays["face_weights"][:5000].min() == 1.0 and arrays["face_weights"][5000:].max() == 0.0
    back = characterfile.read_character(tmp_path / "c.npz")
    np.testing.assert_array_equal(back["deltas"], arrays["deltas"])
    np.testing.assert_array_equal(back["triangles"], arrays["triangles"])
    assert back["name"] == "ICT_Face" and back["jaw_pivot"] is None


def test_bad_characters_are_one_line() -> None:
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    with pytest.raises(character.CharacterError, match="no mesh with shape keys"):
        character.find_character()
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    with pytest.raises(character.CharacterError, match="has no shape keys"):
        character.find_character(cube.name)
    empty = bpy.data.objects.new("e", None)
    with pytest.raises(character.CharacterError, match="is not a mesh"):
        character.check_character(empty)
    cube.shape_key_add(name="Basis")
    cube.shape_key_add(name="a")
    with pytest.raises(character.CharacterError, match="no vertex group 'face'"):
        character.extract(cube, face_group="face")
    with pytest.raises(character.CharacterError, match="has no armature"):
        character.extract(cube, jaw_bone="jaw")


def test_fit_survives_save_and_reload(tmp_path) -> None:
    _, fitted = cached_fit(1.0, split=0.0)  # the ICT head's own vertices, in metres
    fields = {k: getattr(fitted, k) for k in characterfile.FIT_FIELDS}
    obj = _import_ict()
    assert character.stored_fit(obj) is None and not character.write_stored_fit(obj, str(tmp_path / "f.npz"))
    character.store_fit(obj, fields)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "fitted.blend"))
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "fitted.blend"), load_ui=False)
    obj = bpy.data.objects["ICT_Face"]
    assert character.write_stored_fit(obj, str(tmp_path / "f.npz"))
    back = characterfile.read_fit(tmp_path / "f.npz")
    for key in characterfile.FIT_FIELDS:
        np.testing.assert_allclose(np.asarray(back[key], float), np.asarray(fields[key], float), rtol=1e-6,
                                   atol=1e-6)
    assert character.fit_summary(obj) == {"rms_mm": pytest.approx(fitted.rms_mm), "max_mm": pytest.approx(
        fitted.max_mm), "vertices_used": fitted.n_used}
    # the mesh changes: the stored fit no longer applies
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.mesh.subdivide()
    bpy.ops.object.mode_set(mode="OBJECT")
    assert character.stored_fit(obj) is None and character.fit_summary(obj) is None
    with pytest.raises(character.CharacterError, match="fit it again"):
        character.store_fit(obj, fields)


def _result(names: list[str], frames: int = 10) -> dict:
    rng = np.random.default_rng(0)
    return {"weights": rng.random((frames, len(names))).astype(np.float32), "names": names,
            "head_rotation": np.zeros((frames, 3), np.float32), "jaw_rotation": np.zeros((frames, 3), np.float32),
            "residual_mm": np.zeros(frames, np.float32), "report": {}}


def test_keying_is_all_or_nothing() -> None:
    obj = _import_ict()
    scene = bpy.context.scene
    scene.render.fps = 30
    result = _result(["jawOpen", "eyeBlink_L"])
    result["weights"][3, 0] = 2.0  # beyond the slider range: clipped
    take = retarget.key_character_take(obj, result, "t1", scene, start_frame=3)
    assert retarget.character_take_names() == ["t1"] and take.object_action is None  # no head motion
    from blender_addon.scene import compat

    curves = {fc.data_path: fc for fc in compat.iter_action_fcurves(take.shape_action)}
    fc = curves['key_blocks["jawOpen"].value']
    for t in (0, 3, 9):
        assert fc.evaluate(3 + t * 30 / 25) == pytest.approx(min(1.0, float(result["weights"][t, 0])), abs=1e-6)
    before = sorted(a.name for a in bpy.data.actions)
    active = obj.data.shape_keys.animation_data.action
    with pytest.raises(character.CharacterError, match="no shape key 'nope'"):
        retarget.key_character_take(obj, _result(["jawOpen", "nope"]), "t2", scene)
    bad = _result(["jawOpen"])
    with pytest.raises(character.CharacterError, match="has no armature"):
        retarget.key_character_take(obj, bad, "t3", scene, jaw_bone="jaw")
    head = _result(["jawOpen"])
    head["head_rotation"][:, 2] = 0.1
    take = retarget.key_character_take(obj, head, "t4", scene, start_frame=1)
    assert take.object_action is not None and obj.rotation_mode == "QUATERNION"
    scene.frame_set(1)
    np.testing.assert_allclose(np.array(obj.rotation_quaternion), [np.cos(0.05), 0, 0, np.sin(0.05)], atol=1e-6)
    assert sorted(a.name for a in bpy.data.actions) == sorted([*before, "t4", "t4 object"])
    assert active.name == "t1"


def test_simplified_keys_stay_within_tolerance() -> None:
    obj = _import_ict()
    scene = bpy.context.scene
    scene.render.fps = 25
    frames = 200
    t = np.arange(frames) / 25.0
    result = _result(["jawOpen", "eyeBlink_L"], frames)
    result["weights"][:, 0] = 0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    result["weights"][:, 1] = 0.2  # constant: two keys
    take = retarget.key_character_take(obj, result, "s", scene, start_frame=1, simplify=(0.01, 0.01))
    from blender_addon.scene import compat

    curves = {fc.data_path: fc for fc in compat.iter_action_fcurves(take.shape_action)}
    jaw, blink = curves['key_blocks["jawOpen"].value'], curves['key_blocks["eyeBlink_L"].value']
    assert len(blink.keyframe_points) == 2 and 2 < len(jaw.keyframe_points) < frames / 3
    values = np.array([jaw.evaluate(1.0 + i) for i in range(frames)])
    assert np.abs(values - result["weights"][:, 0]).max() <= 0.0101


def test_head_turns_about_the_fitted_neck_joint(tmp_path) -> None:
    """The object keyed with a head rotation and a pivot turns the mesh about that pivot: every vertex at
    loc0 + R0 S (c + R_t (v - c)) in world space, the pivot itself still; head_pivot is FLAME's root joint on the
    stored fit."""
    from fixtures.ict_flame import expr_keys, write_ict_flame

    from blender_addon.flame import load_flame, rodrigues

    _, fitted = cached_fit(1.0, split=0.0)
    obj = _import_ict()
    character.store_fit(obj, {k: getattr(fitted, k) for k in characterfile.FIT_FIELDS})
    flame = write_ict_flame(tmp_path / "ict_flame.npz", expr_keys())
    pivot = retarget.head_pivot(obj, flame)
    expected = load_flame(flame, use_torch=False).j_regressor[0] @ np.asarray(fitted.flame_vertices, np.float64)
    np.testing.assert_allclose(pivot, np.ravel(expected), atol=1e-9)
    lo, hi = np.min(fitted.flame_vertices, axis=0), np.max(fitted.flame_vertices, axis=0)
    assert np.all(pivot > lo) and np.all(pivot < hi)  # inside the head, not at the origin
    assert np.linalg.norm(pivot) > 0.01
    # a moved, turned, uniformly scaled object: the turn is about the pivot all the same
    obj.location, obj.rotation_euler, obj.scale = (0.3, -0.2, 1.1), (0.1, -0.2, 0.4), (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    rest = np.array(obj.matrix_world, np.float64)
    scene = bpy.context.scene
    scene.render.fps = 25
    result = _result(["jawOpen"], 6)
    result["head_rotation"][:] = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.2, 0.1, 0.0], [0.1, 0.2, -0.1],
                                           [0.0, 0.3, 0.2], [-0.2, 0.0, 0.1]], np.float32)
    result["head_pivot"] = pivot
    verts = np.array([v.co for v in obj.data.vertices], np.float64)[::500]
    for take in ("turn", "again"):  # a second take keyed while the first one is turning the object: same rest
        scene.frame_set(4)
        retarget.key_character_take(obj, result, take, scene, start_frame=1)
        for t in range(6):
            scene.frame_set(1 + t)
            world = np.array(obj.matrix_world, np.float64)
            turned = pivot + (verts - pivot) @ rodrigues(result["head_rotation"][t].astype(np.float64)).T
            want = turned @ rest[:3, :3].T + rest[:3, 3]
            got = verts @ world[:3, :3].T + world[:3, 3]
            np.testing.assert_allclose(got, want, atol=1e-5)
    still = world[:3, :3] @ pivot + world[:3, 3]
    np.testing.assert_allclose(still, rest[:3, :3] @ pivot + rest[:3, 3], atol=1e-5)
