"""`python -m flametalk serve`: the WebSocket server with the websockets library's own client, in-process: every frame
once, in order, equal to one-shot generation; one clear error for clients that send too fast or send garbage; the
README's client example runs as printed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
from fixtures.common import REPO, run_flametalk
from flametalk.commands.serve import FRAME_HEADER, ServerLimits, serve
from flametalk.decode.pipeline import generate_motion
from flametalk.decode.postprocess import postprocess_motion
from flametalk.io.audio import load_audio, load_audio_array
from flametalk.io.checkpoint import load_checkpoint

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402


@pytest.fixture(scope="module")
def model(parity_checkpoint_dir):
    return load_checkpoint(parity_checkpoint_dir)


@contextlib.contextmanager
def running_server(model, limits: ServerLimits) -> Iterator[str]:
    """A server on a free port, its own event loop in a thread; yields its ws:// URL."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future = loop.create_future()
    stop: asyncio.Future = loop.create_future()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(serve(model, "127.0.0.1", 0, limits, started=started, stop=stop),), daemon=True)
    thread.start()
    host, port = asyncio.run_coroutine_threadsafe(_wait(started), loop).result(30)
    try:
        yield f"ws://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(30)
        loop.close()


async def _wait(fut: asyncio.Future):
    return await fut


async def send_take(url: str, pcm: np.ndarray, rate: int, chunk: int, fmt: str = "json", pace: float = 0.0,
                    postprocess: bool = True) -> tuple[list[tuple[int, np.ndarray]], dict, dict]:
    """Open a take, send PCM in chunks (sleeping `pace` s between them), finish; (start, frames) per message,
    the ready message, the last message (done or error)."""
    got: list[tuple[int, np.ndarray]] = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "open", "rate": rate, "format": fmt, "postprocess": postprocess}))
        ready = json.loads(await ws.recv())

        async def receive() -> dict:
            async for message in ws:
                if isinstance(message, bytes):
                    start, count = FRAME_HEADER.unpack_from(message)
                    got.append((start, np.frombuffer(message[FRAME_HEADER.size :], "<f4").reshape(count, 106)))
                    continue
                msg = json.loads(message)
                if msg["type"] == "frames":
                    got.append((msg["start"], np.array(msg["motion"], dtype=np.float32)))
                else:
                    return msg
            return {"type": "closed"}

        answers = asyncio.create_task(receive())
        try:
            for i in range(0, pcm.size, chunk):
                await ws.send(pcm[i : i + chunk].tobytes())
                if pace:
                    await asyncio.sleep(pace)
            await ws.send(json.dumps({"type": "finish"}))
        except websockets.exceptions.ConnectionClosed:
            pass
        last = await answers
    return got, ready, last


def int16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 32767 / 32768) * 32768).astype(np.int16)


def test_30_s_of_speech_in_20ms_chunks_arrive_once_in_order_equal_to_one_shot(model, parity_vector):
    speech = parity_vector["inputs"]["audio_16k"][0].float().numpy()
    pcm = int16(np.tile(speech, 4)[: 30 * 16_000])
    expected = postprocess_motion(generate_motion(model, load_audio_array(pcm, 16_000)))
    with running_server(model, ServerLimits(speed=0)) as url:
        for fmt in ("binary", "json"):
            got, ready, last = asyncio.run(send_take(url, pcm, 16_000, chunk=320, fmt=fmt))
            assert ready["type"] == "ready" and ready["delay_frames"] == 4 and ready["fps"] == 25
            assert last == {"type": "done", "frames": 750, "audio_s": 30.0}
            starts = [s for s, _ in got]
            assert starts == sorted(starts) and starts[0] == 0
            assert all(s + f.shape[0] == nxt for (s, f), nxt in zip(got, [*starts[1:], 750]))
            np.testing.assert_array_equal(np.concatenate([f for _, f in got]), expected)


def test_a_client_sending_faster_than_real_time_gets_one_clear_error(model, parity_vector):
    pcm = int16(parity_vector["inputs"]["audio_16k"][0].float().numpy())
    with running_server(model, ServerLimits(speed=1.0, burst_s=2.0)) as url:
        _, _, last = asyncio.run(send_take(url, pcm, 16_000, chunk=320))
        assert last["type"] == "error" and "faster than real time" in last["message"], last
        assert "--speed" in last["message"]
        # the server goes on: a well-behaved take right after
        _, _, last = asyncio.run(send_take(url, pcm[:8000], 16_000, chunk=320, pace=0.02))
        assert last["type"] == "done" and last["frames"] == 13


@pytest.mark.parametrize("first, then, message", [
    (b"\x00\x01", None, "before any PCM"),
    ("not json", None, "one JSON object"),
    ('{"type": "open", "rate": 5}', None, "'rate' must be a sample rate"),
    ('{"type": "open", "format": "xml"}', None, "'format' must be"),
    ('{"type": "open", "style": "../etc/passwd"}', None, "'style' must be null or a style name"),
    ('{"type": "open"}', b"\x00\x01\x02", "whole 16-bit samples, got 3 bytes"),
    ('{"type": "open"}', '{"type": "open"}', "unexpected 'open' message during a take"),
])
def test_malformed_messages_get_one_error_and_the_connection_closes(model, first, then, message):
    async def talk(url: str) -> list:
        seen = []
        async with connect(url) as ws:
            await ws.send(first)
            if then is not None:
                seen.append(json.loads(await ws.recv()))  # ready
                await ws.send(then)
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for m in ws:
                    seen.append(json.loads(m))
            return [*seen, ws.close_code]

    with running_server(model, ServerLimits()) as url:
        seen = asyncio.run(talk(url))
    errors = [m for m in seen[:-1] if m["type"] == "error"]
    assert len(errors) == 1 and message in errors[0]["message"], seen
    assert seen[-1] == 1008


def test_the_readme_client_example_runs_against_the_server(model, parity_vector, tmp_path, capsys):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- client example: run by tests/flametalk/commands/test_serve.py -->\n```python\n(.*?)```",
                     text, re.S).group(1)
    assert 20 <= len(code.strip().splitlines()) <= 40
    speech = parity_vector["inputs"]["audio_16k"][0].float().numpy()[: 5 * 16_000]
    wav = tmp_path / "line.wav"
    sf.write(wav, load_audio_array(speech, 16_000), 16_000, subtype="PCM_16")
    wav48 = tmp_path / "line48.wav"
    pcm48 = sf.read(wav, dtype="int16")[0]
    sf.write(wav48, np.repeat(pcm48, 3), 48_000, subtype="PCM_16")  # a 48-kHz file: resampled as it streams
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README client example", "exec"), namespace)
    with running_server(model, ServerLimits()) as url:
        frames = asyncio.run(namespace["main"](str(wav48), url))
    expected = postprocess_motion(generate_motion(model, load_audio(wav48)))
    np.testing.assert_array_equal(frames, expected)
    assert '"type": "ready"' in capsys.readouterr().out


def test_serve_without_websockets_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "websockets"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = run_flametalk("serve", "--port", "0", env={"PYTHONPATH": path})
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'flametalk[stream]'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
