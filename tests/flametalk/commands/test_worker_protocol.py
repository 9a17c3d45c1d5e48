"""Hostile and unlucky request lines: the worker answers an error event for each and keeps serving; it exits when its
stdin closes whatever it is doing; the client gives up on a silent worker with one message (issue 19, item 3)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.common import REPO
from flametalk.commands import protocol
from flametalk.commands import worker as worker_mod
from flametalk.commands.protocol import MAX_DEPTH, MAX_LINE_BYTES, parse_request
from flametalk.commands.worker import Worker

from blender_addon.worker.client import WorkerClient, WorkerError

# (request line, fragment of the error message, id the error event carries)
BAD_LINES = [
    (b'{"id":[1],"cmd":"bogus"}', "'id' must be an integer, a string", None),
    (b'{"id":{"a":1},"cmd":"ping"}', "'id' must be an integer", None),
    (b'{"id":true,"cmd":"ping"}', "'id' must be an integer", None),
    (b'{"id":' + b"9" * 30 + b',"cmd":"ping"}', "'id' must be an integer", None),
    (b'{"id":"' + b"x" * 300 + b'","cmd":"ping"}', "'id' must be an integer", None),
    (b'{"id":14,"cmd":"cancel","target":[1]}', "cancel: 'target' must be a request id", 14),
    (b'{"id":15,"cmd":"cancel","target":{"x":1}}', "cancel: 'target' must be a request id", 15),
    (b"[" * 100_000, f"nested deeper than {MAX_DEPTH} levels", None),
    (b'{"id":1,"cmd":"ping","x":' + b"[" * 20 + b"]" * 20 + b"}", f"nested deeper than {MAX_DEPTH} levels", None),
    (b"{not json", "bad request line (Expecting property name", None),
    (b'"just a string"', "not a JSON object but 'just a string'", None),
    (b"[1, 2]", "not a JSON object but a JSON array", None),
    (b'{"id":1,"cmd":"ping"}\xff\xfe', "not UTF-8 text", None),
    (b'{"id":2,"cmd":"bogus"}', "unknown command 'bogus'; use one of generate, load", 2),
    (b'{"id":3,"cmd":["generate"]}', "unknown command a JSON array", 3),
    (b'{"id":4}', "unknown command None", 4),
    (b'{"id":5,"cmd":"generate","out":"x.npz"}', "generate needs 'audio' (a string)", 5),
    (b'{"id":6,"cmd":"generate","audio":["a.wav"],"out":"x.npz"}', "'audio' must be a non-empty string", 6),
    (b'{"id":7,"cmd":"generate","audio":"a.wav","out":"  "}', "'out' must be a non-empty string", 7),
    (b'{"id":8,"cmd":"generate","audio":"a\\u0000.wav","out":"x.npz"}', "without NUL", 8),
    (b'{"id":9,"cmd":"generate","audio":"a.wav","out":"x.npz","style_start":-1}', "'style_start' must be a whole", 9),
    (b'{"id":10,"cmd":"generate","audio":"a.wav","out":"x.npz","style_start":NaN}', "'style_start' must be", 10),
    (b'{"id":11,"cmd":"generate","audio":"a.wav","out":"x.npz","style":3}', "'style' must be a string", 11),
    (b'{"id":12,"cmd":"generate","audio":"a.wav","out":"x.npz","style":{"a":"b"}}', "{\"motion_npy\": path}", 12),
    (b'{"id":13,"cmd":"generate","audio":"a.wav","out":"x.npz","postprocess":"yes"}', "'postprocess' must be", 13),
    (b'{"id":16,"cmd":"load","mode":"turbo"}', "'mode' must be one of exact, fast, got 'turbo'", 16),
    (b'{"id":17,"cmd":"load","device":7}', "'device' must be a string, got 7", 17),
    (b'{"id":18,"cmd":"spare_cores","cores":-1}', "'cores' must be a whole number >= 0", 18),
    (b'{"id":19,"cmd":"spare_cores","cores":1e400}', "'cores' must be a whole number >= 0", 19),
    (b'{"id":"a","cmd":"spare_cores","cores":true}', "'cores' must be a whole number >= 0", "a"),
    (b'{"id":20,"cmd":"ping","n":' + b"1" * 5000 + b"}", "bad request line (Exceeds the limit", None),
]


def run_lines(lines: list[bytes]) -> tuple[list[dict], Worker]:
    out = io.StringIO()
    worker = Worker(out)
    worker.read_requests(io.BytesIO(b"\n".join(lines) + b"\n"))
    return [json.loads(line) for line in out.getvalue().splitlines()], worker


@pytest.mark.parametrize("line, message, rid", BAD_LINES, ids=[str(i) for i in range(len(BAD_LINES))])
def test_each_malformed_line_gets_one_input_error_and_the_reader_goes_on(line, message, rid):
    events, worker = run_lines([line, b'{"id":99,"cmd":"ping"}'])
    assert len(events) == 2, events
    error, pong = events
    assert error["event"] == "error" and error["kind"] == "input" and error["id"] == rid, error
    assert message in error["message"] and "\n" not in error["message"] and len(error["message"]) < 400
    assert pong == {"event": "pong", "id": 99, "loaded": None}
    assert worker.jobs.get_nowait() is None and worker.stdin_closed.is_set()  # EOF reached: the job loop stops


def test_a_line_over_the_size_cap_is_skipped_whole():
    huge = b'{"id":1,"cmd":"generate","audio":"' + b"a" * (3 * MAX_LINE_BYTES) + b'","out":"x.npz"}'
    events, worker = run_lines([huge, b'{"id":2,"cmd":"ping"}'])
    assert events == [
        {"event": "error", "id": None, "kind": "input",
         "message": f"bad request line (longer than {MAX_LINE_BYTES} bytes)"},
        {"event": "pong", "id": 2, "loaded": None},
    ]
    assert worker.jobs.get_nowait() is None  # the long line queued no job
    # one byte under the cap is still a request
    near = b'{"id":3,"cmd":"ping","pad":"' + b"p" * (MAX_LINE_BYTES - 40) + b'"}'
    assert len(near) <= MAX_LINE_BYTES
    assert run_lines([near])[0] == [{"event": "pong", "id": 3, "loaded": None}]


def test_valid_requests_are_queued_with_their_defaults():
    events, worker = run_lines([
        b'{"id":1,"cmd":"generate","audio":"a.wav","out":"x.npz","style":{"motion_npy":"s.npy"},"extra":1}',
        b'{"id":"two","cmd":"load","checkpoint":"ckpt","device":null}',
        b'{"id":3,"cmd":"cancel","target":"two"}',
        b'{"id":4,"cmd":"spare_cores","cores":1}',
        b'{"id":5,"cmd":"shutdown"}',
        b'{"id":6,"cmd":"generate","audio":"a.wav","out":"y.npz"}',
    ])
    assert events == [{"event": "error", "id": 6, "kind": "input", "message": "the worker is shutting down"}]
    assert worker.jobs.get_nowait() == {"id": 1, "cmd": "generate", "checkpoint": None, "device": "auto",
                                        "mode": "exact", "audio": "a.wav", "out": "x.npz", "style": "s.npy",
                                        "style_start": 0, "postprocess": True}
    assert worker.jobs.get_nowait() == {"id": "two", "cmd": "load", "checkpoint": "ckpt", "device": "auto",
                                        "mode": "exact"}
    assert worker.jobs.get_nowait() == {"id": 5, "cmd": "shutdown"}
    assert worker.jobs.get_nowait() is None
    assert worker.cancelled == {"two"} and worker.spare_cores == 1


def test_the_worker_modes_are_the_library_modes():
    from flametalk.fast.precision import MODES

    assert protocol.MODES == MODES


def test_parse_request_never_echoes_a_huge_value():
    with pytest.raises(protocol.BadRequest) as info:
        parse_request('{"id":1,"cmd":"' + "c" * 10_000 + '"}')
    assert len(str(info.value)) < 200 and info.value.rid == 1


def test_an_unwritable_client_does_not_stop_the_reader():
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    worker = Worker(Closed())
    worker.read_requests(io.BytesIO(b'{"id":[1]}\n{"id":1,"cmd":"ping"}\n{"id":2,"cmd":"shutdown"}\n'))
    assert worker.jobs.get_nowait() == {"id": 2, "cmd": "shutdown"}


# ---- the real worker process ----

def start_worker() -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "inference"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "flametalk.commands.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    hello = json.loads(proc.stdout.readline())
    assert hello["event"] == "hello"
    return proc, hello


def ask(proc: subprocess.Popen, line: bytes) -> dict:
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_the_worker_process_survives_hostile_lines_and_exits_when_stdin_closes():
    proc, _ = start_worker()
    try:
        for line, message, rid in [
            (b'{"id":[1],"cmd":"bogus"}', "'id' must be an integer", None),
            (b'{"id":14,"cmd":"cancel","target":[1]}', "'target' must be a request id", 14),
            (b"[" * 100_000, "nested deeper than", None),
            (b"x" * (MAX_LINE_BYTES + 10), "longer than", None),
        ]:
            event = ask(proc, line)
            assert event["event"] == "error" and event["kind"] == "input" and event["id"] == rid, event
            assert message in event["message"]
        assert ask(proc, b'{"id":5,"cmd":"ping"}') == {"event": "pong", "id": 5, "loaded": None}
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_worker_exits_when_stdin_closes_during_a_job(parity_checkpoint_dir, tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(wav, (0.01 * np.random.default_rng(0).standard_normal(600 * 16000)).astype(np.float32), 16000)
    proc, _ = start_worker()
    try:
        request = {"id": 1, "cmd": "generate", "audio": str(wav), "out": str(tmp_path / "never.npz"),
                   "checkpoint": str(parity_checkpoint_dir), "device": "cpu"}
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.write(json.dumps({**request, "id": 2}).encode() + b"\n")  # queued behind it
        proc.stdin.flush()
        while True:  # wait until the job computes its first window
            event = json.loads(proc.stdout.readline())
            assert event["event"] == "progress", event
            if event.get("stage") == "generate" and event["done"] >= 1:
                break
        t0 = time.monotonic()
        proc.stdin.close()
        assert proc.wait(timeout=worker_mod.EXIT_GRACE_S + 10) == 0
        assert time.monotonic() - t0 < worker_mod.EXIT_GRACE_S + 10
        assert not (tmp_path / "never.npz").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the client and a silent worker ----

FAKE_WORKER = textwrap.dedent("""
    import json, os, sys
    print(json.dumps({"event": "hello", "protocol": 1, "devices": ["cpu"], "threads": 1}), flush=True)
    for line in sys.stdin:  # reads every request, answers only pings (when told to)
        req = json.loads(line)
        if req.get("cmd") == "ping" and os.environ.get("FAKE_PONG") == "1":
            print(json.dumps({"event": "pong", "id": req["id"], "loaded": None}), flush=True)
""")


def fake_client(tmp_path: Path, pong: bool) -> WorkerClient:
    package = tmp_path / "fake" / "flametalk"
    (package / "commands").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "commands" / "__init__.py").write_text("")
    (package / "commands" / "worker.py").write_text(FAKE_WORKER)
    client = WorkerClient(sys.executable, env={"PYTHONPATH": str(package.parent), "FAKE_PONG": str(int(pong))})
    client.ping_after = 0.3
    client.silence_timeout = 1.5
    return client


def test_the_client_gives_up_on_a_silent_worker_with_one_message(tmp_path):
    client = fake_client(tmp_path, pong=False)
    rid = client.submit("generate", audio="a.wav", out="x.npz")
    proc = client.proc
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as info:
        client.wait(rid, timeout=20)
    message = str(info.value)
    assert info.value.kind == "timeout" and time.monotonic() - t0 < 10
    assert message.startswith("the worker did not answer for 1.5 s (no progress and no reply to a ping)"), message
    assert "\n" not in message
    assert proc.wait(timeout=5) is not None and not client.alive  # it was stopped, the next request starts anew


def test_a_busy_worker_that_answers_pings_is_not_timed_out(tmp_path):
    client = fake_client(tmp_path, pong=True)
    rid = client.submit("generate", audio="a.wav", out="x.npz")
    with pytest.raises(WorkerError) as info:
        client.wait(rid, timeout=4)  # longer than silence_timeout: the pongs keep it alive
    assert info.value.kind == "timeout" and "did not finish within 4 s" in str(info.value)
    assert client.alive
    client.stop()
