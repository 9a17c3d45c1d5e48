"""Where FlameTalk's assets live, computed without importing flametalk (no bpy, no torch; stdlib only).

The cache folder and its layout are the shared contract's (`flame/contract.py`, also used by `flametalk.assets`):
the checkpoint folder is `<cache>/artalk` (ARTalk_wav2vec.pt + config.json) and the release style clips are in
`<checkpoint folder>/style_motion/<name>.pt`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..flame.contract import CHECKPOINT_SUBDIR, STYLE_SUBDIR, cache_dir

RELEASE_WEIGHTS_NAME = "ARTalk_wav2vec.pt"
CONFIG_NAME = "config.json"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
DOWNLOAD_HINT = "python -m flametalk assets download fetches them"

__all__ = ["CHECKPOINT_SUBDIR", "STYLE_SUBDIR", "absolute", "cache_dir", "checkpoint_problem",
           "default_checkpoint_dir", "file_problem", "release_styles", "style_dir"]


def absolute(path: str | os.PathLike[str]) -> str:
    """`path` absolute and normalised (`out/../a.blend` is `<cwd>/a.blend`) with symlinks kept as they are: the
    rule of os.path.abspath. Path.resolve() follows symlinks (an output that is a link would be written through to
    its target) and Path.absolute() keeps `..`; pathlib has nothing that does both."""
    return os.path.abspath(path)  # noqa: PTH100 - no pathlib equivalent (see above); ruff's own docs say so


def default_checkpoint_dir() -> Path:
    return cache_dir() / CHECKPOINT_SUBDIR


def style_dir(checkpoint: str | os.PathLike[str] | None = None) -> Path:
    folder = Path(checkpoint).expanduser() if checkpoint else default_checkpoint_dir()
    if folder.is_file():  # a weights file was given: its folder
        folder = folder.parent
    return folder / STYLE_SUBDIR


def release_styles(checkpoint: str | os.PathLike[str] | None = None) -> list[str]:
    folder = style_dir(checkpoint)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pt") if p.is_file())


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """None when `path` looks like a usable checkpoint (folder or weights file), else one readable line."""
    if not str(path).strip():
        return f"no checkpoint folder is set; set it in the FlameTalk preferences ({DOWNLOAD_HINT})"
    folder = Path(path).expanduser()
    if folder.is_dir():
        weights = [p for p in folder.iterdir() if p.suffix in WEIGHTS_SUFFIXES and p.is_file()]
        if not weights:
            return (f"checkpoint not found: no weights file (*.pt) in {folder}; put {RELEASE_WEIGHTS_NAME} and "
                    f"{CONFIG_NAME} there ({DOWNLOAD_HINT})")
        config = folder / CONFIG_NAME
    elif folder.is_file():
        config = folder.parent / CONFIG_NAME
    else:
        return f"checkpoint not found: {folder}; pass the folder holding {RELEASE_WEIGHTS_NAME} and {CONFIG_NAME} " \
               f"({DOWNLOAD_HINT})"
    if not config.is_file():
        return f"checkpoint incomplete: {CONFIG_NAME} missing in {config.parent}"
    return None


def file_problem(path: str | os.PathLike[str], what: str) -> str | None:
    """None when `path` is a non-empty readable file, else one readable line."""
    if not str(path).strip():
        return f"no {what} chosen"
    p = Path(path)
    if not p.exists():
        return f"{what} not found: {p}"
    if p.is_dir():
        return f"{what} is a folder, not a file: {p}"
    try:
        if p.stat().st_size == 0:
            return f"{what} is empty (0 bytes): {p}"
        with open(p, "rb"):
            pass
    except OSError as err:
        return f"{what} cannot be read ({err.strerror}): {p}"
    return None
