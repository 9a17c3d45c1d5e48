"""What the operators, the panel and the preferences share without importing each other: the add-on's id, the
device and precision choices, and the worker settings resolved from the preferences.

Empty preference fields mean "automatic" and are resolved when used (so a runtime set up later is picked up):
- worker Python: `worker.runtime.automatic_worker_python()`: env FLAMETALK_WORKER_PYTHON, else the managed
  runtime's Python once it is ready, else "".
- checkpoint folder: `<asset cache>/artalk` (core.paths.default_checkpoint_dir; the shared contract's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy

from ..core import paths
from ..worker.runtime import automatic_worker_python

# The add-on's module name: "bl_ext.<repo>.flametalk" when installed as an extension, "blender_addon" in a checkout.
ADDON_ID = (__package__ or "blender_addon.ui").rpartition(".")[0]
DEVICE_ITEMS = [
    ("AUTO", "Auto", "CUDA if available, then Apple Metal, then CPU"),
    ("CUDA", "CUDA", "NVIDIA GPU (needs a torch build with CUDA)"),
    ("MPS", "Metal", "Apple GPU (torch's MPS backend)"),
    ("CPU", "CPU", "Slow but works everywhere"),
]
MODE_ITEMS = [
    ("EXACT", "Exact", "float32 everywhere: the same numbers as the reference implementation"),
    ("FAST", "Fast", "int8 + bf16 on CPU, fp16 on GPUs: about 2x faster on CPU, slightly different numbers"),
]


@dataclass
class WorkerSettings:
    python: str
    checkpoint: str
    device: str  # worker spelling: auto / cuda / mps / cpu
    mode: str  # exact / fast


def get_preferences(context: bpy.types.Context | None = None) -> bpy.types.AddonPreferences | None:
    """The add-on's preferences, or None when it is not enabled as an add-on (e.g. registered by tests)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def worker_settings(context: bpy.types.Context | None = None) -> WorkerSettings:
    prefs = get_preferences(context)
    python = (prefs.worker_python if prefs else "") or automatic_worker_python()
    checkpoint = (prefs.checkpoint_dir if prefs else "") or str(paths.default_checkpoint_dir())
    return WorkerSettings(
        python=bpy.path.abspath(python) if python else "",
        checkpoint=bpy.path.abspath(checkpoint),
        device=(prefs.device if prefs else "AUTO").lower(),
        mode=(prefs.mode if prefs else "EXACT").lower(),
    )
