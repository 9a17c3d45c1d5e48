"""Client of the `flametalk.commands.worker` process (stdlib only: Blender's Python never imports torch).

The worker is started once with the Python chosen in the preferences and kept warm between takes. Events are read
on a background thread into a queue; Blender code polls `poll()` from a timer/modal handler (UI) or calls `wait()`
(batch and tests). Every failure becomes a WorkerError with one readable message.

A worker that goes silent is noticed: while a request is pending and nothing has come from the worker for
PING_AFTER_S, the client sends a ping (answered by the worker's request reader even while a job computes); if neither
the pong nor anything else arrives within SILENCE_TIMEOUT_S of that ping, the worker is stopped and the request fails
with one message (kind "timeout"); the next request starts a new worker.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..flame.contract import PROTOCOL_VERSION

STARTUP_TIMEOUT_S = 120.0  # importing torch on a cold disk can take a while
STDERR_LINES_KEPT = 40
PING_AFTER_S = 5.0  # quiet this long while a request is pending: ask the worker whether it is still there
SILENCE_TIMEOUT_S = 60.0  # no answer at all this long after that ping: the worker is hung; stop it


class WorkerError(Exception):
    """A failure the user should read: bad input, missing torch, a crashed worker, a cancel."""

    def __init__(self, message: str, kind: str = "internal", event: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.event = event or {}  # the worker's error event (a cancelled progressive job's "kept", ...)


class WorkerClient:
    def __init__(self, python: str, env: dict[str, str] | None = None):
        self.python = python
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.hello: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._stderr_thread: threading.Thread | None = None
        # request id -> (the worker process that got it, its events not yet polled)
        self._pending: dict[int, tuple[subprocess.Popen[str] | None, list[dict[str, Any]]]] = {}
        self.ping_after = PING_AFTER_S
        self.silence_timeout = SILENCE_TIMEOUT_S
        self.last_heard = time.monotonic()  # when the worker last sent a line (any event)
        self._ping_at: float | None = None  # when the unanswered ping went out

    # ---- process ----
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        if self.alive and self.hello:
            return self.hello
        if not self.python or not Path(self.python).is_file():
            raise WorkerError(f"worker Python not found: {self.python!r}; set it in the FlameTalk preferences",
                              "setup")
        env = dict(os.environ, **(self.env or {}))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONHOME", None)  # Blender's own Python home must not leak into another interpreter
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "flametalk.commands.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1, env=env, creationflags=flags,
            )
        except OSError as err:
            raise WorkerError(f"cannot start the worker with {self.python} ({err})", "setup") from err
        self.last_heard, self._ping_at = time.monotonic(), None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                if not self.alive:
                    raise self._died("while starting") from None
                continue
            if event.get("event") == "hello":
                if event.get("protocol") != PROTOCOL_VERSION:
                    self.stop()
                    raise WorkerError(
                        f"the worker speaks protocol {event.get('protocol')}, this add-on {PROTOCOL_VERSION}; "
                        "update the runtime (Preferences > FlameTalk > Set up runtime)", "setup")
                self.hello = event
                return event
            if event.get("event") == "fatal":
                self.stop()
                raise WorkerError(str(event.get("message")), "setup")
        self.stop()
        raise WorkerError(f"the worker did not start within {timeout:.0f} s ({self._last_stderr()})", "setup")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc, self.hello = self.proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.stdin.write(json.dumps({"id": 0, "cmd": "shutdown"}) + "\n")
                proc.stdin.flush()
                proc.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=timeout)

    def _read_stdout(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            if proc is self.proc:
                self.last_heard = time.monotonic()
            try:
                event = json.loads(line)
            except ValueError:
                self.stderr_tail.append(line.rstrip())
                continue
            if isinstance(event, dict):
                self.events.put(event)

    def _read_stderr(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    def _last_stderr(self) -> str:
        lines = [ln for ln in self.stderr_tail if ln.strip()]
        return lines[-1] if lines else "no output"

    def _died(self, when: str) -> WorkerError:
        code = self.proc.poll() if self.proc else None
        if code is not None and self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2.0)  # its last words (a traceback) may still be in the pipe
        self.proc, self.hello = None, None
        last = self._last_stderr()
        if "No module named" in last and ("flametalk" in last or "'torch'" in last):
            return WorkerError(f"{self.python} cannot run the worker ({last}); set up the runtime in the FlameTalk "
                               "preferences or pick a Python where flametalk and torch are installed", "setup")
        return WorkerError(f"the worker stopped unexpectedly {when} (exit code {code}): {last}", "crash")

    # ---- requests ----
    def submit(self, cmd: str, **fields: Any) -> int:
        self.start()
        rid = next(self._ids)
        self._pending[rid] = (self.proc, [])
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"id": rid, "cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as err:
            raise self._died("while sending a request") from err
        return rid

    def cancel(self, rid: int) -> None:
        self._notify("cancel", target=rid)

    def stop_live(self, rid: int) -> None:
        """End a live request's capture: the worker sends the rest of its frames and its result."""
        self._notify("stop", target=rid)

    def features(self) -> list[str]:
        """What the running worker's hello offers beyond the base protocol ("progressive", "live", ...)."""
        features = (self.hello or {}).get("features") or []
        return [str(f) for f in features] if isinstance(features, list) else []

    def spare_cores(self, cores: int) -> None:
        """Tell a running worker how many CPU threads to leave to this process from now on (it applies it between
        4-s windows). No answer; nothing happens without a worker."""
        self._notify("spare_cores", cores=cores)

    def _notify(self, cmd: str, **fields: Any) -> None:
        """A command nobody waits for: sent if a worker runs, silently dropped otherwise."""
        if self.alive:
            try:
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"id": next(self._ids), "cmd": cmd, **fields}) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass

    def _route(self) -> None:
        """Move queued events into their request's inbox; several requests may be in flight (a batch submits the
        next line while Blender writes the current one). Answers to forgotten requests are dropped."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event.get("event") == "fatal":  # the worker gave up: every request hears it
                for _, inbox in self._pending.values():
                    inbox.append(event)
            elif event.get("id") in self._pending:
                self._pending[event["id"]][1].append(event)

    def poll(self, rid: int,
             on_event: Callable[[dict[str, Any]], Any] | None = None) -> tuple[str, dict[str, Any] | None]:
        """Non-blocking. ('progress', event) / ('result', event) / ('running', None); raises WorkerError.
        Several events may have come since the last poll: the latest is returned, and `on_event` (if given) sees
        every one of them, in order, before the result or error (progressive "frames" events must not be lost)."""
        self._route()
        if rid not in self._pending:
            raise WorkerError(f"request {rid} is not pending (finished or forgotten)", "internal")
        sent_to, inbox = self._pending[rid]
        latest: dict[str, Any] | None = None
        while inbox:
            event = inbox.pop(0)
            kind = event.get("event")
            if on_event is not None and kind not in ("result", "error", "fatal"):
                on_event(event)
            if kind == "result":
                self.forget(rid)
                return "result", event
            if kind in ("error", "fatal"):
                self.forget(rid)
                raise WorkerError(str(event.get("message")), str(event.get("kind", "internal")), event)
            latest = event
        if sent_to is not self.proc:  # its worker died (and maybe another started since)
            self.forget(rid)
            raise WorkerError(f"the worker stopped unexpectedly during the job: {self._last_stderr()}", "crash")
        if not self.alive and self.events.empty():
            self.forget(rid)
            raise self._died("during the job")
        if latest is None:
            self._check_silence(rid)
        return ("progress", latest) if latest else ("running", None)

    def _check_silence(self, rid: int) -> None:
        """Ping a quiet worker; stop one that answered nothing for silence_timeout after the ping."""
        now = time.monotonic()
        if now - self.last_heard < self.ping_after:
            return
        if self._ping_at is None or self._ping_at < self.last_heard:  # no ping outstanding since we last heard
            self._ping_at = now
            self._notify("ping")
            return
        if now - self._ping_at < self.silence_timeout:
            return
        self.forget(rid)
        proc, self.proc, self.hello = self.proc, None, None
        if proc is not None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        raise WorkerError(
            f"the worker did not answer for {self.silence_timeout:g} s (no progress and no reply to a ping); it was "
            f"stopped and the next request starts a new one (its last output: {self._last_stderr()})", "timeout")

    def forget(self, rid: int) -> None:
        """Stop keeping events of a request nobody will poll again (finished, failed or abandoned)."""
        self._pending.pop(rid, None)

    def wait(self, rid: int, on_progress: Callable[[dict[str, Any]], Any] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state, event = self.poll(rid)
            if state == "result":
                assert event is not None
                return event
            if state == "progress" and on_progress and event and on_progress(event) is False:
                self.cancel(rid)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(rid)
                self.forget(rid)
                raise WorkerError(f"the worker did not finish within {timeout:.0f} s", "timeout")
            time.sleep(0.02)


_CLIENTS: dict[tuple[str, tuple[tuple[str, str], ...]], WorkerClient] = {}


def get_client(python: str, env: dict[str, str] | None = None) -> WorkerClient:
    """The warm worker for this Python (one per interpreter path and extra environment)."""
    key = (python, tuple(sorted((env or {}).items())))
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = WorkerClient(python, env)
    return client


def stop_all() -> None:
    for client in list(_CLIENTS.values()):
        client.stop()
    _CLIENTS.clear()
