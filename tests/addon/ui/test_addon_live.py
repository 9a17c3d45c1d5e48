"""Live and Record in bpy 5.0.1 with the torch worker (reduced parity model): a WAV file played in real time stands
in for the microphone (the worker's path after the capture); the timer function (called here by hand: headless
Blender runs no timers) puts each frame on the head's controls with its latency; Stop puts the head back; Record
keeps what was shown as a take with the captured audio as its sound strip, in sync."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.addon import curves_by_path, keys, scene_state, set_scene_fps  # noqa: E402
from fixtures.report import record  # noqa: E402
from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon.core.controls import Controls, apply_controls  # noqa: E402
from blender_addon.flame import axis_angle_to_quaternion  # noqa: E402
from blender_addon.scene import job as generate  # noqa: E402
from blender_addon.scene import rig, takes  # noqa: E402
from blender_addon.scene.keyframes import continuous_quaternions  # noqa: E402
from blender_addon.ui import live as ui_live  # noqa: E402
from blender_addon.worker import client as worker_client  # noqa: E402

SECTION = "Live in Blender (reduced model, WAV in real time)"


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    set_scene_fps(25)
    yield
    ui_live.stop_on_load()
    bpy.ops.wm.read_homefile(use_empty=True)


def _head(head_model) -> rig.FlameRig:
    flame_rig = rig.build_rig(head_model)
    bpy.context.view_layer.objects.active = flame_rig.armature
    return flame_rig


def _pose(flame_rig: rig.FlameRig) -> tuple:
    return (tuple(round(kb.value, 7) for kb in flame_rig.key.key_blocks[1:101]),
            tuple(flame_rig.armature.pose.bones["root"].rotation_quaternion),
            tuple(flame_rig.armature.pose.bones["jaw"].rotation_quaternion))


def _tick_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "Live did not get there"
        if ui_live.live_tick() is None:
            return
        time.sleep(ui_live.POLL_S)


def _start(head_model, speech: Path) -> tuple[rig.FlameRig, dict, tuple]:
    flame_rig = _head(head_model)
    scene = bpy.context.scene
    # an earlier take on the head: Live sets it aside and Stop puts it back
    generate.apply_motion(flame_rig, synthetic.random_motion(30, seed=3), 25.0, audio=None,
                          req=generate.GenerateRequest(rig=None, audio="", checkpoint="", worker_python="",
                                                       take_name="earlier", scene=scene))
    scene.frame_set(7)
    settings = scene.flametalk
    settings.live_source, settings.live_file, settings.start_frame = "FILE", str(speech), 11
    settings.jaw_intensity, settings.head_intensity = 1.5, 0.5
    return flame_rig, scene_state(), _pose(flame_rig)


def test_live_drives_the_head_and_record_keeps_the_take_with_its_sound(addon, head_model, speech, tmp_path):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))  # the recorded WAV goes beside it
    flame_rig, _, _ = _start(head_model, speech)
    t0 = time.perf_counter()
    assert bpy.ops.flametalk.live() == {"FINISHED"}
    session = ui_live.active_session()
    assert session is not None and bpy.context.window_manager.flametalk.live_running
    assert flame_rig.armature.animation_data.action is None  # the earlier take is set aside while Live runs
    assert not bpy.ops.flametalk.live.poll() and not bpy.ops.flametalk.generate.poll()

    _tick_until(lambda: session.frames > 0)
    assert session.capturing is not None
    first_frames = session.batches[0][4] - session.capturing
    controls = Controls(jaw=1.5, head=0.5)
    shown_checked = 0
    while session.shown < 30:  # frames on the head, one after the other, while the next window computes
        ui_live.live_tick()
        if session.shown >= 0:
            frame = session.motion_frame(session.shown)
            values = np.array([kb.value for kb in flame_rig.key.key_blocks[1:101]], dtype=np.float32)
            np.testing.assert_array_equal(values, frame[:100])
            quats = axis_angle_to_quaternion(np.asarray([frame[100:103], frame[103:106]], dtype=np.float64))
            np.testing.assert_allclose(flame_rig.armature.pose.bones["root"].rotation_quaternion, quats[0], atol=1e-7)
            np.testing.assert_allclose(flame_rig.armature.pose.bones["jaw"].rotation_quaternion, quats[1], atol=1e-7)
            shown_checked += 1
        time.sleep(0.05)
        assert time.perf_counter() - t0 < 120
    state = bpy.context.window_manager.flametalk
    assert shown_checked > 10  # it plays the frames one by one, not only the last of each batch
    assert state.live_frames == session.frames and state.live_latency > 0
    record(SECTION, "capture start -> first frames on the head", f"{first_frames:.2f} s (the 4-s window + its compute)")
    record(SECTION, "latency of the frame shown (last tick)", f"{state.live_latency:.2f} s")

    # playback holds the last frame when the next batch is late, then goes on from there
    later = time.perf_counter() + 60.0
    session.poll(now=later)
    assert session.shown == session.frames - 1

    assert bpy.ops.flametalk.live_stop(record=True) == {"FINISHED"}
    _tick_until(lambda: ui_live.active_session() is None)
    assert not state.live_running and state.live_status.startswith("Recorded live_take1"), state.live_status
    assert session.result is not None
    samples, frames = session.result["samples"], session.result["frames"]
    # the release's float frame count (for some lengths one more than ceil(samples / 640))
    assert samples >= 4 * 16_000 and frames == math.ceil(samples / 16_000 * 25) == session.frames

    bones, shapes = takes.take_actions("live_take1")
    assert bones is not None and shapes is not None
    assert flame_rig.armature.animation_data.action == bones and flame_rig.key.animation_data.action == shapes
    # what was shown is the one-shot motion of the captured audio, with the intensities
    from flametalk.decode.pipeline import generate_motion
    from flametalk.decode.postprocess import postprocess_motion
    from flametalk.io.audio import load_audio
    from flametalk.io.checkpoint import load_checkpoint

    one_shot = postprocess_motion(generate_motion(load_checkpoint(addon.checkpoint_dir), load_audio(speech)[:samples]))
    expected = apply_controls(one_shot, controls)
    np.testing.assert_array_equal(session.motion, expected)
    for e in (0, 55):
        k = keys(curves_by_path(shapes)[(f'key_blocks["exp_{e:03d}"].value', 0)])
        np.testing.assert_array_equal(k[:, 0], 11 + np.arange(frames))
        np.testing.assert_array_equal(k[:, 1], expected[:, e])
    quats = continuous_quaternions(expected[:, 103:106].astype(np.float64))
    k = keys(curves_by_path(bones)[('pose.bones["jaw"].rotation_quaternion', 1)])
    np.testing.assert_allclose(k[:, 1], quats[:, 1], atol=1e-7)

    # the captured audio beside the .blend, as the take's sound strip at the take's first frame, as long as the take
    wav = tmp_path / "shot_flametalk" / "live_take1.wav"
    with wave.open(str(wav), "rb") as handle:
        assert handle.getframerate() == 16_000 and handle.getnframes() == samples
    strips = [s for s in bpy.context.scene.sequence_editor.strips_all if getattr(s, "sound", None) is not None]
    assert len(strips) == 1 and strips[0].frame_start == 11
    assert Path(bpy.path.abspath(strips[0].sound.filepath)).resolve() == wav.resolve()
    # the sound lasts samples / 640 frames (Blender rounds the strip to whole frames); the take has one key per
    # started 1/25 s, as every take (T = ceil(seconds x 25))
    assert abs(strips[0].frame_final_duration - samples / 640) <= 0.5
    assert bpy.context.scene.sync_mode == "AUDIO_SYNC"


def test_stop_puts_the_head_back_and_keeps_nothing(addon, head_model, speech):
    flame_rig, before, pose = _start(head_model, speech)
    assert bpy.ops.flametalk.live() == {"FINISHED"}
    session = ui_live.active_session()
    assert session is not None
    _tick_until(lambda: session.shown >= 0)
    assert _pose(flame_rig) != pose  # the head moved
    assert bpy.ops.flametalk.live_stop() == {"FINISHED"}
    _tick_until(lambda: ui_live.active_session() is None)
    assert ui_live.active_session() is None
    assert bpy.context.window_manager.flametalk.live_status.startswith("Live ended")
    assert scene_state() == before and _pose(flame_rig) == pose
    assert takes.take_names() == ["earlier"]
    assert worker_client.get_client(sys.executable).alive


def test_live_without_a_head_is_one_line(addon, speech):
    bpy.context.scene.flametalk.live_source, bpy.context.scene.flametalk.live_file = "FILE", str(speech)
    with pytest.raises(RuntimeError, match="no FLAME head"):
        bpy.ops.flametalk.live()
    assert ui_live.active_session() is None


def test_a_microphone_without_portaudio_is_one_line_and_changes_nothing(addon, head_model, speech):
    probe = subprocess.run([sys.executable, "-c", "import sounddevice"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        pytest.skip("sounddevice and PortAudio are installed here: Live would open a real input")
    flame_rig, before, pose = _start(head_model, speech)
    bpy.context.scene.flametalk.live_source = "MIC"
    assert bpy.ops.flametalk.live() == {"FINISHED"}  # the worker starts in the background
    _tick_until(lambda: ui_live.active_session() is None)
    status = bpy.context.window_manager.flametalk.live_status
    assert status.startswith("FlameTalk: live audio input needs sounddevice and PortAudio"), status
    assert "\n" not in status and "--wav" in status
    assert scene_state() == before and _pose(flame_rig) == pose
    assert not bpy.context.window_manager.flametalk.live_running
