"""Style clips: 2 s (50 frames x 106) of motion that condition the speaking style.

Accepted specs:
  - None, "" , "none" or "default" (any case): no style (the model's null style);
  - a release clip `<name>.pt`: a torch tensor saved with torch.save, (50, 106) in the release (its clips are
    (50, 106) slices, saved together with the storage of a longer recording, hence their file sizes); also
    accepted: (1, 50, 106), longer (T, 106) recordings, or a dict holding one such tensor;
  - `.npy` (T, 106) or `.npz` with key `motion` (a flametalk motion file), T >= 50;
  - a bare name like `natural_0`: `<style_dir>/natural_0.pt`, style_dir defaulting to the asset cache's
    `style_motion` folder (filled by `python -m flametalk assets download`).
From a clip longer than 50 frames the 50 frames starting at `start_frame` are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FlameTalkError
from ..flame.contract import MOTION_DIM, STYLE_FRAMES

NO_STYLE_NAMES = ("", "none", "default")
STYLE_SUFFIXES = (".pt", ".pth", ".npy", ".npz")
DICT_KEYS = ("style_motion", "motion", "motions")  # keys tried when a .pt holds a dict

__all__ = ["NO_STYLE_NAMES", "available_styles", "load_style", "style_from_array"]


def available_styles(style_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the `.pt` clips in `style_dir` (default: the asset cache's style folder)."""
    folder = _default_style_dir() if style_dir is None else Path(style_dir)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.pt") if p.is_file())


def _default_style_dir() -> Path:
    from ..assets.store import style_dir

    return style_dir()


def style_from_array(arr: Any, start_frame: int = 0, what: str = "style clip") -> np.ndarray:
    """(T, 106) or (1, T, 106) floating array with T >= 50 -> (50, 106) float32 from `start_frame`."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[-1] != MOTION_DIM:
        raise FlameTalkError(
            f"{what} must be motion of shape ({STYLE_FRAMES}, {MOTION_DIM}) (frames x 106 channels), "
            f"got {tuple(np.shape(arr))}"
        )
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
        raise FlameTalkError(f"{what} must hold floating-point motion values, got dtype {a.dtype}")
    if isinstance(start_frame, bool) or not isinstance(start_frame, (int, np.integer)) or start_frame < 0:
        raise FlameTalkError(f"style start frame must be a whole number >= 0, got {start_frame!r}")
    n = a.shape[0]
    if n < STYLE_FRAMES:
        raise FlameTalkError(
            f"{what} is too short: {n} frames, a style needs {STYLE_FRAMES} frames (2 s at 25 fps); use a longer clip"
        )
    if start_frame + STYLE_FRAMES > n:
        raise FlameTalkError(
            f"{what} has {n} frames, so a 50-frame style can start at frame 0..{n - STYLE_FRAMES}, "
            f"not {start_frame}; lower --style-start"
        )
    clip = np.array(a[start_frame : start_frame + STYLE_FRAMES], dtype=np.float32, copy=True)
    if not np.isfinite(clip).all():
        raise FlameTalkError(f"{what} contains NaN or infinite values in frames {start_frame}..{start_frame + 49}")
    return clip


def _tensor_from_pt(path: Path, what: str) -> Any:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise FlameTalkError(f"{what} is not a readable torch tensor file ({reason})") from err
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray))}
        picked = next((tensors[k] for k in DICT_KEYS if k in tensors), None)
        if picked is None and len(tensors) == 1:
            picked = next(iter(tensors.values()))
        if picked is None:
            raise FlameTalkError(
                f"{what} holds a dict without a motion tensor (keys: {', '.join(map(str, obj)) or 'none'}); "
                f"expected a ({STYLE_FRAMES}, {MOTION_DIM}) tensor"
            )
        obj = picked
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            return obj.detach().to(torch.float32).cpu().numpy()  # copies out of any larger shared storage
        return obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise FlameTalkError(f"{what} holds a {type(obj).__name__}, expected a ({STYLE_FRAMES}, {MOTION_DIM}) tensor")


def _array_from_numpy_file(path: Path, what: str) -> Any:
    if path.suffix.lower() == ".npz":
        from .motion import load_motion

        motion, _, _ = load_motion(path)  # validates key, shape, dtype and values with its own messages
        return motion
    from ..flame.motionfile import MotionFileError, check_npy_size

    try:
        check_npy_size(path, what)  # the header's declared size against the file's, before np.load allocates it
    except MotionFileError as err:
        raise FlameTalkError(str(err)) from None
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise FlameTalkError(f"{what} is not a plain .npy array ({' '.join(str(err).split())[:160]})") from err
    except (OSError, EOFError) as err:
        raise FlameTalkError(f"{what} is not a readable .npy file ({err})") from err


def _resolve_name(name: str, style_dir: str | os.PathLike[str] | None) -> Path:
    folder = _default_style_dir() if style_dir is None else Path(style_dir)
    candidate = folder / f"{name}.pt"
    if candidate.is_file():
        return candidate
    names = available_styles(folder)
    if names:
        listing = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise FlameTalkError(f"unknown style '{name}' (no {candidate}); available: {listing}")
    raise FlameTalkError(
        f"style '{name}' not found: {folder} has no style clips; run `python -m flametalk assets download` "
        "or pass the path of a .pt/.npy/.npz clip"
    )


def load_style(
    spec: str | os.PathLike[str] | np.ndarray | None,
    start_frame: int = 0,
    style_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray | None, str]:
    """Resolve a style spec -> (style motion (50, 106) float32 or None, name). See the module docstring."""
    if spec is None:
        return None, "none"
    if isinstance(spec, np.ndarray):
        return style_from_array(spec, start_frame, "style array"), "array"
    text = os.fspath(spec)
    if text.strip().lower() in NO_STYLE_NAMES:
        return None, "none"
    path = Path(text).expanduser()
    is_path_like = path.suffix.lower() in STYLE_SUFFIXES or os.sep in text or "/" in text or path.exists()
    if not is_path_like:
        path = _resolve_name(text.strip(), style_dir)
        name = text.strip()
    else:
        name = path.stem
    what = f"style clip '{path}'"
    if path.is_dir():
        raise FlameTalkError(f"{what} is a folder; pass a .pt/.npy/.npz file or a style name")
    if not path.is_file():
        raise FlameTalkError(f"{what} does not exist; check the path or use a style name like natural_0")
    if path.stat().st_size == 0:
        raise FlameTalkError(f"{what} is empty (0 bytes); download or export it again")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        arr = _array_from_numpy_file(path, what)
    elif suffix in (".pt", ".pth") or not is_path_like:
        arr = _tensor_from_pt(path, what)
    else:
        raise FlameTalkError(f"{what}: unsupported file type '{path.suffix}'; use .pt, .npy or .npz")
    return style_from_array(arr, start_frame, what), name
