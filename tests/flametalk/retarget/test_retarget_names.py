"""Shape key names: ARKit selection, explicit lists, left/right pairs in the naming styles rigs use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flametalk
import pytest
from flametalk.errors import FlameTalkError
from flametalk.retarget import ARKIT_52, arkit_name, is_arkit, select_keys, symmetry_pairs


def test_arkit_has_52_unique_names():
    assert len(ARKIT_52) == 52 and len(set(ARKIT_52)) == 52


@pytest.mark.parametrize("left, right", [
    ("eyeBlinkLeft", "eyeBlinkRight"),  # ARKit
    ("eyeBlink_L", "eyeBlink_R"),  # ICT FaceKit
    ("Blink.L", "Blink.R"),  # Blender
    ("L_Blink", "R_Blink"),  # prefix
    ("Left_Blink", "Right_Blink"),
    ("smile_left", "smile_right"),
    ("BROW.l", "BROW.r"),
])
def test_symmetry_pairs_in_each_naming_style(left, right):
    names = ["jawOpen", right, "other", left]
    assert symmetry_pairs(names) == [(3, 1)]


def test_pairs_do_not_mix_prefix_and_suffix_styles_or_unpaired_names():
    names = ["L_brow", "brow_R", "cheekPuff", "lonely_L", "Left", "Right"]
    assert symmetry_pairs(names) == []


def test_directional_pairs_are_left_out_by_default():
    names = ["jawLeft", "jawRight", "mouthLeft", "mouthRight", "eyeLookIn_L", "eyeLookIn_R", "mouthSmile_L",
             "mouthSmile_R"]
    assert symmetry_pairs(names) == [(6, 7)]
    assert (0, 1) in symmetry_pairs(names, directional=True)


def test_arkit_selection_accepts_ict_and_case_variants():
    names = ["mouthSmile_L", "MOUTHSMILERIGHT", "browInnerUp_L", "cheekRaiser_L", "PupilDilate_R", "eyeBlink.R",
             "jawOpen", "myCustomShape"]
    assert select_keys(names, "arkit") == [0, 1, 2, 5, 6]
    assert is_arkit("tongueOut") and not is_arkit("cheekRaiser_L")
    assert select_keys(names, "all") == list(range(len(names)))


def test_explicit_list_and_unknown_names():
    names = ["jawOpen", "mouthClose", "Smile"]
    assert select_keys(names, "smile, jawOpen") == [2, 0]
    assert select_keys(names, ["mouthClose", "mouthClose"]) == [1]
    with pytest.raises(FlameTalkError, match=r"unknown shape key.*jawOpn"):
        select_keys(names, "jawOpen,jawOpn")
    with pytest.raises(FlameTalkError, match="no ARKit-named"):
        select_keys(["a", "b"], "arkit")
    with pytest.raises(FlameTalkError, match="no shape keys selected"):
        select_keys(names, " , ")


def test_arkit_canonical_names():
    assert arkit_name("mouthSmile_L") == "mouthSmileLeft"
    assert arkit_name("EYEBLINKRIGHT") == "eyeBlinkRight"
    assert arkit_name("browInnerUp_R") == "browInnerUp" and arkit_name("cheekPuff.L") == "cheekPuff"
    assert arkit_name("jawOpen") == "jawOpen"
    assert arkit_name("cheekRaiser_L") is None and arkit_name("PupilDilate_R") is None


def test_package_imports_without_scipy():
    """Blender's Python has no scipy: Character and the name helpers must import without it."""
    code = ("import sys; sys.modules['scipy'] = None\n"
            "from flametalk.retarget import Character, select_keys, symmetry_pairs, retarget\n"
            "print(select_keys(['jawOpen', 'eyeBlink_L'], 'arkit'))")
    root = str(Path(flametalk.__file__).resolve().parents[1])  # this checkout's inference/ folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1]"
