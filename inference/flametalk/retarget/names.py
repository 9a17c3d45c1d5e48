"""Shape key names: ARKit's 52 blendshapes, choosing which keys to solve for, and left/right pairs by name."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import FlameTalkError
from ..flame.arkit import ARKIT_52, arkit_name, is_arkit

__all__ = ["ARKIT_52", "arkit_name", "is_arkit", "select_keys", "split_side", "symmetry_pairs"]

# Shapes whose Left/Right is a direction of motion, not a side of the face: mirror images of each other but
# antagonists, so a symmetry term (w_left = w_right) would be wrong for them.
_DIRECTIONAL_BASES = {"jaw", "mouth", "eyelookin", "eyelookout"}

# (regex, side group): the side marker as a suffix or prefix, in the styles rigs use.
_SIDE_PATTERNS = (
    re.compile(r"^(?P<base>.+?)(?P<sep>[_.\- ]?)(?P<side>left|right)$", re.IGNORECASE),
    re.compile(r"^(?P<base>.+?)(?P<sep>[_.\-])(?P<side>l|r)$", re.IGNORECASE),
    re.compile(r"^(?P<side>left|right)(?P<sep>[_.\- ]?)(?P<base>.+)$", re.IGNORECASE),
    re.compile(r"^(?P<side>l|r)(?P<sep>[_.\-])(?P<base>.+)$", re.IGNORECASE),
)


def split_side(name: str) -> tuple[str, str] | None:
    """(base, 'L' or 'R') when the name carries a side marker (Left/Right, _L/_R, .L/.R, L_/R_, as prefix or
    suffix, any case), else None. The base keeps the marker's position so prefix and suffix styles never mix."""
    for k, pattern in enumerate(_SIDE_PATTERNS):
        match = pattern.match(name)
        if match:
            side = "L" if match.group("side")[0] in "lL" else "R"
            where = "suffix" if k < 2 else "prefix"
            return f"{where}:{match.group('base').lower()}", side
    return None


def symmetry_pairs(names: Sequence[str], directional: bool = False) -> list[tuple[int, int]]:
    """Index pairs (left, right) of keys that are the same shape on the two sides of the face.
    `directional=False` leaves out jawLeft/jawRight, mouthLeft/mouthRight, eyeLookIn/Out (motions, not sides)."""
    found: dict[str, dict[str, int]] = {}
    for i, name in enumerate(names):
        split = split_side(name)
        if split is None:
            continue
        base, side = split
        if not directional and base.split(":", 1)[1].rstrip("_.- ") in _DIRECTIONAL_BASES:
            continue
        found.setdefault(base, {}).setdefault(side, i)
    return sorted((sides["L"], sides["R"]) for sides in found.values() if "L" in sides and "R" in sides)


def select_keys(names: Sequence[str], keys: str | Sequence[str] = "all") -> list[int]:
    """Indices into `names` of the keys to solve for: "all", "arkit" (ARKit-named ones, see `is_arkit`), or an
    explicit list (or comma-separated string) of names, matched exactly, else case-insensitively.
    Raises FlameTalkError (one line) for unknown names or an empty selection."""
    if isinstance(keys, str) and keys.strip().lower() == "all":
        chosen = list(range(len(names)))
    elif isinstance(keys, str) and keys.strip().lower() == "arkit":
        chosen = [i for i, n in enumerate(names) if is_arkit(n)]
        if not chosen:
            raise FlameTalkError("the character has no ARKit-named shape keys (use --shape-keys all or a list)")
    else:
        wanted = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else [str(k) for k in keys]
        wanted = [k for k in wanted if k]
        exact = {n: i for i, n in enumerate(names)}
        lower: dict[str, int] = {}
        for i, n in enumerate(names):
            lower.setdefault(n.lower(), i)
        chosen, unknown = [], []
        for k in wanted:
            found = exact.get(k, lower.get(k.lower()))
            (unknown.append(k) if found is None else chosen.append(found))
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise FlameTalkError(f"unknown shape key(s): {shown} (the character has {len(names)} keys, "
                                 f"e.g. {', '.join(list(names)[:3])})")
        chosen = list(dict.fromkeys(chosen))  # keep order, drop repeats
    if not chosen:
        raise FlameTalkError("no shape keys selected")
    return chosen
