"""HTTP download of one file from the model hub (stdlib urllib only): resume from `<dest>.part` with an HTTP Range
request, SHA-256 while streaming, tqdm progress, and `os.replace` into place only once size and hash are right.

One download per file at a time: `<dest>.lock` is locked (flock; msvcrt on Windows) for the whole transfer, so two
processes sharing a cache never append to the same .part. The second one says so in one line, waits, and then
finds the file in place (nothing is downloaded twice).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from .._version import __version__
from ..errors import FlameTalkError
from .hashing import HASH_BLOCK_BYTES, write_sidecar

CHUNK_BYTES = 1 << 20  # 1 MiB per read from the network
TIMEOUT_S = 60.0  # seconds without progress before a connection attempt or read gives up
USER_AGENT = f"flametalk/{__version__} (+urllib)"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"

__all__ = ["CHUNK_BYTES", "LOCK_SUFFIX", "PART_SUFFIX", "TIMEOUT_S", "HubUnreachable", "fetch", "list_folder",
           "lock_path", "locked_by_another", "part_path"]


class HubUnreachable(Exception):
    """The server could not be reached at all (no network, DNS failure, refused connection, timeout)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + LOCK_SUFFIX)


def _try_lock(handle: IO[bytes]) -> bool:
    """Take the exclusive lock without waiting; False when another process (or handle) holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: IO[bytes]) -> None:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def download_lock(dest: Path, desc: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `<dest>.lock` exclusively; when another process holds it, say so in one line and wait for it."""
    try:
        handle = open(lock_path(dest), "a+b")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as err:
        raise FlameTalkError(f"cannot write in the cache folder {dest.parent} ({err.strerror or err}); "
                             "choose another with --cache or FLAMETALK_CACHE") from None
    try:
        if not _try_lock(handle):
            (log or (lambda msg: print(msg, file=sys.stderr)))(
                f"another process is downloading {desc} into this cache ({dest.parent}); waiting for it to finish")
            while not _try_lock(handle):
                time.sleep(0.2)
        try:
            yield
        finally:
            _unlock(handle)
    finally:
        handle.close()


def locked_by_another(dest: Path) -> bool:
    """True while some process holds `<dest>.lock` (a download of that file is in progress)."""
    path = lock_path(dest)
    if not path.is_file():
        return False
    try:
        with open(path, "a+b") as handle:
            if _try_lock(handle):
                _unlock(handle)
                return False
            return True
    except OSError:
        return False


def _reason(err: BaseException) -> str:
    inner = getattr(err, "reason", err)
    return " ".join(str(inner).split()) or type(inner).__name__


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"  # kept across redirects by urllib (it only drops content headers)
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError:
        raise
    except (URLError, OSError) as err:  # socket.timeout / ConnectionError are OSErrors
        raise HubUnreachable(url, _reason(err)) from err


def list_folder(base_url: str, repo: str, revision: str, folder: str, timeout: float = TIMEOUT_S) -> list[str] | None:
    """File paths in a hub repository folder (hub tree API), or None if the listing is unavailable."""
    url = f"{base_url.rstrip('/')}/api/models/{repo}/tree/{quote(revision, safe='')}/{quote(folder)}"
    try:
        with _open(url, 0, timeout) as resp:
            data = json.loads(resp.read(4 << 20).decode("utf-8"))
    except (HTTPError, HubUnreachable, ValueError, OSError):
        return None
    if not isinstance(data, list):
        return None
    files = [e for e in data if isinstance(e, dict) and e.get("type") == "file"]
    return [e["path"] for e in files if isinstance(e.get("path"), str)]


def _hash_existing(part: Path, h: hashlib._Hash) -> None:
    with open(part, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK_BYTES), b""):
            h.update(block)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def fetch(
    url: str,
    dest: Path,
    size: int | None,
    sha256: str | None,
    *,
    desc: str,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> str:
    """Download `url` to `dest` (resuming `dest.part`), check size and sha256 (when given); return the sha256.

    A hash mismatch deletes the .part file and raises FlameTalkError. An interrupted transfer keeps the .part for
    the next call to resume. HubUnreachable is raised when the server cannot be reached at all. Holds
    `<dest>.lock` throughout (another process downloading the same file is waited for, then its file is used).
    """
    from .hashing import cached_sha256

    dest.parent.mkdir(parents=True, exist_ok=True)
    with download_lock(dest, desc, log):
        if dest.is_file() and (size is None or dest.stat().st_size == size):  # put there while we waited
            digest = cached_sha256(dest)
            if sha256 is None or digest == sha256.lower():
                return digest
        return _fetch_locked(url, dest, size, sha256, desc=desc, progress=progress, timeout=timeout)


def _fetch_locked(url: str, dest: Path, size: int | None, sha256: str | None, *, desc: str, progress: bool,
                  timeout: float) -> str:
    from tqdm import tqdm

    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # longer than the real file: cannot be a prefix of it
        part.unlink()
        offset = 0
    h = hashlib.sha256()

    if size is None or offset < size:
        try:
            resp = _open(url, offset, timeout)
        except HTTPError as err:
            if err.code == 416 and offset > 0:  # range starts at the end: the .part already holds everything
                resp = None
            else:
                raise FlameTalkError(
                    f"download of {desc} failed: HTTP {err.code} {err.reason} for {url}; check the URL or try later"
                ) from err
        if resp is not None:
            with resp:
                status = resp.status
                if offset > 0 and (status != 206 or _content_range_start(resp.headers.get("Content-Range")) != offset):
                    offset = 0  # the server sent the whole file: start over
                length = resp.headers.get("Content-Length")
                sent = offset + int(length) if length and length.isdigit() else None  # what the server promised
                total = size if size is not None else sent
                if offset > 0:
                    _hash_existing(part, h)
                got = offset
                with (
                    open(part, "ab" if offset > 0 else "wb") as fh,
                    tqdm(
                        total=total, initial=offset, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=not progress, leave=False,
                    ) as bar,
                ):
                    try:
                        while True:
                            block = resp.read(CHUNK_BYTES)
                            if not block:
                                break
                            fh.write(block)
                            h.update(block)
                            got += len(block)
                            bar.update(len(block))
                    except (OSError, http.client.HTTPException) as err:  # incl. TimeoutError
                        fh.flush()
                        raise FlameTalkError(
                            f"download of {desc} was interrupted after {got:,} bytes ({_reason(err)}); "
                            "run the same command again to resume"
                        ) from err
                if sent is not None and got < sent:  # connection closed early without an error
                    raise FlameTalkError(
                        f"download of {desc} was interrupted after {got:,} of {sent:,} bytes; "
                        "run the same command again to resume"
                    )
        else:
            _hash_existing(part, h)
    else:
        _hash_existing(part, h)

    have = part.stat().st_size
    if size is not None and have != size:
        if have > size:
            part.unlink()
        raise FlameTalkError(
            f"download of {desc} is incomplete ({have:,} of {size:,} bytes); run the same command again to resume"
        )
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise FlameTalkError(
            f"download of {desc} is corrupt: sha256 {digest} but expected {sha256}; "
            "the partial file was deleted, run the command again"
        )
    part.replace(dest)
    write_sidecar(dest, digest)
    return digest
