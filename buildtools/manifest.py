"""blender_manifest.toml of the FlameTalk extension, rendered from one place.

The manifest lists no `wheels`: Blender would unpack them into the one site-packages all extensions share, and the
add-on itself needs nothing beyond Blender's own Python (numpy included). The worker's wheels travel as plain files
in `runtime_wheels/` and go into a separate environment (see blender_addon/worker/runtime.py).
"""

from __future__ import annotations

from collections.abc import Sequence

EXTENSION_ID = "flametalk"
ALL_PLATFORMS = ("windows-x64", "linux-x64", "macos-arm64")
BLENDER_MIN = "4.2.0"
# Exclusive upper bound: Blender 5.1 moves to Python 3.13 and the bundled runtime wheels are CPython 3.11.
BLENDER_MAX = "5.1.0"
PERMISSIONS = {
    # Reasons are terse (<= 64 characters, no final punctuation): Blender shows them at install time.
    "files": "Read speech and FLAME files, write takes, exports and a runtime",
    "network": "Download the ARTalk weights and, with your consent, FLAME",
}


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def render(version: str, platforms: Sequence[str] = ALL_PLATFORMS) -> str:
    lines = [
        "# Written by build.py (buildtools/manifest.py): edit there, not here.",
        'schema_version = "1.0.0"',
        "",
        f"id = {_toml_str(EXTENSION_ID)}",
        f"version = {_toml_str(version)}",
        'name = "FlameTalk"',
        'tagline = "Speech to editable FLAME facial animation with ARTalk"',
        'maintainer = "FlameTalk developers"',
        'type = "add-on"',
        'tags = ["Animation"]',
        "",
        f"blender_version_min = {_toml_str(BLENDER_MIN)}",
        f"blender_version_max = {_toml_str(BLENDER_MAX)}",
        'license = ["SPDX:MIT"]',
        f"platforms = {_toml_list(platforms)}",
        "",
        "[permissions]",
        *(f"{key} = {_toml_str(reason)}" for key, reason in PERMISSIONS.items()),
        "",
        "[build]",
        'paths_exclude_pattern = ["__pycache__/", ".*", "/*.zip", "*.pyc", "*.blend[1-9]"]',
        "",
    ]
    return "\n".join(lines)
