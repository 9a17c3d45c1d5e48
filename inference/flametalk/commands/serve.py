"""`python -m flametalk serve [--host 127.0.0.1] [--port 8765]`: streaming generation over a WebSocket.

For other programs (game engines, web pages, realtime demos): PCM in, motion frames out, as they are final
(decode/streaming.py: bit for bit what `generate` gives for the same audio). The `websockets` library does the
networking (`pip install flametalk[stream]`). One model is loaded at start (--checkpoint, --device, --mode); each
connection is one take at a time:

  -> {"type": "open", "rate": 48000, "style": null | "natural_0", "postprocess": true, "format": "json" | "binary"}
  <- {"type": "ready", "protocol": 1, "fps": 25, "channels": 106, "window_frames": 100, "delay_frames": 4, ...}
  -> binary messages: 16-bit signed little-endian mono PCM at "rate" (any length up to MAX_MESSAGE_BYTES)
  <- {"type": "frames", "start": 0, "stop": 96, "motion": [[106 floats], ...], "audio_s": 4.02, "t": 4.31}
     or, with "format": "binary", a binary message: uint32 start, uint32 count (little-endian), then count x 106
     float32 little-endian (row-major)
  -> {"type": "finish"}        <- the last frames, then {"type": "done", "frames": N, "audio_s": ...}
  (after "done" the client may "open" another take on the same connection, or close it)

Frames arrive a 4-s window at a time (the model decodes 4-s windows; with "postprocess" each window's last 4 frames
wait for the next window or finish). "audio_s": seconds of audio received when the frames were computed; "t":
seconds since "open".

Limits: at most --max-clients connections (others get an error and are closed), a message at most MAX_MESSAGE_BYTES
(1 MiB; the library closes the connection with code 1009 beyond), PCM at most --speed times real time plus
BURST_S (2 s) ahead of the wall clock since the take's first audio (default speed 1: a live source; raise it to
send recorded files faster), and at most QUEUE_CHUNKS messages waiting for the model (then the server stops
reading the connection until the model catches up: TCP pushes back on the client). A client that breaks a rule
gets one {"type": "error", "message": "..."} and the connection is closed (code 1008); the server goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FlameTalkError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_MESSAGE_BYTES = 1 << 20  # one WebSocket message (32 s of 16-bit PCM at 16 kHz)
BURST_S = 2.0  # seconds of audio a client may be ahead of real time (x speed)
QUEUE_CHUNKS = 256  # PCM messages waiting for the model per connection (5 s of 20-ms chunks)
MAX_CLIENTS = 4
POLICY_VIOLATION = 1008
FRAME_HEADER = struct.Struct("<II")  # binary frames: start, count

__all__ = ["BURST_S", "DEFAULT_PORT", "FRAME_HEADER", "ServerLimits", "add_arguments", "command", "serve"]


@dataclass
class ServerLimits:
    speed: float = 1.0  # audio seconds per wall second a client may send (0: no limit)
    burst_s: float = BURST_S
    max_clients: int = MAX_CLIENTS
    queue_chunks: int = QUEUE_CHUNKS


class ClientError(Exception):
    """A client broke the protocol: it gets this message and the connection closes."""


def import_websockets() -> Any:
    try:
        import websockets.asyncio.server as ws_server
    except ImportError as err:
        raise FlameTalkError("the WebSocket server needs the `websockets` package: "
                             "`pip install 'flametalk[stream]'` (or `pip install websockets`)") from err
    return ws_server


def _open_request(text: str) -> dict[str, Any]:
    from ..io.audio import MAX_RATE, MIN_RATE

    msg = _json(text)
    if msg.get("type") != "open":
        raise ClientError(f"expected {{\"type\": \"open\", \"rate\": ...}} first, got type {msg.get('type')!r}")
    rate = msg.get("rate", 16_000)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not MIN_RATE <= rate <= MAX_RATE:
        raise ClientError(f"'rate' must be a sample rate in Hz ({MIN_RATE}-{MAX_RATE}), got {rate!r}")
    style = msg.get("style")
    if style is not None and (not isinstance(style, str) or not style.replace("_", "").isalnum()):
        raise ClientError(f"'style' must be null or a style name like natural_0, got {style!r}")
    fmt = msg.get("format", "json")
    if fmt not in ("json", "binary"):
        raise ClientError(f"'format' must be \"json\" or \"binary\", got {fmt!r}")
    postprocess = msg.get("postprocess", True)
    if not isinstance(postprocess, bool):
        raise ClientError(f"'postprocess' must be true or false, got {postprocess!r}")
    return {"rate": rate, "style": style, "format": fmt, "postprocess": postprocess}


def _json(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except ValueError:
        raise ClientError("a text message must be one JSON object ({\"type\": \"open\" | \"finish\", ...})") from None
    if not isinstance(msg, dict):
        raise ClientError("a text message must be one JSON object ({\"type\": \"open\" | \"finish\", ...})")
    return msg


class Session:
    """One connection: its takes, one at a time."""

    def __init__(self, ws: Any, model: Any, limits: ServerLimits, compute_lock: threading.Lock):
        self.ws, self.model, self.limits, self.compute_lock = ws, model, limits, compute_lock

    async def send_frames(self, frames: np.ndarray, start: int, fmt: str, audio_s: float, t0: float) -> None:
        if fmt == "binary":
            body = np.ascontiguousarray(frames, dtype="<f4").tobytes()
            await self.ws.send(FRAME_HEADER.pack(start, frames.shape[0]) + body)
        else:
            await self.ws.send(json.dumps({"type": "frames", "start": start, "stop": start + frames.shape[0],
                                           "motion": frames.tolist(), "audio_s": round(audio_s, 3),
                                           "t": round(time.perf_counter() - t0, 3)}))

    def _compute(self, fn: Any, *args: Any) -> np.ndarray:
        with self.compute_lock:  # one take computes at a time: the model and its CPU threads are shared
            return fn(*args)

    async def take(self, opening: dict[str, Any]) -> bool:
        """Run one take; True when the client may open another, False when the connection closed."""
        from ..decode.streaming import Streamer
        from ..flame.contract import MOTION_FPS, PROTOCOL_VERSION, SAMPLE_RATE

        try:
            streamer = await asyncio.to_thread(self._compute, functools.partial(
                Streamer, self.model, style=opening["style"], rate=opening["rate"],
                postprocess=opening["postprocess"]))
        except FlameTalkError as err:
            raise ClientError(str(err)) from None
        t0 = time.perf_counter()
        await self.ws.send(json.dumps({
            "type": "ready", "protocol": PROTOCOL_VERSION, "fps": MOTION_FPS, "channels": 106,
            "sample_rate": SAMPLE_RATE, "window_frames": streamer.window_frames,
            "delay_frames": streamer.delay_frames, "format": opening["format"],
            "max_message_bytes": MAX_MESSAGE_BYTES, "speed": self.limits.speed, "burst_s": self.limits.burst_s}))
        chunks: asyncio.Queue[np.ndarray | None] = asyncio.Queue(self.limits.queue_chunks)
        computed = asyncio.create_task(self._run_model(streamer, chunks, opening["format"], t0))
        first_audio: float | None = None
        received_s = 0.0
        try:
            while True:
                msg = await self.ws.recv()
                if computed.done():  # the model failed: its error ends the take
                    break
                if isinstance(msg, str):
                    kind = _json(msg).get("type")
                    if kind == "finish":
                        break
                    raise ClientError(f"unexpected {kind!r} message during a take; send PCM or "
                                      '{"type": "finish"}')
                if len(msg) % 2:
                    raise ClientError(f"a binary message must be whole 16-bit samples, got {len(msg)} bytes")
                now = time.perf_counter()
                first_audio = now if first_audio is None else first_audio
                received_s += len(msg) / 2 / opening["rate"]
                allowed = (now - first_audio) * self.limits.speed + self.limits.burst_s
                if self.limits.speed > 0 and received_s > allowed:
                    raise ClientError(
                        f"audio is arriving faster than real time: {received_s:.2f} s of audio in "
                        f"{now - first_audio:.2f} s (this server takes at most {self.limits.speed:g}x real time "
                        f"plus {self.limits.burst_s:g} s); send it as it is recorded, or start the server with "
                        "--speed N for recorded files")
                await chunks.put(np.frombuffer(msg, dtype="<i2"))  # full: stop reading until the model catches up
        except BaseException:  # a broken rule or a closed connection: the take's remaining work is dropped
            computed.cancel()
            raise
        if not computed.done():
            await chunks.put(None)
        try:
            total = await computed
        except FlameTalkError as err:
            raise ClientError(str(err)) from None
        await self.ws.send(json.dumps({"type": "done", "frames": total, "audio_s": round(received_s, 3)}))
        return True

    async def _run_model(self, streamer: Any, chunks: asyncio.Queue, fmt: str, t0: float) -> int:
        """Feed the queued PCM to the streamer (everything queued at once), send what comes out; returns frames."""
        sent, audio_s, done = 0, 0.0, False
        while not done:
            batch = [await chunks.get()]
            while not chunks.empty():
                batch.append(chunks.get_nowait())
            done = batch[-1] is None
            pcm = [c for c in batch if c is not None]
            audio = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
            audio_s += audio.size / streamer.rate
            frames = await asyncio.to_thread(self._compute, streamer.feed, audio)
            if done:
                rest = await asyncio.to_thread(self._compute, streamer.finish)
                frames = np.concatenate([frames, rest])
            if frames.shape[0]:
                await self.send_frames(frames, sent, fmt, audio_s, t0)
                sent += frames.shape[0]
        return sent


async def serve(model: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, limits: ServerLimits | None = None,
                started: asyncio.Future | None = None, stop: asyncio.Future | None = None) -> None:
    """Serve until `stop` is done (forever without one). `started` gets the (host, port) bound (port 0: any)."""
    ws_server = import_websockets()
    from websockets.exceptions import ConnectionClosed

    limits = limits or ServerLimits()
    lock = threading.Lock()
    clients = 0

    async def handler(ws: Any) -> None:
        nonlocal clients
        if clients >= limits.max_clients:
            await ws.send(json.dumps({"type": "error", "message": f"the server is busy ({limits.max_clients} "
                                                                   "clients); try again later"}))
            await ws.close(POLICY_VIOLATION, "busy")
            return
        clients += 1
        session = Session(ws, model, limits, lock)
        try:
            while True:
                text = await ws.recv()
                if not isinstance(text, str):
                    raise ClientError("send {\"type\": \"open\", \"rate\": ...} before any PCM")
                await session.take(_open_request(text))
        except ClientError as err:
            try:
                await ws.send(json.dumps({"type": "error", "message": str(err)}))
                await ws.close(POLICY_VIOLATION, str(err)[:120])
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            pass
        finally:
            clients -= 1

    async with ws_server.serve(handler, host, port, max_size=MAX_MESSAGE_BYTES, max_queue=16) as server:
        if started is not None:
            started.set_result(server.sockets[0].getsockname()[:2])
        await (stop if stop is not None else asyncio.get_running_loop().create_future())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                                                        "machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the asset cache)")
    p.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N, mps or cpu")
    p.add_argument("--mode", choices=("exact", "fast"), default="exact", help="numeric mode (default exact)")
    p.add_argument("--speed", type=float, default=1.0,
                   help=f"audio seconds a client may send per second, plus {BURST_S:g} s ahead (default 1: real "
                        "time; 0: no limit)")
    p.add_argument("--max-clients", type=int, default=MAX_CLIENTS, help=f"connections at once (default {MAX_CLIENTS})")


def command(args: argparse.Namespace) -> int:
    import_websockets()  # the missing-library message before the model loads
    from ..decode.pipeline import load_model, prepare_for_inference

    if args.speed < 0 or args.max_clients < 1:
        raise FlameTalkError("--speed must be >= 0 and --max-clients >= 1")
    model = prepare_for_inference(load_model(args.checkpoint, device=args.device, mode=args.mode))
    limits = ServerLimits(speed=args.speed, max_clients=args.max_clients)

    async def main() -> None:
        started: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(model, args.host, args.port, limits, started=started))
        host, port = await started
        print(f"flametalk serve: ws://{host}:{port} ({args.mode} mode, {model._plan.summary()}); Ctrl+C stops",
              file=sys.stderr, flush=True)
        await task

    asyncio.run(main())
    return 0
