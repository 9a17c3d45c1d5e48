"""Asset download from a local fake hub (127.0.0.1, Range support): sha256 checks, resume, mismatch handling,
FLAME licence gating, the lock file for unhashed files, offline instructions, status/verify, cache location."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fixtures.common import one_error_line, run_flametalk
from flametalk.assets import store as assets
from flametalk.assets.store import Asset, download, states
from flametalk.errors import FlameTalkError

MODEL = bytes(range(256)) * 1200  # 307,200 bytes
CONFIG = b'{"AR_CONFIG": {}, "VAE_CONFIG": {}}'
STYLE = b"style clip bytes " * 100
FLAME = b"flame" * 999


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """Serves `files` ({url path: bytes}) with HTTP Range support; records every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.honour_range = True
        self.cut_after: int | None = None  # drop the connection after this many body bytes
        self.seconds_per_body = 0.0  # send each body in 20 pieces over this long (a slow link)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # http.server's naming
                rng = self.headers.get("Range")
                hub.requests.append((self.path, rng))
                data = hub.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and hub.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hub.cut_after is not None:
                    self.wfile.write(body[: hub.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if hub.seconds_per_body:
                    step = max(1, len(body) // 20)
                    for at in range(0, len(body), step):
                        self.wfile.write(body[at : at + step])
                        self.wfile.flush()
                        time.sleep(hub.seconds_per_body / 20)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def count(self, path: str) -> int:
        return Counter(p for p, _ in self.requests)[path]


@pytest.fixture
def hub():
    h = FakeHub({
        "/t/artalk/resolve/main/model.pt": MODEL,
        "/t/artalk/resolve/main/config.json": CONFIG,
        "/t/artalk/resolve/main/style_motion/calm_0.pt": STYLE,
        "/t/flame/resolve/main/assets/FLAME_with_eye.pt": FLAME,
    })  # fmt: skip
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()
    h.thread.join(timeout=5)


def manifest(model_sha: str = sha(MODEL)) -> list[Asset]:
    return [
        Asset("model.pt", "t/artalk", "model.pt", "artalk/model.pt", len(MODEL), model_sha),
        Asset("config.json", "t/artalk", "config.json", "artalk/config.json", len(CONFIG), sha(CONFIG)),
        Asset("style_motion/calm_0.pt", "t/artalk", "style_motion/calm_0.pt", "artalk/style_motion/calm_0.pt",
              required=False),
        Asset("FLAME_with_eye.pt", "t/flame", "assets/FLAME_with_eye.pt", "flame/FLAME_with_eye.pt", len(FLAME),
              sha(FLAME), flame=True, required=False),
    ]  # fmt: skip


def fetch_all(cache: Path, hub: FakeHub, **kwargs) -> tuple[list, list[str]]:
    logs: list[str] = []
    kwargs.setdefault("manifest", manifest())
    final = download(cache, base_url=hub.url, progress=False, log=logs.append, **kwargs)
    return final, logs


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def test_download_verifies_records_and_does_not_refetch(tmp_path, hub):
    final, logs = fetch_all(tmp_path, hub)
    assert (tmp_path / "artalk" / "model.pt").read_bytes() == MODEL
    assert (tmp_path / "artalk" / "config.json").read_bytes() == CONFIG
    assert (tmp_path / "artalk" / "style_motion" / "calm_0.pt").read_bytes() == STYLE
    assert not (tmp_path / "flame").exists()  # FLAME needs the licence flag
    assert any("flame.is.tue.mpg.de" in line and "--accept-flame-license" in line for line in logs)
    assert [s.state for s in final] == ["verified", "verified", "verified"]
    assert not list(tmp_path.rglob("*.part"))
    lock = json.loads((tmp_path / "assets.lock.json").read_text())
    assert lock["files"]["artalk/style_motion/calm_0.pt"]["sha256"] == sha(STYLE)
    assert lock["files"]["artalk/style_motion/calm_0.pt"]["size"] == len(STYLE)
    assert json.loads((tmp_path / "artalk" / "model.pt.sha256").read_text())["sha256"] == sha(MODEL)

    before = len(hub.requests)
    fetch_all(tmp_path, hub)
    assert len(hub.requests) == before  # everything already in place: no request at all


def test_resume_from_part_uses_a_range_request(tmp_path, hub):
    part = tmp_path / "artalk" / "model.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(MODEL[:100_000])
    fetch_all(tmp_path, hub)
    assert ("/t/artalk/resolve/main/model.pt", "bytes=100000-") in hub.requests
    assert (tmp_path / "artalk" / "model.pt").read_bytes() == MODEL
    assert not part.exists()


def test_resume_when_the_server_ignores_range_restarts_cleanly(tmp_path, hub):
    hub.honour_range = False
    part = tmp_path / "artalk" / "model.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(MODEL[:5000])
    fetch_all(tmp_path, hub)
    assert (tmp_path / "artalk" / "model.pt").read_bytes() == MODEL


def test_complete_part_is_finished_without_a_body(tmp_path, hub):
    part = tmp_path / "artalk" / "style_motion" / "calm_0.pt.part"  # size unknown: the server answers 416
    part.parent.mkdir(parents=True)
    part.write_bytes(STYLE)
    fetch_all(tmp_path, hub)
    assert (tmp_path / "artalk" / "style_motion" / "calm_0.pt").read_bytes() == STYLE


def test_interrupted_download_keeps_the_part_and_the_next_run_resumes(tmp_path, hub):
    hub.cut_after = 120_000
    with pytest.raises(FlameTalkError, match=r"interrupted after .* run the same command again to resume"):
        fetch_all(tmp_path, hub)
    part = tmp_path / "artalk" / "model.pt.part"
    assert 0 < part.stat().st_size < len(MODEL)
    hub.cut_after = None
    fetch_all(tmp_path, hub)
    assert hub.requests[-3][1] is not None  # the model was resumed with a Range request
    assert (tmp_path / "artalk" / "model.pt").read_bytes() == MODEL


def test_hash_mismatch_deletes_the_part_and_says_so(tmp_path, hub):
    pattern = r"model.pt is corrupt: sha256 .* expected 0{64}.*partial file was deleted"
    with pytest.raises(FlameTalkError, match=pattern):
        fetch_all(tmp_path, hub, manifest=manifest(model_sha="0" * 64))
    assert not (tmp_path / "artalk" / "model.pt").exists()
    assert not (tmp_path / "artalk" / "model.pt.part").exists()


def test_a_corrupt_part_is_detected_then_replaced_by_a_fresh_download(tmp_path, hub):
    part = tmp_path / "artalk" / "model.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # wrong prefix: resuming cannot give the right file
    with pytest.raises(FlameTalkError, match="corrupt"):
        fetch_all(tmp_path, hub)
    assert not part.exists()
    fetch_all(tmp_path, hub)
    assert (tmp_path / "artalk" / "model.pt").read_bytes() == MODEL


def test_damaged_file_in_the_cache_is_downloaded_again(tmp_path, hub):
    fetch_all(tmp_path, hub)
    model = tmp_path / "artalk" / "model.pt"
    model.write_bytes(b"x" * len(MODEL))
    _, logs = fetch_all(tmp_path, hub)
    assert any("damaged" in line for line in logs)
    assert model.read_bytes() == MODEL


def test_flame_only_with_the_licence_flag(tmp_path, hub):
    fetch_all(tmp_path, hub)
    assert hub.count("/t/flame/resolve/main/assets/FLAME_with_eye.pt") == 0
    final, _ = fetch_all(tmp_path, hub, accept_flame_license=True)
    assert (tmp_path / "flame" / "FLAME_with_eye.pt").read_bytes() == FLAME
    assert [s.state for s in final][-1] == "verified"


def test_unhashed_file_is_checked_against_the_lock_file(tmp_path, hub):
    fetch_all(tmp_path, hub)
    style = tmp_path / "artalk" / "style_motion" / "calm_0.pt"
    style.unlink()
    hub.files["/t/artalk/resolve/main/style_motion/calm_0.pt"] = STYLE[:-1] + b"!"  # changed upstream
    with pytest.raises(FlameTalkError, match=re.escape("calm_0.pt is corrupt")):
        fetch_all(tmp_path, hub)
    style.parent.mkdir(parents=True, exist_ok=True)
    style.write_bytes(b"tampered" + STYLE[8:])
    found = {s.asset.name: s for s in states(tmp_path, manifest(), full_hash=True)}["style_motion/calm_0.pt"]
    assert found.state == "mismatch" and f"expected {sha(STYLE)}" in found.detail


def test_http_errors_are_reported(tmp_path, hub):
    broken = [Asset("gone.pt", "t/artalk", "gone.pt", "artalk/gone.pt", 10, "0" * 64)]
    with pytest.raises(FlameTalkError, match=r"download of gone.pt failed: HTTP 404 .*/t/artalk/resolve/main/gone.pt"):
        fetch_all(tmp_path, hub, manifest=broken)


def test_offline_message_names_every_file_size_url_and_destination(tmp_path):
    base = closed_port_url()
    with pytest.raises(FlameTalkError) as info:
        download(tmp_path, manifest=manifest(), base_url=base, progress=False, log=lambda _: None)
    msg = str(info.value)
    assert info.value.exit_code == assets.EXIT_OFFLINE
    assert msg.startswith(f"cannot reach the model hub at {base}")
    assert f"model.pt ({len(MODEL) / 1024:.2f} KiB, {len(MODEL):,} bytes)" in msg
    assert f"from: {base}/t/artalk/resolve/main/model.pt" in msg
    assert f"to:   {tmp_path / 'artalk' / 'model.pt'}" in msg
    assert "config.json" in msg and "style_motion/calm_0.pt (size not published)" in msg
    assert "FLAME_with_eye.pt" not in msg  # not requested without the licence flag


def test_status_states(tmp_path, hub):
    m = manifest()
    assert [s.state for s in states(tmp_path, m)] == ["missing"] * 4
    assert "needs --accept-flame-license" in states(tmp_path, m)[3].detail
    (tmp_path / "artalk").mkdir()
    (tmp_path / "artalk" / "model.pt.part").write_bytes(MODEL[:10])
    (tmp_path / "artalk" / "config.json").write_bytes(CONFIG)  # put by hand: no sidecar hash yet
    s = states(tmp_path, m)
    assert s[0].state == "partial" and f"10 of {len(MODEL):,} bytes" in s[0].detail
    assert s[1].state == "present"
    assert states(tmp_path, m, full_hash=True)[1].state == "verified"
    s = states(tmp_path, m)[1]  # the hash recorded by verify is only a hint: status does not call it verified
    assert s.state == "present" and s.detail == assets.NOT_REVERIFIED
    (tmp_path / "artalk" / "config.json").write_bytes(CONFIG + b" ")
    assert states(tmp_path, m)[1].state == "wrong-size"


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("FLAMETALK_CACHE", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "flametalk"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert assets.cache_dir() == Path.home() / ".cache" / "flametalk"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert assets.cache_dir() == Path.home() / "Library" / "Caches" / "flametalk"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert assets.cache_dir() == tmp_path / "local" / "flametalk" / "cache"
    monkeypatch.setenv("FLAMETALK_CACHE", str(tmp_path / "env"))
    assert assets.cache_dir() == tmp_path / "env"
    assert assets.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert assets.default_checkpoint_dir(tmp_path) == tmp_path / "artalk"
    assert assets.style_dir(tmp_path) == tmp_path / "artalk" / "style_motion"


def test_release_manifest_and_urls(monkeypatch):
    items = {a.name: a for a in assets.release_manifest()}
    ckpt = items["ARTalk_wav2vec.pt"]
    assert ckpt.size == 1_959_150_898
    assert ckpt.sha256 == "d89615a32e2a6b4e35cf5494c1e400b2acedc43812f63423b9f5d705046d67c2"
    assert (items["config.json"].size, items["FLAME_with_eye.pt"].size) == (303, 26_819_643)
    assert items["FLAME_with_eye.pt"].flame and not ckpt.flame
    assert items["style_motion/natural_0.pt"].sha256 is None
    monkeypatch.delenv("FLAMETALK_HUB_URL", raising=False)
    assert assets.asset_url(ckpt) == "https://huggingface.co/xg-chu/ARTalk/resolve/main/ARTalk_wav2vec.pt"
    flame_url = assets.asset_url(items["FLAME_with_eye.pt"])
    assert flame_url == "https://huggingface.co/xg-chu/GAGAvatar/resolve/main/assets/FLAME_with_eye.pt"
    monkeypatch.setenv("FLAMETALK_HUB_URL", "http://mirror.local/hub/")
    assert assets.asset_url(ckpt) == "http://mirror.local/hub/xg-chu/ARTalk/resolve/main/ARTalk_wav2vec.pt"


def test_style_listing_from_the_hub_adds_unknown_clips(hub):
    listing = [{"type": "file", "path": "style_motion/natural_0.pt"}, {"type": "file", "path": "style_motion/sly_3.pt"},
               {"type": "directory", "path": "style_motion/sub"}]  # fmt: skip
    hub.files["/api/models/xg-chu/ARTalk/tree/main/style_motion"] = json.dumps(listing).encode()
    logs: list[str] = []
    names = assets._discover_styles(hub.url, logs.append)
    assert names[: len(assets.KNOWN_STYLES)] == list(assets.KNOWN_STYLES) and names[-1] == "sly_3"
    assert assets._discover_styles(closed_port_url(), logs.append) == list(assets.KNOWN_STYLES)


def test_cli_assets_offline_status_and_verify(tmp_path):
    env = {"FLAMETALK_HUB_URL": closed_port_url(), "FLAMETALK_CACHE": str(tmp_path / "cache")}
    proc = run_flametalk("assets", "download", "--quiet", env=env)
    assert proc.returncode == assets.EXIT_OFFLINE
    assert "flametalk: error: cannot reach the model hub" in proc.stderr
    assert "ARTalk_wav2vec.pt (1.82 GiB, 1,959,150,898 bytes)" in proc.stderr
    assert f"to:   {tmp_path / 'cache' / 'artalk' / 'ARTalk_wav2vec.pt'}" in proc.stderr
    assert "xg-chu/ARTalk/resolve/main/config.json" in proc.stderr
    assert "skipped FLAME_with_eye.pt" in proc.stderr and "flame.is.tue.mpg.de" in proc.stderr

    proc = run_flametalk("assets", "status", "--cache", str(tmp_path / "other"), env=env)
    assert proc.returncode == 0
    assert f"cache: {tmp_path / 'other'}" in proc.stdout and "missing    ARTalk_wav2vec.pt" in proc.stdout

    proc = run_flametalk("assets", "verify", env=env)
    assert proc.returncode == 2
    assert "2 required missing (ARTalk_wav2vec.pt, config.json)" in one_error_line(proc.stderr)


def test_status_never_calls_a_cached_hash_verified(tmp_path, hub):
    """Issue 19 item 12: a file edited in place with its size and modification time restored keeps its recorded
    hash; `status` said "verified" while `verify` said "mismatch". Now status says present (not re-verified)."""
    m = manifest()[:2]
    final, _ = fetch_all(tmp_path, hub, manifest=m)
    assert [s.state for s in final] == ["verified", "verified"]  # hashed while downloading
    model = tmp_path / "artalk" / "model.pt"
    stat = model.stat()
    with open(model, "r+b") as fh:  # same size, one byte changed, the time put back
        fh.seek(1000)
        fh.write(bytes([MODEL[1000] ^ 0xFF]))
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    status = states(tmp_path, m)
    assert [s.state for s in status] == ["present", "present"]
    assert all(s.detail == assets.NOT_REVERIFIED for s in status)
    checked = states(tmp_path, m, full_hash=True)
    assert [s.state for s in checked] == ["mismatch", "verified"]


def test_two_downloads_into_one_cache_do_not_share_the_part(tmp_path, hub):
    """Issue 19 item 8: two runs downloading into the same cache both resumed the same .part and appended to it
    (a corrupt file). Now the second waits for the first (one line says so) and then finds the file in place."""
    hub.seconds_per_body = 1.0
    m = manifest()[:1]
    logs: dict[int, list[str]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            download(tmp_path, manifest=m, base_url=hub.url, progress=False, log=logs[k].append)
        except BaseException as err:  # reported by the assertions below
            errors.append(err)

    first = threading.Thread(target=run, args=(0,))
    first.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "artalk" / "model.pt.part").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    s = states(tmp_path, m)[0]
    assert s.state == "partial" and "being downloaded by another process" in s.detail
    second = threading.Thread(target=run, args=(1,))
    second.start()
    first.join(30)
    second.join(30)
    assert errors == []
    assert (tmp_path / "artalk" / "model.pt").read_bytes() == MODEL
    assert hub.count("/t/artalk/resolve/main/model.pt") == 1  # fetched once: the second used the first's file
    waiting = [line for line in logs[1] if "another process is downloading model.pt" in line]
    assert len(waiting) == 1 and "waiting for it to finish" in waiting[0]
    assert not list(tmp_path.rglob("*.part"))
    assert states(tmp_path, m, full_hash=True)[0].state == "verified"
