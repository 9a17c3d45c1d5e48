"""SHA-256 of (large) files, cached in a sidecar `<file>.sha256` keyed by size and modification time.

Hashing the 1.96 GB release checkpoint takes seconds; the sidecar lets every later run reuse the result as long as
the file's size and mtime (nanoseconds) are unchanged. A sidecar that cannot be written (read-only folder) is
silently skipped. A sidecar is a hint, not proof: a file edited in place with its size and mtime put back keeps
it, so `assets status` reports such files as present (not re-verified) and only `assets verify` (sha256_file)
says verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HASH_BLOCK_BYTES = 1 << 20  # 1 MiB read size while hashing
SIDECAR_SUFFIX = ".sha256"

__all__ = ["HASH_BLOCK_BYTES", "SIDECAR_SUFFIX", "cached_sha256", "sha256_file", "sidecar_path", "write_sidecar"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (always reads the whole file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_BLOCK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def write_sidecar(path: str | os.PathLike[str], digest: str) -> None:
    """Record `digest` for the file's current size+mtime (best effort)."""
    p = Path(path)
    try:
        size, mtime_ns = _stamp(p)
        payload = {"sha256": digest, "size": size, "mtime_ns": mtime_ns, "file": p.name}
        sidecar_path(p).write_text(json.dumps(payload) + "\n", encoding="utf-8")
    except OSError:
        pass


def read_sidecar(path: str | os.PathLike[str]) -> str | None:
    """The cached digest if the sidecar matches the file's current size and mtime, else None."""
    p = Path(path)
    try:
        data = json.loads(sidecar_path(p).read_text(encoding="utf-8"))
        size, mtime_ns = _stamp(p)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("size") != size or data.get("mtime_ns") != mtime_ns:
        return None
    digest = data.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        return None
    return digest


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, from its sidecar when still valid; otherwise computed and the sidecar refreshed."""
    digest = read_sidecar(path)
    if digest is None:
        digest = sha256_file(path)
        write_sidecar(path, digest)
    return digest
