"""ARKit's 52 blendshape names, the naming variants rigs use, and the Live Link Face CSV layout (standard library
only: the worker's key selection and the add-on's CSV writer share it)."""

from __future__ import annotations

import re

ARKIT_52 = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
_CANON = {n.lower(): n for n in ARKIT_52}
_SIDED = re.compile(r"^(.+?)[_.](l|r|left|right)$")

# Live Link Face's CSV: Timecode, BlendShapeCount, the 52 shapes in this order (capitalised), then head and eye
# rotations (written as 0 here: the head rotation goes to the character's bones or object).
LIVE_LINK_ORDER = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthRight", "mouthLeft", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
LIVE_LINK_EXTRA = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw",
                   "RightEyePitch", "RightEyeRoll")


def is_arkit(name: str) -> bool:
    """True for ARKit's names and the variants rigs use: case-insensitive, `_L`/`_R`, `.L`/`.R` for
    `Left`/`Right` (ICT FaceKit: `mouthSmile_L`), and halves of ARKit's unsided shapes (`browInnerUp_L`)."""
    return arkit_name(name) is not None


def arkit_name(name: str) -> str | None:
    """The canonical ARKit name a key stands for (`mouthSmile_L` -> `mouthSmileLeft`, `browInnerUp_L` ->
    `browInnerUp`: one half of an unsided shape), or None. For writing ARKit-layout files (Live Link CSV)."""
    low = name.lower()
    if low in _CANON:
        return _CANON[low]
    match = _SIDED.match(low)
    if match:
        base, side = match.group(1), match.group(2)
        sided = base + ("left" if side[0] == "l" else "right")
        return _CANON.get(sided, _CANON.get(base))
    return None
