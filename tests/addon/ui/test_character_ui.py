"""The panel's Character section headless: Fit stores the fit, Retarget This Take keys the FLAME head's take onto
the ICT head (known weights recovered), Generate for This Character keys a generated take, bad input is one
report with the scene unchanged, and the panel draws."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.addon import RecordingLayout, enabled_addon, scene_state  # noqa: E402
from fixtures.common import AUDIO_DIR  # noqa: E402
from fixtures.gltf import ICT_FACE  # noqa: E402
from fixtures.ict_flame import expr_keys, ict_flame, smooth_weights, write_ict_flame  # noqa: E402

from blender_addon.scene import character, compat, retarget, rig  # noqa: E402
from blender_addon.scene import job as generate  # noqa: E402


@pytest.fixture(scope="module")
def addon(parity_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("character_ui")
    with enabled_addon(parity_checkpoint_dir):
        yield {"flame": write_ict_flame(folder / "ict_flame.npz", expr_keys())}


def _scene(addon: dict) -> bpy.types.Object:
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.import_scene.gltf(filepath=str(ICT_FACE))
    obj = bpy.data.objects["ICT_Face"]
    bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = 25, 1.0
    settings = bpy.context.scene.flametalk_character
    settings.target, settings.flame_file, settings.head_target = obj, addon["flame"], "NONE"
    return obj


def _values(obj: bpy.types.Object, take: str, frames: np.ndarray) -> dict[str, np.ndarray]:
    action = retarget.character_take_actions(take)["character_shapes"]
    return {fc.data_path.split('"')[1]: np.array([fc.evaluate(float(f)) for f in frames])
            for fc in compat.iter_action_fcurves(action)}


def test_fit_then_retarget_this_take(addon: dict) -> None:
    obj = _scene(addon)
    assert bpy.ops.flametalk.character_fit() == {"FINISHED"}
    summary = character.fit_summary(obj)
    assert summary["vertices_used"] > 13000 and summary["rms_mm"] < 0.1
    assert bpy.ops.flametalk.character_show_fit() == {"FINISHED"}
    shown = bpy.data.objects["ICT_Face FLAME fit"]
    assert shown.parent == obj and len(shown.data.vertices) == 13294  # the test model's template is the ICT head
    co = np.empty(3 * 13294, np.float32)
    shown.data.vertices.foreach_get("co", co)
    rest = np.empty(3 * 13294, np.float32)
    obj.data.vertices.foreach_get("co", rest)
    assert np.abs(co - rest).max() < 1e-4  # the fit put it on the character (metres)
    keys = expr_keys()
    truth = smooth_weights(40, len(keys), seed=5)
    motion = np.zeros((40, 106), np.float32)
    motion[:, : len(keys)] = truth
    head = rig.build_rig(ict_flame(keys))
    bpy.context.scene.flametalk.head = head.armature
    generate.apply_motion(head, motion, 25.0, audio=None, scene=bpy.context.scene,
                          req=generate.GenerateRequest(rig=None, audio="", checkpoint="", worker_python="",
                                                       take_name="line", scene=bpy.context.scene, start_frame=3))
    assert bpy.ops.flametalk.character_retarget() == {"FINISHED"}
    assert retarget.character_take_names() == ["line_ICT_Face"]
    values = _values(obj, "line_ICT_Face", 3 + np.arange(40))
    keyed = np.stack([values[k] for k in keys], axis=1)
    assert np.abs(keyed - truth).mean() < 0.03
    obj.data.shape_keys.animation_data.action = None
    assert bpy.ops.flametalk.character_use_take(take="line_ICT_Face") == {"FINISHED"}
    assert obj.data.shape_keys.animation_data.action.name == "line_ICT_Face"
    with pytest.raises(RuntimeError, match="no character take named 'nope'"):
        bpy.ops.flametalk.character_use_take(take="nope")


def test_generate_for_this_character(addon: dict) -> None:
    obj = _scene(addon)
    bpy.context.scene.flametalk.audio_file = str(AUDIO_DIR / "eng2.wav")
    assert bpy.ops.flametalk.character_generate() == {"FINISHED"}
    names = retarget.character_take_names()
    assert names == ["eng2_take1_ICT_Face"]
    values = _values(obj, names[0], 1 + np.arange(80))
    assert max(np.ptp(v) for v in values.values()) > 0.05


def test_bad_input_reports_and_leaves_the_scene(addon: dict) -> None:
    _scene(addon)
    settings = bpy.context.scene.flametalk_character
    before = scene_state()
    settings.jaw_bone = "jaw"  # the ICT head has no armature
    with pytest.raises(RuntimeError, match="has no armature"):
        bpy.ops.flametalk.character_retarget()
    settings.jaw_bone = ""
    with pytest.raises(RuntimeError, match="no active take"):
        bpy.ops.flametalk.character_retarget()
    settings.target = None
    with pytest.raises(RuntimeError, match="choose the character mesh"):
        bpy.ops.flametalk.character_fit()
    assert scene_state() == before


def test_character_panel_draws(addon: dict) -> None:
    from blender_addon.ui import panel

    obj = _scene(addon)
    settings = bpy.context.scene.flametalk_character
    seen: list[str] = []
    for keys, head in (("ALL", "OBJECT"), ("LIST", "BONE")):
        settings.shape_keys, settings.head_target = keys, head
        panel.FLAMETALK_PT_character.draw(types.SimpleNamespace(layout=RecordingLayout(seen)), bpy.context)
    settings.target = None
    panel.FLAMETALK_PT_character.draw(types.SimpleNamespace(layout=RecordingLayout(seen)), bpy.context)
    for expected in ("prop target", "prop flame_file", "prop key_list", "search face_group", "prop head_bone",
                     "op flametalk.character_fit", "op flametalk.character_show_fit", "op flametalk.character_retarget",
                     "op flametalk.character_generate"):
        assert expected in seen, expected
    assert obj.name == "ICT_Face"
