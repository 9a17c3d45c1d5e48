"""The shipped artefact end to end: build the linux-x64 extension zip, install it into Blender (bpy) the way a user
does, set up the worker runtime offline from the zip's wheels, and Generate through that runtime's worker.

Blender's state lives in a temporary BLENDER_USER_RESOURCES, so nothing touches the developer's Blender. The
in-Blender part runs in a fresh interpreter (BLENDER_USER_RESOURCES must be set before `import bpy`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from fixtures.common import AUDIO_DIR, REPO
from fixtures.report import record

pytest.importorskip("bpy")
from flametalk.testing import synthetic_flame as synthetic

IN_BLENDER = r"""
import json, os, sys, time
import bpy

zip_path, flame, audio, checkpoint = sys.argv[1:5]
t0 = time.perf_counter()
result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
assert result == {"FINISHED"}, result
name = "bl_ext.user_default.flametalk"
assert name in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
ext = sys.modules[name]
runtime = sys.modules[name + ".worker.runtime"]
out = {"installed_s": time.perf_counter() - t0, "addon_dir": os.path.dirname(ext.__file__),
       "operators": [op for op in ("setup_runtime", "generate", "build_head") if hasattr(bpy.ops.flametalk, op)],
       "python_before": runtime.automatic_worker_python()}

t0 = time.perf_counter()
out["setup"] = list(bpy.ops.flametalk.setup_runtime())
out["setup_s"] = time.perf_counter() - t0
out["python_after"] = runtime.automatic_worker_python()
out["status"] = runtime.status(runtime.default_runtime_dir(), runtime.read_bundle())

bpy.ops.wm.read_homefile(use_empty=True)
assert bpy.ops.flametalk.build_head(filepath=flame) == {"FINISHED"}
settings = bpy.context.scene.flametalk
settings.head = bpy.context.view_layer.objects.active
settings.audio_source, settings.audio_file = "FILE", audio
t0 = time.perf_counter()
out["generate"] = list(bpy.ops.flametalk.generate(checkpoint=checkpoint, timeout=300))
out["generate_s"] = time.perf_counter() - t0
mesh = next(o for o in bpy.data.objects if o.type == "MESH" and o.data.shape_keys)
action = mesh.data.shape_keys.animation_data.action
curves = sys.modules[name + ".scene.compat"].iter_action_fcurves(action)
out["shape_keys_keyed"] = sum(1 for fc in curves if len(fc.keyframe_points) > 1)
out["frames"] = max(len(fc.keyframe_points) for fc in curves)
out["torch_in_blender"] = "torch" in sys.modules
out["flame_file"] = sys.modules[name + ".flame"].__file__
shared = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", ".local")
out["shared_site_packages"] = sorted(os.listdir(shared)) if os.path.isdir(shared) else []
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.blender
def test_built_zip_installs_sets_up_its_runtime_offline_and_generates(tmp_path, parity_checkpoint_dir):
    t0 = time.perf_counter()
    build = subprocess.run([sys.executable, str(REPO / "build.py"), "--platform", "linux-x64",
                            "--out", str(tmp_path / "dist")], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    build_s = time.perf_counter() - t0
    zip_path = tmp_path / "dist" / "flametalk-0.1.0-linux_x64.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        manifest = archive.read("blender_manifest.toml").decode()
    assert "runtime_wheels/requirements.txt" in names and any(n.startswith("runtime_wheels/torch-") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "wheels = []" in manifest  # nothing for Blender's shared site-packages

    flame = synthetic.write_pkl_2020(str(tmp_path / "generic_model.pkl"),
                                     synthetic.make_arrays(n_verts=600, n_faces=1000, seed=3))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAMETALK_", "PYTHONPATH"))}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender")
    env["FLAMETALK_CACHE"] = str(tmp_path / "cache")  # no asset cache of the developer's
    run = subprocess.run([sys.executable, "-c", IN_BLENDER, str(zip_path), flame, str(AUDIO_DIR / "eng2.wav"),
                          str(parity_checkpoint_dir)], capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    record("extension zip", "linux-x64", f"build {build_s:.0f} s, install {out['installed_s']:.1f} s, runtime set-up "
           f"{out['setup_s']:.0f} s, generate {out['generate_s']:.1f} s; zip {zip_path.stat().st_size / 1e6:.0f} MB")

    assert out["addon_dir"].startswith(env["BLENDER_USER_RESOURCES"])
    assert out["operators"] == ["setup_runtime", "generate", "build_head"]
    assert out["python_before"] == ""  # nothing set up yet
    assert out["setup"] == ["FINISHED"] and out["status"][0] == "ready", out["status"]
    assert out["python_after"].startswith(env["BLENDER_USER_RESOURCES"])  # the extension's user folder
    assert out["generate"] == ["FINISHED"]
    assert out["shape_keys_keyed"] >= 50 and out["frames"] >= 25 * 3  # eng2.wav is several seconds of speech
    assert not out["torch_in_blender"]
    assert out["flame_file"] == str(Path(out["addon_dir"]) / "flame" / "__init__.py")  # the zip's own copy
    assert out["shared_site_packages"] == [] or "site-packages" not in str(out["shared_site_packages"])
