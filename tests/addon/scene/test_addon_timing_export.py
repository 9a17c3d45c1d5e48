"""Keying path without the model (scene.job.apply_motion, as after the worker): timing at 24/25/30/29.97 fps against
the sound strip over 60 s, controls, simplification, style from an action, and FBX/glTF round trips; the keying time
budget of a 60-s line (perf)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.addon import ROOT, curves_by_path, keys, scene_state, set_frame, set_scene_fps, write_wav  # noqa: E402
from fixtures.report import record  # noqa: E402
from fixtures.synthetic_head import make_head_arrays  # noqa: E402
from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon.core.controls import Controls, apply_controls, quaternion_tolerance  # noqa: E402
from blender_addon.core.style_channels import style_frames  # noqa: E402
from blender_addon.flame import axis_angle_to_quaternion  # noqa: E402
from blender_addon.scene import export, rig, takes  # noqa: E402
from blender_addon.scene import job as generate  # noqa: E402

MEASURED = "keying and export"


@pytest.fixture(scope="module")
def head_model():
    return synthetic.model_from_arrays(make_head_arrays())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("timing")
    return {"folder": folder, "wav60": write_wav(folder / "line60.wav", 60.0),
            "wav3": write_wav(folder / "short.wav", 3.0)}


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    yield
    bpy.ops.wm.read_homefile(use_empty=True)


def _request(flame_rig: rig.FlameRig, **kw) -> generate.GenerateRequest:
    return generate.GenerateRequest(rig=flame_rig, audio=kw.pop("audio", ""), checkpoint="", worker_python="",
                                    scene=bpy.context.scene, **kw)


@pytest.mark.parametrize("rate", [24, 25, 30, 29.97])
def test_sound_and_keys_stay_aligned_over_60_s(rate: float, head_model, files) -> None:
    fps = set_scene_fps(rate)
    flame_rig = rig.build_rig(head_model)
    motion = synthetic.random_motion(1500, seed=4)  # 60 s at 25 fps
    start = 7
    req = _request(flame_rig, audio=str(files["wav60"]), start_frame=start)
    t0 = time.perf_counter()
    result = generate.apply_motion(flame_rig, motion, 25.0, audio=str(files["wav60"]), req=req)
    elapsed = time.perf_counter() - t0
    take, strip, scene = result.take, result.sound_strip, bpy.context.scene
    assert take.name == "line60_take1" and strip.frame_start == start and scene.sync_mode == "AUDIO_SYNC"

    curves = curves_by_path(take.bone_action)
    jaw_w = keys(curves[('pose.bones["jaw"].rotation_quaternion', 0)])
    assert len(jaw_w) == 1500
    expected_frames = start + np.arange(1500) * fps / 25.0  # motion frame i plays i / 25 s after the sound starts
    assert np.max(np.abs(jaw_w[:, 0] - expected_frames)) < 2e-3  # float32 keys at frame ~1800
    # Alignment at the end: the motion's last frame ends where Blender ends the sound (strip length rounding).
    motion_end = jaw_w[-1, 0] + fps / 25.0
    sound_end_exact = start + 60.0 * fps
    error = abs(motion_end - strip.frame_final_end)
    assert error < 0.5 and abs(motion_end - sound_end_exact) < 2e-3
    assert scene.frame_start <= start and scene.frame_end >= strip.frame_final_end - 1
    shape_curves = curves_by_path(take.shape_action)
    assert len(shape_curves) == 100
    i = 1234
    np.testing.assert_allclose(shape_curves[('key_blocks["exp_042"].value', 0)].evaluate(expected_frames[i]),
                               motion[i, 42], atol=1e-5)
    record(MEASURED, f"{rate} fps", f"last key {jaw_w[-1, 0]:.3f}, motion end {motion_end:.3f}, sound strip end "
           f"{strip.frame_final_end} (exact {sound_end_exact:.3f}): off by {error:.3f} frame; keyed 1500 frames x "
           f"106 channels in {elapsed:.3f} s")


@pytest.mark.perf
def test_keying_a_60_s_line_fits_the_budget(head_model, files) -> None:
    """Keying 60 s of motion (159,000 keys) + the sound strip: the warm-worker budget."""
    set_scene_fps(25)
    flame_rig = rig.build_rig(head_model)
    motion = synthetic.random_motion(1500, seed=4)
    req = _request(flame_rig, audio=str(files["wav60"]), start_frame=1)
    t0 = time.perf_counter()
    generate.apply_motion(flame_rig, motion, 25.0, audio=str(files["wav60"]), req=req)
    elapsed = time.perf_counter() - t0
    record(MEASURED, "60 s keying budget", f"{elapsed:.3f} s (budget 1 s)")
    assert elapsed < 1.0


def test_controls_and_simplification_on_keys(head_model, files) -> None:
    set_scene_fps(30)
    flame_rig = rig.build_rig(head_model)
    motion = synthetic.random_motion(1500, seed=6)
    controls = Controls(jaw=1.4, expression=0.6, head=0.0, smoothing=1.5, simplify=True,
                        expression_tolerance=0.01, rotation_tolerance_deg=0.2)
    t0 = time.perf_counter()
    result = generate.apply_motion(flame_rig, motion, 25.0, audio=None, req=_request(flame_rig, controls=controls))
    elapsed = time.perf_counter() - t0
    expected = apply_controls(motion, controls)
    np.testing.assert_array_equal(result.motion, expected)
    frames = 1 + np.arange(1500) * 30 / 25
    worst_expr = 0.0
    for (path, _index), fcurve in curves_by_path(result.take.shape_action).items():
        e = int(path.split("exp_")[1][:3])
        worst_expr = max(worst_expr, max(abs(fcurve.evaluate(f) - expected[i, e]) for i, f in enumerate(frames)))
        assert all(k.interpolation == "LINEAR" for k in fcurve.keyframe_points)
    assert worst_expr <= 0.01 + 1e-5
    curves = curves_by_path(result.take.bone_action)
    root_w = curves[('pose.bones["root"].rotation_quaternion', 0)]
    assert len(root_w.keyframe_points) == 2 and root_w.evaluate(500) == pytest.approx(1.0)  # head 0 = still
    quats = [curves[('pose.bones["jaw"].rotation_quaternion', c)] for c in range(4)]
    target = axis_angle_to_quaternion(expected[:, 103:106].astype(np.float64))
    got = np.array([[q.evaluate(f) for q in quats] for f in frames])
    assert np.max(np.abs(got - target)) <= quaternion_tolerance(0.2) + 1e-6
    full = 1500 * (100 + 4 * 2) + 3 * 4  # keys without simplification
    assert result.take.n_keys < 0.5 * full
    record(MEASURED, "simplify", f"{result.take.n_keys} keys instead of {full} ({result.take.n_keys / full:.0%}); "
           f"worst expression error {worst_expr:.4f} (tolerance 0.01); keyed in {elapsed:.2f} s")


def test_style_from_action_reads_back_the_keyed_motion(head_model) -> None:
    fps = set_scene_fps(30)
    flame_rig = rig.build_rig(head_model)
    motion = synthetic.random_motion(80, seed=8, rot_scale=0.5)
    take = generate.apply_motion(flame_rig, motion, 25.0, audio=None, req=_request(flame_rig, start_frame=11)).take
    for first in (0, 20):
        frames = style_frames(11 + first * fps / 25, fps)
        for action in (take.bone_action, take.shape_action):  # either half of a take finds its partner
            back = takes.sample_action_motion(action, frames)
            np.testing.assert_allclose(back, motion[first:first + 50], atol=2e-5)
    other = bpy.data.actions.new("not a face")
    with pytest.raises(ValueError, match="no FLAME curves"):
        takes.sample_action_motion(other, frames)


def test_push_to_nla_and_scene_unchanged_on_failure(head_model, files, monkeypatch: pytest.MonkeyPatch) -> None:
    set_scene_fps(25)
    flame_rig = rig.build_rig(head_model)
    before = scene_state()
    bad = synthetic.random_motion(30, seed=1)
    bad[3, 5] = np.nan
    with pytest.raises(generate.GenerateError):
        generate.apply_motion(flame_rig, bad, 25.0, audio=str(files["wav3"]), req=_request(flame_rig))
    assert scene_state() == before

    def refuse(*_args) -> None:  # fails after the keys and the sound strip exist: all of it must go
        raise RuntimeError("Blender refused")

    with monkeypatch.context() as patch:
        patch.setattr(takes, "push_take_to_nla", refuse)
        with pytest.raises(generate.GenerateError, match="Blender refused"):
            generate.apply_motion(flame_rig, synthetic.random_motion(30), 25.0, audio=str(files["wav3"]),
                                  req=_request(flame_rig, push_to_nla=True))
    assert scene_state() == before
    req = _request(flame_rig, push_to_nla=True, start_frame=5)
    take = generate.apply_motion(flame_rig, synthetic.random_motion(30), 25.0, audio=str(files["wav3"]), req=req).take
    for owner, action in ((flame_rig.armature, take.bone_action), (flame_rig.key, take.shape_action)):
        adt = owner.animation_data
        assert adt.action is None and len(adt.nla_tracks) == 1
        strip = adt.nla_tracks[0].strips[0]
        assert strip.action == action and strip.frame_start == 5
    expected = synthetic.random_motion(30)[10]
    set_frame(15)
    assert flame_rig.key.key_blocks["exp_003"].value == pytest.approx(expected[3], abs=1e-5)


def _imported_head() -> bpy.types.Object:
    return next(o for o in bpy.data.objects if o.type == "MESH" and o.data.shape_keys and len(o.data.vertices) > 100)


def _round_trip(kind: str, head_model, tmp_path: Path, rate: float) -> None:
    import mathutils

    set_scene_fps(rate)
    flame_rig = rig.build_rig(head_model)
    motion = synthetic.random_motion(50, seed=9, rot_scale=0.35)
    take = generate.apply_motion(flame_rig, motion, 25.0, audio=None, req=_request(flame_rig)).take
    frames = [1, 9, 22, 35, int(take.frame_range[1])]
    reference, pose_part = {}, {}
    pose_drivers = [d for d in flame_rig.key.animation_data.drivers if "pose_" in d.data_path]
    for f in frames:
        set_frame(f)
        reference[f] = rig.evaluated_world_vertices(flame_rig.mesh)
        for d in pose_drivers:  # without the correctives: muted drivers, pose keys at 0
            d.mute = True
            flame_rig.key.path_resolve(d.data_path.rsplit(".", 1)[0]).value = 0.0
        bpy.context.view_layer.update()
        pose_part[f] = float(np.abs(rig.evaluated_world_vertices(flame_rig.mesh) - reference[f]).max())
        for d in pose_drivers:
            d.mute = False
    path = str(tmp_path / f"head.{kind}")
    (export.export_gltf if kind == "glb" else export.export_fbx)(flame_rig, path)

    bpy.ops.wm.read_homefile(use_empty=True)
    set_scene_fps(rate)
    if kind == "glb":
        bpy.ops.import_scene.gltf(filepath=path)
    else:
        bpy.ops.import_scene.fbx(filepath=path, anim_offset=0)  # Blender's FBX re-import shifts keys otherwise
    head = _imported_head()
    for block in head.data.shape_keys.key_blocks:  # the glTF importer resets slider ranges to 0..1
        block.slider_min, block.slider_max = -10.0, 10.0
    # Match vertices by position on an open-jaw frame (the lip twins coincide at rest); glTF may reorder them.
    key_frame = frames[int(np.argmax([pose_part[f] for f in frames]))]
    set_frame(key_frame)
    imported = rig.evaluated_world_vertices(head)
    tree = mathutils.kdtree.KDTree(len(reference[key_frame]))
    for i, p in enumerate(reference[key_frame]):
        tree.insert(p, i)
    tree.balance()
    found = [tree.find(p) for p in imported]
    order = np.array([idx for _, idx, _ in found])
    assert len(imported) == len(reference[key_frame]) and len(set(order)) == len(order)  # same vertices
    errors = []
    for f in frames:
        set_frame(f)
        errors.append(float(np.abs(rig.evaluated_world_vertices(head) - reference[f][order]).max()))
    worst = max(errors)
    record(MEASURED, f"{kind} round trip at {rate:g} fps",
           f"max vertex error {worst:.2e} m over frames {frames} (pose correctives alone move vertices up to "
           f"{max(pose_part.values()):.1e} m)")
    assert worst < 1e-4
    assert max(pose_part.values()) > 20 * worst  # the driven correctives really are in the exported animation


def test_gltf_round_trip(head_model, tmp_path: Path) -> None:
    _round_trip("glb", head_model, tmp_path, 25)


def test_fbx_round_trip(head_model, tmp_path: Path) -> None:
    _round_trip("fbx", head_model, tmp_path, 30)


def test_cli_keys_motion_with_sound_at_29_97(head_model, files, tmp_path: Path) -> None:
    flame = synthetic.write_npz(str(tmp_path / "head.npz"), make_head_arrays())
    motion = synthetic.random_motion(75, seed=2)
    np.savez(tmp_path / "m.npz", motion=motion, fps=np.float64(25))
    out = tmp_path / "line.blend"
    run = subprocess.run([sys.executable, "-m", "blender_addon.cli", "animate", "--flame", flame, "--motion",
                          str(tmp_path / "m.npz"), "--audio", str(files["wav3"]), "--scene-fps", "29.97",
                          "--start-frame", "10", "--jaw", "0.5", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    bpy.ops.wm.open_mainfile(filepath=str(out), load_ui=False, use_scripts=False)
    scene = bpy.context.scene
    assert (scene.render.fps, scene.render.fps_base) == (30, pytest.approx(1.001))
    strips = list(bpy.context.scene.sequence_editor.strips_all)
    assert [s.frame_start for s in strips] == [10]
    bones = takes.take_actions("short_take1")[0]
    jaw_x = keys(curves_by_path(bones)[('pose.bones["jaw"].rotation_quaternion', 1)])
    assert jaw_x[0, 0] == 10 and jaw_x[-1, 0] == pytest.approx(10 + 74 * 29.97 / 25, abs=1e-3)
    np.testing.assert_allclose(jaw_x[:, 1], axis_angle_to_quaternion(0.5 * motion[:, 103:106])[:, 1], atol=1e-6)
