"""Issue 6: a checkpoint written by training drives the add-on's Generate without conversion."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf

bpy = pytest.importorskip("bpy")

from fixtures.addon import curves_by_path, keys  # noqa: E402
from fixtures.common import AUDIO_DIR  # noqa: E402
from fixtures.synthetic_head import make_head_arrays  # noqa: E402
from fixtures.training import stage2_quick  # noqa: E402
from flametalk.testing import synthetic_flame as synthetic  # noqa: E402

from blender_addon.scene import rig  # noqa: E402
from blender_addon.scene.keyframes import continuous_quaternions  # noqa: E402
from blender_addon.worker import client as worker_client  # noqa: E402


def test_a_trained_checkpoint_drives_generate(tmp_path):
    import addon_utils

    export = stage2_quick().export_dir  # stage 1 (VQ) + stage 2 on tiny synthetic data, release-layout export
    addon_utils.enable("blender_addon", default_set=True)
    try:
        prefs = bpy.context.preferences.addons["blender_addon"].preferences
        prefs.worker_python, prefs.device = sys.executable, "CPU"
        bpy.ops.wm.read_homefile(use_empty=True)
        head = rig.build_rig(synthetic.model_from_arrays(make_head_arrays()))
        bpy.context.view_layer.objects.active = head.armature
        settings = bpy.context.scene.flametalk
        settings.audio_source, settings.audio_file = "FILE", str(AUDIO_DIR / "eng2.wav")
        assert bpy.ops.flametalk.generate(checkpoint=str(export), timeout=300) == {"FINISHED"}

        # the same motion straight from the worker, for the values the keys must hold
        out = tmp_path / "direct.npz"
        client = worker_client.get_client(sys.executable)
        client.wait(client.submit("generate", audio=str(AUDIO_DIR / "eng2.wav"), out=str(out),
                                  checkpoint=str(export), device="cpu"), timeout=300)
        motion = np.load(out)["motion"]
        shapes = curves_by_path(head.key.animation_data.action)
        assert len([p for p in shapes if p[0].startswith('key_blocks["exp_')]) == 100
        np.testing.assert_allclose(keys(shapes[('key_blocks["exp_007"].value', 0)])[:, 1], motion[:, 7], atol=1e-5)
        bones = curves_by_path(head.armature.animation_data.action)
        jaw = np.stack([keys(bones[('pose.bones["jaw"].rotation_quaternion', i)])[:, 1] for i in range(4)], axis=1)
        np.testing.assert_allclose(jaw, continuous_quaternions(motion[:, 103:106]), atol=1e-5)
        info = sf.info(str(AUDIO_DIR / "eng2.wav"))
        assert len(motion) == int(np.ceil(info.frames / info.samplerate * 25)) and motion[:, :100].std() > 0
    finally:
        bpy.ops.wm.read_homefile(use_empty=True)
        addon_utils.disable("blender_addon", default_set=True)
        worker_client.stop_all()
