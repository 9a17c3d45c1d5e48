"""A farm manifest: one row per dialogue line, CSV (header row) or JSON Lines. Standard library only: no bpy, no Ray.

Columns: `audio` (path) and `name` (output stem: OUT/<name>.blend and its exports) are required; optional per-line
overrides: `style` (none, a release clip name or a style file), `flame` (FLAME file), `mode` (exact|fast), `fps`
(scene frame rate), `glb`, `fbx` (true/false), `shape` (identity coefficients file), `start_frame`. `character` is
recognised but not supported yet (retargeting onto a character is not part of the farm). Relative paths are relative
to the manifest's folder. A wrong row is not fatal: it becomes a `Row` with `error` set (one line with its row
number, reported as `failed`) and the other rows go on. What makes the whole manifest unreadable (missing, too big,
not UTF-8, no `audio`/`name` column, an unknown CSV column) is a ManifestError.

`line_key` is the resume key of a line: one sha256 over its options and the bytes of every input file (audio,
FLAME file, checkpoint weights + config, style and shape files); a rerun skips a line only when it is unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # a manifest of 100,000 lines is ~10 MB
MAX_ROWS = 1_000_000
MAX_FIELD_CHARS = 4096  # one cell: a path or a value, never more
PATH_COLUMNS = ("audio", "style", "flame", "shape")
BOOL_COLUMNS = ("glb", "fbx")
KNOWN = ("audio", "name", "style", "flame", "mode", "fps", "glb", "fbx", "shape", "start_frame", "character")
MODES = ("exact", "fast")
STYLE_FILE_SUFFIXES = (".pt", ".pth", ".npy", ".npz")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TRUE, _FALSE = {"1", "true", "yes", "y", "on"}, {"", "0", "false", "no", "n", "off"}


class ManifestError(Exception):
    """The manifest as a whole cannot be read; one line."""


@dataclass
class Row:
    """One dialogue line: `number` is its 1-based row in the manifest (the CSV header not counted; in JSON Lines
    the line number, blank lines counted)."""

    number: int
    name: str
    audio: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _bool(value: Any, column: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{column} must be true or false, got {value!r}")


def _text(raw: dict[str, Any], column: str) -> str:
    value = raw.get(column)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"{column} must be a single value")
    text = str(value).strip()
    if len(text) > MAX_FIELD_CHARS:
        raise ValueError(f"{column} is longer than {MAX_FIELD_CHARS} characters")
    return text


def _path(value: str, base: Path) -> str:
    return os.path.normpath(base / Path(value).expanduser())  # an absolute value stays as it is


def is_style_file(spec: str) -> bool:
    """A style given as a file (path or file name) rather than a release clip name."""
    return "/" in spec or os.path.sep in spec or Path(spec).suffix.lower() in STYLE_FILE_SUFFIXES


def _row(number: int, raw: dict[str, Any], base: Path) -> Row:
    name = str(raw.get("name") or "").strip()
    row = Row(number, name or f"row{number}")
    try:
        unknown = sorted(str(k) for k in raw if k not in KNOWN)
        if unknown:
            raise ValueError(f"unknown column {unknown[0]!r} (known: {', '.join(KNOWN)})")
        name = _text(raw, "name")
        if not name:
            raise ValueError("no name")
        if not _NAME.match(name):
            raise ValueError(f"name {name!r} is not a plain file stem (letters, digits, . _ -; no folders)")
        if _text(raw, "character"):
            raise ValueError("character: not supported yet (the farm keys the FLAME head; give `flame`)")
        audio = _text(raw, "audio")
        if not audio:
            raise ValueError("no audio path")
        row.audio = _path(audio, base)
        for column in ("flame", "shape"):
            value = _text(raw, column)
            if value:
                row.overrides[column] = _path(value, base)
        style = _text(raw, "style")
        if style:
            row.overrides["style"] = _path(style, base) if is_style_file(style) else style
        mode = _text(raw, "mode")
        if mode:
            if mode not in MODES:
                raise ValueError(f"mode must be exact or fast, got {mode!r}")
            row.overrides["mode"] = mode
        fps = _text(raw, "fps")
        if fps:
            try:
                fps_value = float(fps)
            except ValueError:
                raise ValueError(f"fps must be a number, got {fps!r}") from None
            if not math.isfinite(fps_value) or not 1.0 <= fps_value <= 240.0:
                raise ValueError(f"fps must be between 1 and 240, got {fps}")
            row.overrides["fps"] = fps_value
        start = _text(raw, "start_frame")
        if start:
            try:
                row.overrides["start_frame"] = int(start)
            except ValueError:
                raise ValueError(f"start_frame must be a whole number, got {start!r}") from None
        for column in BOOL_COLUMNS:
            if raw.get(column) not in (None, ""):
                row.overrides[column] = _bool(raw[column], column)
    except ValueError as err:
        row.error = f"manifest row {number} ({row.name}): {err}"
    return row


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in reader.fieldnames or []]
    if "audio" not in fields or "name" not in fields:
        raise ManifestError("the CSV manifest needs a header row with at least the columns audio and name")
    unknown = [f for f in fields if f not in KNOWN]
    if unknown:
        raise ManifestError(f"unknown column {unknown[0]!r} in the manifest's header (known: {', '.join(KNOWN)})")
    reader.fieldnames = fields
    for number, raw in enumerate(reader, start=1):
        extra = raw.pop(None, None)
        if extra:
            raw["__bad__"] = f"more values than columns ({len(fields) + len(extra)} for {len(fields)})"
        yield number, raw


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            value = {"__bad__": f"not JSON ({err.msg} at column {err.colno})"}
        yield number, value if isinstance(value, dict) else {"__bad__": "not a JSON object"}


def read_manifest(path: str | os.PathLike[str]) -> list[Row]:
    """Every row, in order (a wrong row carries its `error`); raises ManifestError when nothing can be read.
    Names must be unique: a repeated name is an error on the later rows (their outputs would collide)."""
    file = Path(path)
    if not file.is_file():
        raise ManifestError(f"manifest not found: {file}")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest larger than {MAX_MANIFEST_BYTES >> 20} MB: split it")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"manifest is not UTF-8 text: {file}") from None
    except OSError as err:
        raise ManifestError(f"manifest cannot be read ({err.strerror}): {file}") from None
    jsonl = file.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip().startswith("{")
    base = file.resolve().parent
    rows: list[Row] = []
    seen: set[str] = set()
    for number, raw in (_jsonl_rows(text) if jsonl else _csv_rows(text)):
        if len(rows) >= MAX_ROWS:
            raise ManifestError(f"manifest has more than {MAX_ROWS} rows: split it")
        bad = raw.pop("__bad__", None)
        row = _row(number, raw, base) if not bad else Row(number, f"row{number}", error=f"manifest row {number}: {bad}")
        if row.error is None and row.name in seen:
            row.error = f"manifest row {number} ({row.name}): the name is used by an earlier row"
        seen.add(row.name)
        rows.append(row)
    if not rows:
        raise ManifestError(f"manifest has no rows: {file}")
    return rows


def file_sha256(path: str, cache: dict[str, str] | None = None) -> str:
    """sha256 of a file's bytes (memoised per path in `cache` for one run: the checkpoint is hashed once)."""
    if cache is not None and path in cache:
        return cache[path]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if cache is not None:
        cache[path] = value
    return value


def line_key(options: dict[str, Any], files: dict[str, str | None], cache: dict[str, str] | None = None) -> str:
    """One hash over a line's options (JSON, sorted keys) and the bytes of its input files (role -> path; a missing
    or absent file hashes as '-'): a rerun skips the line only when this is unchanged."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for role in sorted(files):
        path = files[role]
        digest.update(f"\0{role}\0".encode())
        digest.update(file_sha256(path, cache).encode() if path and Path(path).is_file() else b"-")
    return digest.hexdigest()
