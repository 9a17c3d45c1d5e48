"""A zip built without torch (build.py --torch-from-index): set-up says what it will download, fetches torch from the
given package index, installs the rest offline, and the worker starts. The "index" is a local simple-API folder
holding the locked torch wheel, so no network is needed."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from fixtures.common import REPO

from blender_addon.worker import runtime


@pytest.mark.slow
def test_setup_fetches_torch_from_an_index_when_the_zip_has_none(tmp_path):
    build = subprocess.run([sys.executable, str(REPO / "build.py"), "--platform", "linux-x64", "--torch-from-index",
                            "--out", str(tmp_path / "dist")], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    with zipfile.ZipFile(tmp_path / "dist" / "flametalk-0.1.0-linux_x64.zip") as archive:
        archive.extractall(tmp_path / "ext", [n for n in archive.namelist() if n.startswith("runtime_wheels/")])
    bundle = runtime.read_bundle(tmp_path / "ext" / "runtime_wheels")
    assert bundle is not None and not bundle.torch["bundled"]
    assert not list(bundle.folder.glob("torch-*.whl")) and "torch==" not in bundle.requirements.read_text()
    assert "download.pytorch.org/whl/cpu" in runtime.torch_notice(bundle)

    torch_wheel = next((REPO / "wheels" / "linux-x64").glob("torch-*.whl"))
    index = tmp_path / "index" / "torch"
    index.mkdir(parents=True)
    (index / "index.html").write_text(f'<a href="{torch_wheel.as_uri()}">{torch_wheel.name}</a>\n')
    messages: list[str] = []
    hello = runtime.setup_runtime(bundle, tmp_path / "rt", sys.executable,
                                  torch_index_url=(tmp_path / "index").as_uri(),
                                  progress=lambda fraction, message: messages.append(message))
    assert hello["torch"].startswith("2.13.0")
    assert any(m.startswith("Downloading torch==2.13.0") and "from file://" in m for m in messages), messages[:5]
    state, _ = runtime.status(tmp_path / "rt", bundle)
    assert state == "ready"
    stamp = json.loads((tmp_path / "rt" / runtime.STAMP).read_text())
    assert stamp["flametalk"] == "0.1.0"
