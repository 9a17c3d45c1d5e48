"""The add-on end to end in bpy 5.0.1 with the torch worker (reduced parity model): registration, Generate, takes,
cancel, one-line errors that leave the scene unchanged, style from an action, the batch CLI, a Workbench preview.
One warm worker serves the whole module (worker_client.get_client keeps it per interpreter)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.addon import (  # noqa: E402
    ROOT,
    RecordingLayout,
    curves_by_path,
    enabled_addon,
    keys,
    modal_generate_operator,
    scene_state,
    set_scene_fps,
)
from fixtures.common import AUDIO_DIR  # noqa: E402
from fixtures.report import record  # noqa: E402
from fixtures.synthetic_head import make_head_arrays  # noqa: E402
from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon.core.controls import Controls, apply_controls  # noqa: E402
from blender_addon.scene import job as generate  # noqa: E402
from blender_addon.scene import rig, takes  # noqa: E402
from blender_addon.scene.keyframes import continuous_quaternions  # noqa: E402
from blender_addon.ui import generate as operators_generate  # noqa: E402
from blender_addon.worker import client as worker_client  # noqa: E402

ENG2 = AUDIO_DIR / "eng2.wav"
PREVIEW_COPY = ROOT / "docs" / "preview.png"
TIMINGS = "add-on timings (s)"
SIZE = 256  # preview pixels


@pytest.fixture(scope="module")
def addon(parity_checkpoint_dir: Path):
    record(TIMINGS, "environment threads", str(os.cpu_count()))
    with enabled_addon(parity_checkpoint_dir) as prefs:
        yield prefs


@pytest.fixture(scope="module")
def raw_eng2(addon, parity_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The worker's motion for eng2.wav (what a take is keyed from, before the controls)."""
    out = tmp_path_factory.mktemp("raw") / "eng2.npz"
    client = worker_client.get_client(sys.executable)
    t0 = time.perf_counter()
    client.wait(client.submit("generate", audio=str(ENG2), out=str(out), checkpoint=str(parity_checkpoint_dir),
                              device="cpu"), timeout=300)
    record(TIMINGS, "cold worker: start + load + eng2", f"{time.perf_counter() - t0:.3f}")
    with np.load(out) as npz:
        return npz["motion"]


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    set_scene_fps(25)
    yield
    bpy.ops.wm.read_homefile(use_empty=True)


def _head(head_model) -> rig.FlameRig:
    flame_rig = rig.build_rig(head_model)
    bpy.context.view_layer.objects.active = flame_rig.armature
    return flame_rig


def _generate(**overrides) -> set[str]:
    t0 = time.perf_counter()
    result = bpy.ops.flametalk.generate(**overrides)
    record(TIMINGS, "Generate eng2 (warm worker, keys included)", f"{time.perf_counter() - t0:.3f}", first_only=True)
    return result


def test_addon_registers_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, '.'); import bpy, addon_utils; "
            "addon_utils.enable('blender_addon', default_set=True); "
            "assert hasattr(bpy.types, 'FLAMETALK_PT_main') and hasattr(bpy.context.scene, 'flametalk'); "
            "assert bpy.context.preferences.addons['blender_addon'].preferences.device == 'AUTO'; "
            "print(' '.join(sorted(n for n in dir(bpy.ops.flametalk))))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    registered = set(run.stdout.split())
    assert {"build_head", "generate", "cancel", "use_take", "export_fbx", "export_gltf"} <= registered, registered


def test_panels_and_preferences_draw(addon, head_model) -> None:
    from blender_addon.ui import panel, preferences

    _head(head_model)
    scene, settings = bpy.context.scene, bpy.context.scene.flametalk
    scene.sequence_editor_create().strips.new_sound("line", str(ENG2), channel=1, frame_start=1)
    generate.apply_motion(rig.find_rig(bpy.context.active_object), synthetic.random_motion(5), 25.0, audio=None,
                          req=generate.GenerateRequest(rig=None, audio="", checkpoint="", worker_python="",
                                                       take_name="t", scene=scene))
    seen: list[str] = []
    for audio, style, running in (("FILE", "NONE", False), ("STRIP", "RELEASE", True), ("FILE", "FILE", False),
                                  ("STRIP", "ACTION", False)):
        settings.audio_source, settings.style_source = audio, style
        bpy.context.window_manager.flametalk.running = running
        for cls in panel.CLASSES:
            log: list[str] = []
            cls.draw(types.SimpleNamespace(layout=RecordingLayout(log)), bpy.context)
            seen += log
    bpy.context.window_manager.flametalk.running = False
    for expected in ("prop head", "prop audio_file", "search audio_strip", "prop style_release", "prop style_action",
                     "op flametalk.generate", "op flametalk.cancel", "op flametalk.use_take",
                     "op flametalk.export_fbx", "prop simplify_expression"):
        assert expected in seen, expected

    class Prefs:  # the real preferences with a recording layout
        layout = RecordingLayout(seen)

        def __getattr__(self, name: str):
            return getattr(addon, name)

    preferences.FLAMETALK_AddonPreferences.draw(Prefs(), bpy.context)
    assert "prop worker_python" in seen and "prop checkpoint_dir" in seen


def test_generate_two_takes(addon, head_model, raw_eng2: np.ndarray) -> None:
    flame_rig = _head(head_model)
    scene, settings = bpy.context.scene, bpy.context.scene.flametalk
    scene.frame_end = 10
    settings.audio_file, settings.start_frame = str(ENG2), 3
    settings.jaw_intensity, settings.expression_intensity, settings.head_intensity = 1.3, 0.8, 0.5
    settings.smoothing = 1.0
    assert _generate() == {"FINISHED"}

    expected = apply_controls(raw_eng2, Controls(jaw=1.3, expression=0.8, head=0.5, smoothing=1.0))
    count = len(expected)
    bones, shapes = takes.take_actions("eng2_take1")
    assert {a.name for a in bpy.data.actions} == {"eng2_take1", "eng2_take1 shapes"}
    assert flame_rig.armature.animation_data.action == bones and flame_rig.key.animation_data.action == shapes
    shape_curves = curves_by_path(shapes)
    assert len(shape_curves) == 100
    for e in (0, 17, 99):
        k = keys(shape_curves[(f'key_blocks["exp_{e:03d}"].value', 0)])
        np.testing.assert_array_equal(k[:, 0], 3 + np.arange(count))
        np.testing.assert_allclose(k[:, 1], expected[:, e], atol=1e-6)
    assert all(kb.slider_min == -10 and kb.slider_max == 10 for kb in flame_rig.key.key_blocks[1:101])
    bone_curves = curves_by_path(bones)
    for bone, channels in (("root", slice(100, 103)), ("jaw", slice(103, 106))):
        quats = continuous_quaternions(expected[:, channels].astype(np.float64))
        for c in range(4):
            k = keys(bone_curves[(f'pose.bones["{bone}"].rotation_quaternion', c)])
            np.testing.assert_allclose(k[:, 1], quats[:, c], atol=1e-6)
    assert len(keys(bone_curves[('pose.bones["neck"].rotation_quaternion', 0)])) == 1  # rest key
    strips = list(scene.sequence_editor.strips_all)
    assert len(strips) == 1 and strips[0].frame_start == 3 and strips[0].sound.filepath == str(ENG2)
    assert scene.sync_mode == "AUDIO_SYNC"
    assert scene.frame_start == 1 and scene.frame_end == max(3 + count - 1, strips[0].frame_final_end - 1)

    first_keys = keys(shape_curves[('key_blocks["exp_017"].value', 0)]).copy()
    settings.jaw_intensity, settings.expression_intensity, settings.head_intensity = 1.0, 1.0, 1.0
    settings.smoothing = 0.0
    settings.push_to_nla = True
    op = modal_generate_operator(generate.GenerateJob(operators_generate.build_request(bpy.context)))  # the UI path
    assert _drive(op) == {"FINISHED"}, op.reports
    assert op.reports[-1][0] == "INFO" and "eng2_take2" in op.reports[-1][1]
    assert operators_generate.active_job() is None and not bpy.context.window_manager.flametalk.running
    bones2, shapes2 = takes.take_actions("eng2_take2")
    assert bones2 is not None and shapes2 is not None and takes.take_names() == ["eng2_take1", "eng2_take2"]
    np.testing.assert_array_equal(keys(curves_by_path(shapes)[('key_blocks["exp_017"].value', 0)]), first_keys)
    np.testing.assert_allclose(keys(curves_by_path(shapes2)[('key_blocks["exp_017"].value', 0)])[:, 1],
                               raw_eng2[:, 17], atol=1e-6)
    assert len(list(scene.sequence_editor.strips_all)) == 1  # the same sound at the same frame is reused
    assert flame_rig.armature.animation_data.nla_tracks[-1].strips[0].action == bones2
    assert bpy.ops.flametalk.use_take(take="eng2_take1") == {"FINISHED"}
    assert flame_rig.armature.animation_data.action == bones


class _Event:
    def __init__(self, kind: str, value: str = "NOTHING"):
        self.type, self.value = kind, value


def _modal(op: types.SimpleNamespace, kind: str = "TIMER", value: str = "NOTHING") -> set[str]:
    return operators_generate.FLAMETALK_OT_generate.modal(op, bpy.context, _Event(kind, value))


def _drive(op: types.SimpleNamespace, until_stage: str | None = None, timeout: float = 120.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        result = _modal(op)
        if result != {"PASS_THROUGH"} or (until_stage and op._job.stage == until_stage and op._job.fraction > 0):
            return result
        assert time.monotonic() < deadline, "the modal job did not progress"
        time.sleep(0.05)


def _wait_for(job: generate.GenerateJob, stage: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while job.stage != stage:
        assert not job.poll(), "finished before it could be interrupted"
        assert time.monotonic() < deadline, f"no '{stage}' progress within {timeout} s"
        time.sleep(0.05)


def test_cancel_leaves_the_scene_as_before(addon, head_model, long_audio: Path, raw_eng2) -> None:
    """The modal path (timer polls, progress, Esc), the panel's Cancel button, then the scene as before."""
    _head(head_model)
    bpy.context.scene.flametalk.audio_file = str(long_audio)
    before = scene_state()
    op = modal_generate_operator(generate.GenerateJob(operators_generate.build_request(bpy.context)))
    try:
        assert not bpy.ops.flametalk.generate.poll() and bpy.ops.flametalk.cancel.poll()  # one job at a time
        assert _drive(op, until_stage="generate") == {"PASS_THROUGH"}
        state = bpy.context.window_manager.flametalk
        assert state.status == "Generate" and 0 < state.progress < 1
        assert _modal(op, "MOUSEMOVE") == {"PASS_THROUGH"}
        assert _modal(op, "ESC", "PRESS") == {"RUNNING_MODAL"} and op._job.cancel_requested
        assert bpy.ops.flametalk.cancel() == {"FINISHED"}  # the button does the same
        assert _drive(op) == {"CANCELLED"}
    finally:
        if operators_generate.active_job() is not None:
            operators_generate.cancel_on_load()
    assert op.reports == [("INFO", "FlameTalk: cancelled, nothing was changed")]
    assert scene_state() == before and operators_generate.active_job() is None
    assert worker_client.get_client(sys.executable).alive  # still warm for the next take


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))


@pytest.mark.parametrize("case", ["no_head", "unreadable_audio", "no_torch", "no_flametalk", "checkpoint_missing"])
def test_errors_are_one_line_and_change_nothing(case: str, addon, head_model, bare_python: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    flame_rig = _head(head_model)
    settings = bpy.context.scene.flametalk
    settings.audio_file = str(ENG2)
    overrides: dict[str, str] = {}
    expected = {"no_head": "no FLAME head", "unreadable_audio": "not readable",
                "no_torch": "torch is not installed", "no_flametalk": "No module named 'flametalk'",
                "checkpoint_missing": "checkpoint not found"}[case]
    if case == "no_head":
        bpy.context.view_layer.objects.active = None
        flame_rig.armature.select_set(False)
    elif case == "unreadable_audio":
        garbled = tmp_path / "speech.wav"
        garbled.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 50)
        settings.audio_file = str(garbled)
    elif case == "no_torch":
        monkeypatch.setenv("PYTHONPATH", str(ROOT / "inference"))  # flametalk importable, torch not
        overrides["worker_python"] = bare_python
    elif case == "no_flametalk":
        monkeypatch.delenv("PYTHONPATH", raising=False)
        overrides["worker_python"] = bare_python
    elif case == "checkpoint_missing":
        overrides["checkpoint"] = str(tmp_path / "no_checkpoint")
    before = scene_state()
    with pytest.raises(RuntimeError) as info:
        bpy.ops.flametalk.generate(**overrides)
    message = str(info.value).strip()
    assert len(message.splitlines()) == 1 and expected in message, message
    assert scene_state() == before


def test_style_from_action_and_sound_strip_audio(addon, head_model, raw_eng2: np.ndarray) -> None:
    flame_rig = _head(head_model)
    scene, settings = bpy.context.scene, bpy.context.scene.flametalk
    motion = synthetic.random_motion(70, seed=11, rot_scale=0.3)
    req = generate.GenerateRequest(rig=flame_rig, audio="", checkpoint="", worker_python="", take_name="acted",
                                   scene=scene, start_frame=1)
    acted = generate.apply_motion(flame_rig, motion, 25.0, audio=None, req=req).take
    # Audio from a packed sound strip at frame 40.
    strip = scene.sequence_editor_create().strips.new_sound("line", str(ENG2), channel=2, frame_start=40)
    strip.sound.pack()
    settings.audio_source, settings.audio_strip = "STRIP", strip.name
    settings.style_source, settings.style_action, settings.style_frame = "ACTION", acted.shape_action, 5
    result = generate.run_blocking(operators_generate.build_request(bpy.context), timeout=300)
    assert result.take.name == "eng2_take1" and result.take.frame_range[0] == 40
    assert result.provenance["style"] == "style_from_action"
    assert result.sound_strip is None and len(list(scene.sequence_editor.strips_all)) == 1
    assert result.motion.shape == raw_eng2.shape and not np.allclose(result.motion, raw_eng2, atol=1e-3)


def test_style_release_clip_and_file(addon, head_model, parity_checkpoint_dir: Path, tmp_path: Path,
                                     raw_eng2: np.ndarray) -> None:
    import torch

    clip = torch.from_numpy(synthetic.random_motion(60, seed=12, rot_scale=0.2))
    (parity_checkpoint_dir / "style_motion").mkdir(exist_ok=True)
    torch.save(clip[:50].clone(), parity_checkpoint_dir / "style_motion" / "calm_test.pt")  # the release's layout
    np.save(tmp_path / "clip.npy", clip.numpy())
    _head(head_model)
    settings = bpy.context.scene.flametalk
    settings.audio_file = str(ENG2)
    settings.style_source, settings.style_release = "RELEASE", "nope"
    with pytest.raises(generate.GenerateError, match=r"style clip 'nope' not found.*calm_test"):
        generate.GenerateJob(operators_generate.build_request(bpy.context))
    settings.style_release = "calm_test"
    released = generate.run_blocking(operators_generate.build_request(bpy.context), timeout=300)
    assert released.provenance["style"] == "calm_test"
    settings.style_source, settings.style_file = "FILE", str(tmp_path / "clip.npy")
    from_file = generate.run_blocking(operators_generate.build_request(bpy.context), timeout=300)
    assert from_file.provenance["style"] == "clip"
    np.testing.assert_array_equal(from_file.motion, released.motion)  # the same 50 frames either way
    assert not np.allclose(released.motion, raw_eng2, atol=1e-3)


def test_batch_cli_generates_from_audio(addon, parity_checkpoint_dir: Path, tmp_path: Path) -> None:
    flame = synthetic.write_npz(str(tmp_path / "head.npz"), make_head_arrays())
    out, glb = tmp_path / "line.blend", tmp_path / "line.glb"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "blender_addon.cli", "animate", "--flame", flame, "--audio", str(ENG2),
                          "--checkpoint", str(parity_checkpoint_dir), "--device", "cpu", "--scene-fps", "30",
                          "--start-frame", "10", "--simplify", "0.02", "--out", str(out), "--glb", str(glb)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    record(TIMINGS, "batch CLI (cold worker, eng2, .blend + .glb)", f"{time.perf_counter() - t0:.3f}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "take eng2_take1" in run.stdout and glb.stat().st_size > 50_000
    bpy.ops.wm.open_mainfile(filepath=str(out), load_ui=False, use_scripts=False)
    scene = bpy.context.scene
    assert scene.render.fps == 30 and scene.frame_start == 10
    assert [s.frame_start for s in scene.sequence_editor.strips_all] == [10]
    bones, shapes = takes.take_actions("eng2_take1")
    assert bones is not None and len(curves_by_path(shapes)) == 100
    bad = subprocess.run([sys.executable, "-m", "blender_addon.cli", "animate", "--flame", flame, "--audio",
                          str(ENG2), "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.blend")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "checkpoint not found" in lines[0]


def _camera_and_light(scene: bpy.types.Scene) -> bpy.types.Object:
    from mathutils import Vector

    camera = bpy.data.objects.new("Preview camera", bpy.data.cameras.new("Preview camera"))
    scene.collection.objects.link(camera)
    camera.location = (0.15, -0.52, 0.04)  # FLAME's face looks along +Z = Blender -Y: the camera is in front
    camera.rotation_euler = (Vector((0.0, 0.0, 0.008)) - camera.location).to_track_quat("-Z", "Y").to_euler()
    camera.data.lens = 60
    scene.camera = camera
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x = scene.render.resolution_y = SIZE
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "MATERIAL"
    scene.display.shading.show_cavity = True
    return camera


def _materials(flame_rig: rig.FlameRig, vertex_part: np.ndarray) -> None:
    mesh = flame_rig.mesh.data
    for name, color in (("skin", (0.8, 0.58, 0.48, 1)), ("eyes", (0.92, 0.92, 0.95, 1)),
                        ("mouth", (0.25, 0.05, 0.06, 1))):
        material = bpy.data.materials.new(name)
        material.diffuse_color = color
        mesh.materials.append(material)
    first = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_start", first)
    corner = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", corner)
    mesh.polygons.foreach_set("material_index", vertex_part[corner[first]].astype(np.int32))


def _pixels(path: Path) -> np.ndarray:
    image = bpy.data.images.load(str(path))
    size = image.size[:]
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(size[1], size[0], 4)
    bpy.data.images.remove(image)
    return pixels[::-1]  # top row first


def test_preview_render_opens_the_mouth_on_the_loudest_frame(addon, head_model, tmp_path: Path) -> None:
    from bpy_extras.object_utils import world_to_camera_view

    flame_rig = _head(head_model)
    arrays = make_head_arrays()
    _materials(flame_rig, arrays["vertex_part"])
    settings = bpy.context.scene.flametalk
    settings.audio_file = str(ENG2)
    settings.head_intensity = 0.0  # the reduced test model turns the head ~60 degrees: keep it facing the camera
    settings.jaw_intensity = 0.5  # and opens the jaw 0.6-0.9 rad: halve it
    assert bpy.ops.flametalk.generate() == {"FINISHED"}
    bones, _ = takes.take_actions("eng2_take1")
    jaw = keys(curves_by_path(bones)[('pose.bones["jaw"].rotation_quaternion', 1)])  # x: opening
    loud, quiet = int(jaw[np.argmax(jaw[:, 1]), 0]), int(jaw[np.argmin(jaw[:, 1]), 0])
    scene = bpy.context.scene
    camera = _camera_and_light(scene)
    frames = sorted({1, quiet, (quiet + loud) // 2, loud})
    paths = {}
    for frame in frames:
        scene.frame_set(frame)
        scene.render.filepath = str(tmp_path / f"preview_{frame:03d}.png")
        t0 = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        record(TIMINGS, f"Workbench render {SIZE}x{SIZE}", f"{time.perf_counter() - t0:.3f}", first_only=True)
        paths[frame] = Path(scene.render.filepath)
    # The mouth region on screen: the lip vertices (around the mouth line) projected through the camera.
    scene.frame_set(loud)
    verts = rig.evaluated_world_vertices(flame_rig.mesh)
    from mathutils import Vector

    template = arrays["v_template"]
    lips = np.nonzero((arrays["vertex_part"] == 0) & (np.abs(template[:, 1] + 0.05) < 0.012) & (template[:, 2] > 0.06)
                      & (np.abs(template[:, 0]) < 0.025))[0]
    screen = np.array([world_to_camera_view(scene, camera, Vector(verts[i]))[:2] for i in lips])
    x0, x1 = (screen[:, 0].min() * SIZE, screen[:, 0].max() * SIZE)
    y0, y1 = ((1 - screen[:, 1].max()) * SIZE, (1 - screen[:, 1].min()) * SIZE)
    box = (slice(int(y0), int(np.ceil(y1)) + 1), slice(int(x0), int(np.ceil(x1)) + 1))
    a, b = _pixels(paths[quiet])[..., :3], _pixels(paths[loud])[..., :3]
    background = a[0, 0]
    assert np.mean(np.any(np.abs(b - background) > 0.05, axis=-1)) > 0.1  # the head fills part of the frame
    mouth_change = float(np.mean(np.abs(a[box] - b[box])))
    forehead = (slice(SIZE // 8, SIZE // 4), slice(SIZE * 3 // 8, SIZE * 5 // 8))
    assert mouth_change > 0.03 and mouth_change > 3 * float(np.mean(np.abs(a[forehead] - b[forehead])))
    montage = np.concatenate([_pixels(paths[f]) for f in frames], axis=1)[::-1]
    image = bpy.data.images.new("preview", montage.shape[1], montage.shape[0], alpha=True)
    image.pixels[:] = montage.ravel()
    image.filepath_raw, image.file_format = str(tmp_path / "montage.png"), "PNG"
    image.save()
    if os.environ.get("FLAMETALK_UPDATE_DOCS"):  # refresh the README picture on purpose only; CI leaves the tree clean
        PREVIEW_COPY.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "montage.png", PREVIEW_COPY)
    record("preview render", "mouth", f"frames {frames}, quiet {quiet}, loud {loud}, jaw quaternion x "
           f"{jaw[:, 1].min():.3f}..{jaw[:, 1].max():.3f}, mouth box {[int(x0), int(y0), int(x1), int(y1)]}, mean "
           f"change {mouth_change:.3f}")


def test_worker_killed_mid_run(addon, head_model, long_audio: Path, raw_eng2) -> None:
    _head(head_model)
    bpy.context.scene.flametalk.audio_file = str(long_audio)
    before = scene_state()
    job = generate.GenerateJob(operators_generate.build_request(bpy.context))
    try:
        job.start()
        _wait_for(job, "generate")
        job.client.proc.kill()
        with pytest.raises(generate.GenerateError) as info:
            job.wait(timeout=60)
    finally:
        job.close()
    assert info.value.kind == "crash" and "stopped unexpectedly" in str(info.value)
    assert "\n" not in str(info.value)
    assert scene_state() == before
