"""FlameTalk inference: ARTalk speech -> FLAME motion (25 fps, 106 channels).

The public API, importable without loading torch (each name loads its module on first use, PEP 562):

    import flametalk
    model = flametalk.load_model()                        # the release checkpoint from the asset cache
    motion = flametalk.generate(model, "speech.wav", style="natural_0")   # (T, 106) float32 at 25 fps
    flametalk.write_motion("speech.motion.npz", motion)
    motion, fps, provenance = flametalk.read_motion("speech.motion.npz")
    streamer = flametalk.Streamer(model, rate=48000)      # audio in chunks -> the same motion as it is final

The package, by concern: flame/ (pure numpy, shared with the Blender add-on: units, FLAME reader, motion files),
model/ (the network), decode/ (generation), fast/ (speed and memory paths), io/ (files in and out), assets/ (the
per-user cache and the model hub), commands/ (`python -m flametalk ...` and the worker), train/, testing/.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import FlameTalkError

if TYPE_CHECKING:
    from .decode.pipeline import generate, load_model
    from .decode.postprocess import postprocess_motion
    from .decode.streaming import Streamer
    from .io.audio import load_audio
    from .io.motion import load_motion as read_motion
    from .io.motion import save_motion as write_motion
    from .io.style import load_style

# public name -> (module, attribute)
_LAZY = {
    "load_model": ("flametalk.decode.pipeline", "load_model"),
    "generate": ("flametalk.decode.pipeline", "generate"),
    "postprocess_motion": ("flametalk.decode.postprocess", "postprocess_motion"),
    "Streamer": ("flametalk.decode.streaming", "Streamer"),
    "load_audio": ("flametalk.io.audio", "load_audio"),
    "load_style": ("flametalk.io.style", "load_style"),
    "read_motion": ("flametalk.io.motion", "load_motion"),
    "write_motion": ("flametalk.io.motion", "save_motion"),
}

__all__ = [
    "FlameTalkError", "Streamer", "__version__", "generate", "load_audio", "load_model", "load_style",
    "postprocess_motion", "read_motion", "write_motion",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
