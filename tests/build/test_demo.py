"""The README's main-job command (scripts/demo.sh -> scripts/demo.py): without the release weights it stops and says
exactly what to download and where; given a checkpoint and a FLAME file it writes demo.blend, demo.glb, demo.png."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from fixtures.common import AUDIO_DIR, REPO

pytest.importorskip("bpy")
from flametalk.testing import synthetic_flame as synthetic

DEMO = str(REPO / "scripts" / "demo.py")


def _env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAMETALK_")}
    env.update(FLAMETALK_CACHE=str(tmp_path / "cache"), FLAMETALK_DEMO_OUT=str(tmp_path / "demo"),
               FLAMETALK_HUB_URL="http://127.0.0.1:9", **extra)  # port 9 (discard): refused at once, no network
    return env


def test_without_weights_or_flame_it_says_what_to_fetch_and_where(tmp_path):
    run = subprocess.run([sys.executable, DEMO], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert run.returncode == 3, run.stdout + run.stderr
    err = run.stderr
    target = tmp_path / "cache" / "artalk" / "ARTalk_wav2vec.pt"
    assert "ARTalk_wav2vec.pt (1.82 GiB" in err and f"to:   {target}" in err
    assert "/xg-chu/ARTalk/resolve/main/ARTalk_wav2vec.pt" in err and "from: " in err
    assert "FLAMETALK_FLAME=/path/to/generic_model.pkl bash scripts/demo.sh" in err
    assert "--accept-flame-license" in err and "https://flame.is.tue.mpg.de" in err
    assert err.rstrip().endswith("Then run `bash scripts/demo.sh` again.")
    assert not (tmp_path / "demo" / "demo.blend").exists()


@pytest.mark.slow
@pytest.mark.blender
def test_with_a_checkpoint_and_a_flame_file_it_writes_blend_glb_and_preview(tmp_path, parity_checkpoint_dir):
    flame = synthetic.write_pkl_2020(str(tmp_path / "generic_model.pkl"),
                                     synthetic.make_arrays(n_verts=800, n_faces=1500, seed=8))
    extra = {"FLAMETALK_CHECKPOINT": str(parity_checkpoint_dir), "FLAMETALK_FLAME": flame}
    if shutil.which("espeak-ng") is None:  # CI installs it (.ci/run); elsewhere use a recording
        extra["FLAMETALK_DEMO_AUDIO"] = str(AUDIO_DIR / "eng2.wav")
    run = subprocess.run([sys.executable, DEMO], capture_output=True, text=True, env=_env(tmp_path, **extra),
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "demo"
    head = (out / "demo.blend").read_bytes()[:7]
    assert head == b"BLENDER" or head[:4] == b"\x28\xb5\x2f\xfd"  # plain or zstd-compressed .blend
    assert (out / "demo.glb").read_bytes()[:4] == b"glTF"
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 512
    if "FLAMETALK_DEMO_AUDIO" not in extra:
        assert (out / "demo.wav").stat().st_size > 16000  # espeak-ng spoke the line
