"""Progressive takes in bpy 5.0.1 with the torch worker (reduced parity model): during Generate each finished 4-s
window is keyed into the take before the next window is computed, the finished take is key for key the one the
non-progressive path writes, and Cancel keeps nothing or (Keep finished windows on cancel) a shorter take."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.addon import curves_by_path, keys, modal_generate_operator, scene_state, set_scene_fps, write_wav  # noqa: E402
from fixtures.report import record  # noqa: E402

from blender_addon.scene import compat, rig, takes  # noqa: E402
from blender_addon.scene import job as generate  # noqa: E402
from blender_addon.ui import generate as operators_generate  # noqa: E402
from blender_addon.worker import client as worker_client  # noqa: E402

SECTION = "progressive takes in Blender (reduced model, warm worker)"


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    set_scene_fps(25)
    yield
    if operators_generate.active_job() is not None:
        operators_generate.cancel_on_load()
    bpy.ops.wm.read_homefile(use_empty=True)


def _head(head_model) -> rig.FlameRig:
    flame_rig = rig.build_rig(head_model)
    bpy.context.view_layer.objects.active = flame_rig.armature
    return flame_rig


class _Event:
    def __init__(self, kind: str, value: str = "NOTHING"):
        self.type, self.value = kind, value


def _drive(op: types.SimpleNamespace, until=None, timeout: float = 300.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        result = operators_generate.FLAMETALK_OT_generate.modal(op, bpy.context, _Event("TIMER"))
        if result != {"PASS_THROUGH"} or (until is not None and until(op._job)):
            return result
        assert time.monotonic() < deadline, "the modal job did not progress"
        time.sleep(0.02)


def _all_keys(action: bpy.types.Action) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """Every F-curve's keys, bit for bit: co, both handles, interpolation."""
    out = {}
    for fcurve in compat.iter_action_fcurves(action):
        points, n = fcurve.keyframe_points, len(fcurve.keyframe_points)
        entry = {}
        for attr, width, dtype in (("co", 2, np.float32), ("handle_left", 2, np.float32),
                                   ("handle_right", 2, np.float32), ("interpolation", 1, np.int32)):
            buf = np.empty(n * width, dtype=dtype)
            points.foreach_get(attr, buf)
            entry[attr] = buf
        out[(fcurve.data_path, fcurve.array_index)] = entry
    return out


def _assert_same_keys(a: bpy.types.Action, b: bpy.types.Action) -> None:
    ka, kb = _all_keys(a), _all_keys(b)
    assert ka.keys() == kb.keys() and len(ka) > 0
    for path, entry in ka.items():
        for attr, values in entry.items():
            assert values.tobytes() == kb[path][attr].tobytes(), (path, attr)


def test_each_window_is_keyed_before_the_next_and_the_take_is_the_non_progressive_one(addon, head_model, speech,
                                                                                    parity_checkpoint_dir, tmp_path):
    flame_rig = _head(head_model)
    settings = bpy.context.scene.flametalk
    settings.audio_file, settings.start_frame = str(speech), 5
    settings.jaw_intensity, settings.smoothing = 1.2, 0.5  # controls apply to the preview keys as to the take
    # a warm worker with the model loaded, but not this line's audio conditions (a second take of a line skips the
    # audio encoder: the first-window time below is a first take's)
    client = worker_client.get_client(sys.executable)
    client.wait(client.submit("generate", audio=str(write_wav(tmp_path / "warm.wav", 1.0)), out=str(tmp_path / "w.npz"),
                              checkpoint=str(parity_checkpoint_dir), device="cpu"), timeout=300)

    job = generate.GenerateJob(operators_generate.build_request(bpy.context))
    assert job.req.progressive and not job.req.keep_partial
    seen: list[dict] = []

    def keyed(j: generate.GenerateJob) -> None:  # right after each window's keys were written
        take = j.preview_take
        assert take is not None and take.name == "speech_take1"
        assert flame_rig.key.animation_data.action == take.shape_action  # active: scrubbable now
        curve = curves_by_path(take.shape_action)[('key_blocks["exp_017"].value', 0)]
        assert j.submitted is not None
        seen.append({"at": time.perf_counter() - j.submitted, "frames": j.frames_received,
                     "window": j.frame_events[-1]["window"], "keys": keys(curve).copy(),
                     "scene_end": bpy.context.scene.frame_end,
                     "actions": sorted(a.name for a in bpy.data.actions)})

    job.on_keyed = keyed
    op = modal_generate_operator(job)
    assert _drive(op) == {"FINISHED"}, op.reports
    assert job.progressive, "the worker's hello lists 'progressive'"
    events = job.frame_events
    assert [(e["start"], e["stop"]) for e in events] == [(0, 96), (96, 196), (196, 226), (226, 230)]
    # one keying per window: window k's keys were in the action before window k + 1 was done (the worker's t is
    # counted from when it started the job, after we sent it: so "at" < t(k + 1) means before, on one clock)
    # (window 2 and the smoother's last 4 frames come at once: they may be keyed together, or not at all when the
    # result is in the same poll)
    assert [s["window"] for s in seen[:2]] == [0, 1] and [s["frames"] for s in seen[:2]] == [96, 196]
    assert [s["frames"] for s in seen[2:]] in ([], [226], [230], [226, 230])
    # (the last event is not a window: the smoother's 4 held-back frames, sent with the result at once)
    assert events[-1]["window"] == events[-2]["window"] == 2
    for k in (0, 1):
        assert seen[k]["at"] < events[k + 1]["t"], (k, seen[k]["at"], events[k + 1]["t"])
    for s in seen:
        np.testing.assert_array_equal(s["keys"][:, 0], 5 + np.arange(s["frames"]))
        assert s["scene_end"] >= 5 + s["frames"] - 1  # the timeline covers the keys so far
        assert s["actions"] == ["speech_take1", "speech_take1 shapes"]
    first = job.first_keys_seconds
    assert op.reports[-1][0] == "INFO" and "first window keyed after" in op.reports[-1][1]
    state = bpy.context.window_manager.flametalk
    assert first is not None and state.first_keys == pytest.approx(first)

    # the reference: today's path (the whole take at the end), the same line again
    req = operators_generate.build_request(bpy.context)
    req.progressive = False
    reference = generate.run_blocking(req, timeout=300)
    assert reference.first_keys_seconds is None and reference.take.name == "speech_take2"
    assert reference.take.frame_range == (5.0, 234.0)

    # the progressive take: key for key the non-progressive take, and the preview keys were the final values
    bones2, shapes2 = takes.take_actions("speech_take1")
    bones1, shapes1 = takes.take_actions("speech_take2")
    assert bones2 is not None and shapes2 is not None and bones1 is not None and shapes1 is not None
    _assert_same_keys(bones1, bones2)
    _assert_same_keys(shapes1, shapes2)
    final = keys(curves_by_path(shapes2)[('key_blocks["exp_017"].value', 0)])
    for s in seen[:2]:  # smoothing=0.5 changes a window's last frames once the next arrives: compare those before
        inner = s["frames"] - 4
        np.testing.assert_allclose(s["keys"][:inner, 1], final[:inner, 1], atol=1e-4)
    assert takes.take_names() == ["speech_take1", "speech_take2"]
    assert len(list(bpy.context.scene.sequence_editor.strips_all)) == 1

    # one window's compute: the worker's mean time per window after the first (encoder + decoder; on its clock)
    window_s = (events[2]["t"] - events[0]["t"]) / 2
    handover = seen[0]["at"] - events[0]["t"]  # the add-on's part: pipe, poll and keying of window 0
    record(SECTION, "Generate -> first window keyed", f"{first:.3f} s")
    record(SECTION, "one window's compute (mean of windows 1-2)", f"{window_s:.3f} s")
    record(SECTION, "first keys / window compute", f"{first / window_s:.2f}x")
    record(SECTION, "worker's frames -> keys in the action (window 0)", f"{handover:.3f} s")
    record(SECTION, "whole take (progressive, keys included)", f"{seen[-1]['at']:.3f} s after submit")
    # the 2x goal itself is not asserted: on this shared 2-core host one window of the reduced model takes 0.1 to 2 s
    # from one run to the next; what the add-on adds to the worker's first window is asserted, generously
    assert 0 <= handover < 1.0, handover


def test_cancel_keeps_nothing_by_default(addon, head_model, long_audio):
    _head(head_model)
    bpy.context.scene.flametalk.audio_file = str(long_audio)
    before = scene_state()
    job = generate.GenerateJob(operators_generate.build_request(bpy.context))
    op = modal_generate_operator(job)
    assert _drive(op, until=lambda j: j.keyed_log) == {"PASS_THROUGH"}
    take = job.preview_take
    assert take is not None and take.name in {a.name for a in bpy.data.actions}  # keys are there while it runs
    assert len(keys(curves_by_path(take.shape_action)[('key_blocks["exp_000"].value', 0)])) == job.frames_received
    assert scene_state() != before
    assert bpy.ops.flametalk.cancel() == {"FINISHED"}
    assert _drive(op) == {"CANCELLED"}
    assert op.reports == [("INFO", "FlameTalk: cancelled, nothing was changed")]
    assert scene_state() == before and operators_generate.active_job() is None
    assert worker_client.get_client(sys.executable).alive


def test_a_worker_crash_after_the_first_window_removes_its_keys(addon, head_model, long_audio):
    """The preview keys of a job whose worker dies are undone like a cancel's: one error line, the scene as it was
    (even with Keep finished windows on: only a worker that saved them can keep them)."""
    _head(head_model)
    settings = bpy.context.scene.flametalk
    settings.audio_file, settings.keep_partial = str(long_audio), True
    before = scene_state()
    job = generate.GenerateJob(operators_generate.build_request(bpy.context))
    op = modal_generate_operator(job)
    assert _drive(op, until=lambda j: j.keyed_log) == {"PASS_THROUGH"}
    assert job.preview_take is not None and scene_state() != before
    job.client.proc.kill()
    assert _drive(op, timeout=60) == {"CANCELLED"}
    assert len(op.reports) == 1 and op.reports[0][0] == "ERROR", op.reports
    assert "stopped unexpectedly" in op.reports[0][1] and "\n" not in op.reports[0][1]
    assert scene_state() == before and operators_generate.active_job() is None
    assert not any(a.name.startswith("long_take") for a in bpy.data.actions)


def test_cancel_keeps_the_finished_windows_when_asked(addon, head_model, long_audio):
    flame_rig = _head(head_model)
    settings = bpy.context.scene.flametalk
    settings.audio_file, settings.keep_partial, settings.start_frame = str(long_audio), True, 1
    job = generate.GenerateJob(operators_generate.build_request(bpy.context))
    assert job.req.keep_partial
    op = modal_generate_operator(job)
    assert _drive(op, until=lambda j: j.keyed_log) == {"PASS_THROUGH"}
    at_cancel = job.frames_received
    job.cancel()
    assert _drive(op) == {"FINISHED"}, op.reports
    kept = job.kept
    assert kept is not None and kept >= at_cancel and (kept + 4) % 100 == 0  # whole windows, smoother's 4 held
    assert op.reports[-1][0] == "INFO" and op.reports[-1][1].startswith("cancelled; kept the finished windows")
    bones, shapes = takes.take_actions("long_take1")
    assert bones is not None and shapes is not None and takes.take_names() == ["long_take1"]
    assert flame_rig.key.animation_data.action == shapes
    received = np.concatenate(job.parts)[:kept]  # what the worker sent is what it kept
    for e in (0, 42):
        k = keys(curves_by_path(shapes)[(f'key_blocks["exp_{e:03d}"].value', 0)])
        np.testing.assert_array_equal(k[:, 0], 1 + np.arange(kept))
        np.testing.assert_array_equal(k[:, 1], received[:, e])
    strips = list(bpy.context.scene.sequence_editor.strips_all)
    assert len(strips) == 1 and strips[0].frame_start == 1
    assert bpy.context.scene.frame_end >= kept


def test_the_panel_draws_the_progressive_and_live_parts(addon, head_model) -> None:
    from blender_addon.ui import panel

    _head(head_model)
    seen: list[str] = []

    class Layout:
        def __setattr__(self, name, value):
            pass

        def __getattr__(self, name):
            return lambda *args, **kwargs: Layout()

        def prop(self, data, name, **kwargs):
            assert name in data.bl_rna.properties, name
            seen.append(f"prop {name}")

        def operator(self, idname, **kwargs):
            assert idname.split(".")[1] in dir(bpy.ops.flametalk), idname
            seen.append(f"op {idname}")
            return types.SimpleNamespace()

    state = bpy.context.window_manager.flametalk
    for source, live_running in (("MIC", False), ("FILE", True)):
        bpy.context.scene.flametalk.live_source = source
        state.live_running, state.first_keys = live_running, 1.5
        panel.FLAMETALK_PT_main.draw(types.SimpleNamespace(layout=Layout()), bpy.context)
    state.live_running, state.first_keys = False, -1.0
    for expected in ("prop keep_partial", "op flametalk.live", "op flametalk.live_stop", "prop live_device",
                     "prop live_file", "op flametalk.generate"):
        assert expected in seen, expected
