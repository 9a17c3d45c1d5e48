"""Compute device choice and numeric settings."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import FlameTalkError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")  # plus "cuda:N" for a given GPU
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")

__all__ = ["DEVICE_CHOICES", "configure_torch_for_parity", "resolve_device"]


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' (CUDA, then Apple MPS, then CPU), 'cuda', 'cuda:N', 'mps' or 'cpu' -> torch.device.

    An explicitly requested device that is not usable raises FlameTalkError saying what to use instead.
    """
    import torch

    key = (name or "auto").strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key == "cuda" or _CUDA_INDEX.match(key):
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise FlameTalkError(f"device '{name}' is not available ({build}); use --device cpu or --device auto")
        m = _CUDA_INDEX.match(key)
        if m is not None:
            count = torch.cuda.device_count()
            if int(m.group(1)) >= count:
                raise FlameTalkError(
                    f"device '{name}' does not exist ({count} CUDA device(s): cuda:0..cuda:{count - 1}); "
                    "pick one of those"
                )
        return torch.device(key)
    if key == "mps":
        if not _mps_available():
            raise FlameTalkError(
                f"device '{name}' is not available (Apple Metal needs macOS 12.3+ on Apple silicon and a torch build "
                "with MPS); use --device cpu or --device auto"
            )
        return torch.device("mps")
    raise FlameTalkError(f"unknown device '{name}'; use one of: auto, cuda, cuda:N, mps, cpu")


def configure_torch_for_parity() -> None:
    """Full-precision fp32 math: TF32 off for matmul and cuDNN, 'highest' float32 matmul precision.

    Needed for results that match reference numbers bit for bit (one flipped decoding bit propagates through later
    windows). Affects the whole process.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
