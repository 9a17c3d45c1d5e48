"""Character takes are first-class in Takes & Export: listed with the FLAME takes, switched by the list's operator
(shape keys, jaw bone, object), exported as glTF/FBX from the same operators (re-imported: the keyed values and
the jaw bone's rotation come back), found in the NLA, and a wrong take is one report with no file. Headless:
operators and the panel's draw function, no worker (the takes are keyed from known weights)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.scene import keyframes, retarget, takes  # noqa: E402

FRAMES = 12
NAMES = ["jawOpen", "eyeBlinkLeft", "eyeBlinkRight"]


@pytest.fixture(scope="module", autouse=True)
def addon():
    import addon_utils

    addon_utils.enable("blender_addon", default_set=True)
    yield
    addon_utils.disable("blender_addon", default_set=True)


def _character() -> bpy.types.Object:
    """A sphere with three shape keys, parented to an armature with a jaw bone, at 25 fps."""
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    bpy.ops.object.armature_add(location=(0.0, 0.0, 0.0))
    arm = bpy.context.active_object
    arm.name = "Rig"
    arm.data.bones[0].name = "jaw"
    bpy.ops.mesh.primitive_uv_sphere_add(segments=12, ring_count=8, radius=0.1)
    obj = bpy.context.active_object
    obj.name = "Hero"
    obj.parent = arm
    obj.shape_key_add(name="Basis")
    for k, name in enumerate(NAMES):
        block = obj.shape_key_add(name=name)
        for i, v in enumerate(block.data):
            if i % 3 == k:
                v.co.z += 0.01 * (k + 1)
    return obj


def _result(seed: int, jaw: bool) -> dict:
    rng = np.random.default_rng(seed)
    angle = 0.2 * np.sin(np.arange(FRAMES) / 3.0) if jaw else np.zeros(FRAMES)
    return {"weights": rng.uniform(0.05, 0.95, (FRAMES, len(NAMES))).astype(np.float32), "names": NAMES,
            "head_rotation": np.zeros((FRAMES, 3), np.float32),
            "jaw_rotation": np.stack([angle, 0 * angle, 0 * angle], axis=1).astype(np.float32),
            "residual_mm": np.zeros(FRAMES, np.float32), "report": {}}


def _flame_take(name: str) -> None:
    """The two tagged actions a FLAME take is made of (what takes.take_names lists)."""
    for role in ("bones", "shapes"):
        action = bpy.data.actions.new(f"{name} {role}")
        action[keyframes.TAKE_PROP], action[keyframes.ROLE_PROP] = name, role
        action.use_fake_user = True


def _values(obj: bpy.types.Object, frames) -> np.ndarray:
    scene = bpy.context.scene
    out = []
    for f in frames:
        scene.frame_set(int(f))
        out.append([obj.data.shape_keys.key_blocks[n].value for n in NAMES])
    return np.array(out)


class _Layout:
    """Records what a draw function asks for; operator calls return a namespace that records its fields."""

    def __init__(self, log: list):
        self.__dict__["log"] = log

    def __setattr__(self, name: str, value: object) -> None:
        self.__dict__[name] = value

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: _Layout(self.log)

    def operator(self, idname: str, text: str = "", **kwargs) -> types.SimpleNamespace:
        module, name = idname.split(".")
        assert name in dir(getattr(bpy.ops, module)), f"no operator {idname}"
        fields = types.SimpleNamespace()
        self.log.append((idname, text, fields))
        return fields


def _scene_with_takes() -> tuple[bpy.types.Object, dict, dict]:
    obj = _character()
    scene = bpy.context.scene
    bpy.context.scene.flametalk_character.target = obj
    first = _result(1, jaw=True)
    second = _result(2, jaw=False)
    retarget.key_character_take(obj, first, "line1_Hero", scene, start_frame=1, jaw_bone="jaw",
                                head_to_object=False)
    retarget.key_character_take(obj, second, "line2_Hero", scene, start_frame=1, head_to_object=False)
    _flame_take("line1_take1")
    return obj, first, second


def test_one_takes_list_and_switching() -> None:
    from blender_addon.ui import panel

    obj, first, second = _scene_with_takes()
    assert takes.all_takes() == [("line1_Hero", "character"), ("line1_take1", "flame"), ("line2_Hero", "character")]
    assert takes.take_kind("line1_take1") == "flame" and takes.take_kind("line2_Hero") == "character"
    assert takes.take_kind("nope") is None and takes.character_take_object("line1_Hero") == obj
    log: list = []
    panel.FLAMETALK_PT_takes.draw(types.SimpleNamespace(layout=_Layout(log)), bpy.context)
    listed = {f.take: (idname, text) for idname, text, f in log if hasattr(f, "take")}
    assert listed == {"line1_Hero": ("flametalk.character_use_take", "line1_Hero (Hero)"),
                      "line1_take1": ("flametalk.use_take", "line1_take1"),
                      "line2_Hero": ("flametalk.character_use_take", "line2_Hero (Hero)")}
    exports = [(idname, f.character) for idname, _, f in log if hasattr(f, "character")]
    assert exports == [("flametalk.export_fbx", "Hero"), ("flametalk.export_gltf", "Hero")]

    # switching: the list's operator finds the take's own mesh even with the Character section empty
    bpy.context.scene.flametalk_character.target = None
    frames = 1 + np.arange(FRAMES)
    arm = obj.parent
    assert bpy.ops.flametalk.character_use_take(take="line1_Hero") == {"FINISHED"}
    np.testing.assert_allclose(_values(obj, frames), first["weights"], atol=1e-6)
    assert arm.animation_data.action[keyframes.TAKE_PROP] == "line1_Hero"
    bpy.context.scene.frame_set(4)
    angle = math.degrees(arm.pose.bones["jaw"].rotation_quaternion.angle)
    assert angle == pytest.approx(math.degrees(abs(first["jaw_rotation"][3, 0])), abs=1e-3) and angle > 1.0
    assert bpy.ops.flametalk.character_use_take(take="line2_Hero") == {"FINISHED"}
    np.testing.assert_allclose(_values(obj, frames), second["weights"], atol=1e-6)
    assert arm.animation_data.action is None  # take 2 drives no bone: take 1's jaw does not linger
    bpy.context.scene.frame_set(5)
    assert arm.pose.bones["jaw"].rotation_quaternion.angle == 0.0  # ...nor its last pose
    with pytest.raises(RuntimeError, match="no character take named"):
        bpy.ops.flametalk.character_use_take(take="nope")


def test_switching_from_a_take_that_turns_the_object_puts_it_back_at_rest() -> None:
    obj = _character()
    scene = bpy.context.scene
    obj.location, obj.rotation_euler = (0.3, -0.2, 0.1), (0.0, 0.0, 0.4)
    rest = np.array(obj.matrix_basis)
    turning = _result(4, jaw=False)
    turning["head_rotation"][:, 0] = np.linspace(0.0, 0.5, FRAMES)  # nods up to 0.5 rad
    retarget.key_character_take(obj, turning, "nod_Hero", scene, start_frame=1, head_to_object=True)
    retarget.key_character_take(obj, _result(5, jaw=False), "still_Hero", scene, start_frame=1,
                                head_to_object=False)
    assert bpy.ops.flametalk.character_use_take(take="nod_Hero") == {"FINISHED"}
    scene.frame_set(FRAMES)
    assert np.abs(np.array(obj.matrix_basis) - rest).max() > 0.1  # the take turns the object
    assert bpy.ops.flametalk.character_use_take(take="still_Hero") == {"FINISHED"}
    scene.frame_set(2)
    assert obj.animation_data.action is None
    np.testing.assert_allclose(np.array(obj.matrix_basis), rest, atol=1e-6)  # not the nod's last pose


def _reimported(path: Path, kind: str) -> tuple[bpy.types.Object, bpy.types.Object | None]:
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.context.scene.render.fps = 25
    if kind == "gltf":
        bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0)
    mesh = next(o for o in bpy.data.objects if o.type == "MESH")
    arm = next((o for o in bpy.data.objects if o.type == "ARMATURE"), None)
    return mesh, arm


@pytest.mark.parametrize("kind", ["gltf", "fbx"])
def test_export_a_character_take(kind: str, tmp_path: Path) -> None:
    obj, first, _ = _scene_with_takes()
    arm = obj.parent
    bpy.ops.flametalk.character_use_take(take="line2_Hero")  # another take active: the named one is exported
    before = (obj.data.shape_keys.animation_data.action.name, arm.animation_data.action,
              [o.name for o in bpy.context.view_layer.objects if o.select_get()], bpy.context.scene.frame_end)
    path = tmp_path / ("hero.glb" if kind == "gltf" else "hero.fbx")
    operator = bpy.ops.flametalk.export_gltf if kind == "gltf" else bpy.ops.flametalk.export_fbx
    assert operator(filepath=str(path), take="line1_Hero") == {"FINISHED"}
    after = (obj.data.shape_keys.animation_data.action.name, arm.animation_data.action,
             [o.name for o in bpy.context.view_layer.objects if o.select_get()], bpy.context.scene.frame_end)
    assert after == before  # the scene is put back
    mesh, arm2 = _reimported(path, kind)
    assert len(mesh.data.vertices) > 50 and mesh.data.shape_keys.animation_data is not None
    frames = 1 + np.arange(FRAMES)
    np.testing.assert_allclose(_values(mesh, frames), first["weights"], atol=2e-3)  # take 1, not the active 2
    assert arm2 is not None
    bone = arm2.pose.bones[0] if kind == "gltf" else arm2.pose.bones["jaw"]
    bpy.context.scene.frame_set(4)
    bpy.context.view_layer.update()
    assert math.degrees(bone.matrix_basis.to_quaternion().angle) == pytest.approx(
        math.degrees(abs(first["jaw_rotation"][3, 0])), abs=0.05)


def test_export_the_active_take_from_the_nla_and_bad_take(tmp_path: Path) -> None:
    obj = _character()
    scene = bpy.context.scene
    third = _result(3, jaw=False)
    retarget.key_character_take(obj, third, "line3_Hero", scene, start_frame=1, head_to_object=False,
                                push_to_nla=True)
    key = obj.data.shape_keys
    assert key.animation_data.action is None and len(key.animation_data.nla_tracks) == 1
    assert takes.active_character_take(obj) == "line3_Hero"
    path = tmp_path / "nla.glb"
    assert bpy.ops.flametalk.export_gltf(filepath=str(path), character="Hero") == {"FINISHED"}
    assert key.animation_data.action is None and key.animation_data.use_nla  # NLA untouched afterwards
    bad = tmp_path / "bad.glb"
    with pytest.raises(RuntimeError, match="no take named 'nope'"):
        bpy.ops.flametalk.export_gltf(filepath=str(bad), take="nope")
    assert not bad.exists()
    mesh, _ = _reimported(path, "gltf")
    np.testing.assert_allclose(_values(mesh, 1 + np.arange(FRAMES)), third["weights"], atol=2e-3)
