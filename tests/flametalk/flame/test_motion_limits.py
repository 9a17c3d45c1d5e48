"""Motion files: one reader and one set of rules for `flametalk` and the Blender add-on (issue 19, item 9).

A `.npy`, a file without `fps`, an fps of 0.001, a header declaring a billion frames, or a take that would end past
Blender's last frame (1,048,574): each is one line from both halves (exit 2 in the CLI), and nothing is keyed.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flametalk.errors import FlameTalkError
from flametalk.flame import motionfile
from flametalk.flame.motionfile import MAX_FRAMES, MAX_SCENE_FRAME, MotionFileError, check_scene_span, read_motion
from flametalk.io import motion as motion_io
from flametalk.testing import synthetic_flame as synthetic


def _motion(frames: int = 20, seed: int = 3) -> np.ndarray:
    return synthetic.random_motion(frames, seed=seed, rot_scale=0.3).astype(np.float32)


def _npz(path: Path, **arrays: object) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _npy_bytes(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """An .npy member whose header declares `shape` whatever `data` holds."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return path


def _both(path: Path) -> tuple[str, str]:
    """The one-line messages of flametalk's loader and the add-on's reader for the same file."""
    with pytest.raises(FlameTalkError) as ft:
        motion_io.load_motion(path)
    with pytest.raises(MotionFileError) as addon:
        read_motion(path)
    assert ft.value.exit_code == 2
    for message in (str(ft.value), str(addon.value)):
        assert "\n" not in message and len(message) < 400, message
    assert str(ft.value) == str(addon.value)  # one function, one message
    return str(ft.value), str(addon.value)


def test_good_file_reads_the_same_in_both_halves(tmp_path: Path) -> None:
    m = _motion()
    path = motion_io.save_motion(tmp_path / "a.npz", m, fps=30, provenance={"style": "x"})
    got, fps, prov = motion_io.load_motion(path)
    read = read_motion(path)
    np.testing.assert_array_equal(got, m)
    np.testing.assert_array_equal(read.motion, m)
    assert (fps, prov) == (30.0, {"style": "x"}) and (read.fps, read.provenance) == (30.0, {"style": "x"})
    # float64, big-endian, Fortran order and compressed members are all still motion files
    _npz(tmp_path / "b.npz", motion=np.asfortranarray(m.astype(">f8")), fps=np.int64(25))
    np.testing.assert_array_equal(read_motion(tmp_path / "b.npz").motion, m)
    with open(tmp_path / "c.npz", "wb") as fh:
        np.savez_compressed(fh, motion=m, fps=25.0)
    np.testing.assert_array_equal(read_motion(tmp_path / "c.npz").motion, m)


def test_npy_is_refused_with_what_to_do(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", _motion())
    message, _ = _both(tmp_path / "m.npy")
    assert "is a single .npy array, not an .npz with 'motion' and 'fps'" in message
    assert "numpy.savez(path, motion=array, fps=25.0)" in message


def test_missing_fps_is_refused_not_taken_as_25(tmp_path: Path) -> None:
    message, _ = _both(_npz(tmp_path / "nofps.npz", motion=_motion()))
    assert "has no 'fps' value" in message and "python -m flametalk generate" in message


@pytest.mark.parametrize(("fps", "fragment"), [
    (0.001, "fps 0.001 is outside 1..1000"),
    (1001.0, "fps 1001 is outside 1..1000"),
    (0.0, "fps must be a positive number, got 0"),
    (-25.0, "fps must be a positive number, got -25"),
    (np.nan, "fps must be a positive number, got nan"),
    (np.array([25.0, 30.0]), "'fps' must be one value, got shape (2,)"),
    (np.asarray("25"), "'fps' has the wrong type (<U2)"),
    (np.asarray(True), "'fps' has the wrong type (bool)"),
])  # fmt: skip
def test_fps_rules(tmp_path: Path, fps: object, fragment: str) -> None:
    message, _ = _both(_npz(tmp_path / "f.npz", motion=_motion(), fps=fps))
    assert fragment in message, message


@pytest.mark.parametrize(("arrays", "fragment"), [
    ({"motion": np.zeros((5, 100), np.float32)}, "must have shape (frames, 106)"),
    ({"motion": np.zeros((0, 106), np.float32)}, "'motion' has no frames"),
    ({"motion": np.zeros((5, 106), np.int16)}, "floating-point values (float16/32/64), got dtype int16"),
    ({"motion": np.zeros((5, 106), np.complex64)}, "got dtype complex64"),
    ({"motion": np.full((5, 106), np.inf, np.float32)}, "NaN or infinite values in 5 of 5 frames"),
    ({"motion": np.array([None] * 106, dtype=object).reshape(1, 106)}, "pickled objects, which are not loaded"),
    ({"provenance": np.asarray("[1, 2]")}, "'provenance' must be a JSON object"),
    ({"provenance": np.asarray("{nope")}, "'provenance' is not valid JSON"),
    ({"provenance": np.array(["{}", "{}"])}, "one JSON string) must be one value"),
])  # fmt: skip
def test_array_rules(tmp_path: Path, arrays: dict, fragment: str) -> None:
    good = {"motion": _motion(), "fps": np.float64(25), "provenance": np.asarray("{}")}
    message, _ = _both(_npz(tmp_path / "m.npz", **{**good, **arrays}))
    assert fragment in message, message


def test_declared_shapes_are_checked_before_anything_is_allocated(tmp_path: Path) -> None:
    """np.load allocates what a header declares: 848 GB for this 2-KB file. The reader checks first."""
    fps = _npy_bytes((), "<f8", struct.pack("<d", 25.0))
    data = _motion(2).tobytes()
    cases = {
        "billion": (_npy_bytes((10**9, 106), "<f8", data), "has 1,000,000,000 frames, more than the 1,048,574"),
        "lying": (_npy_bytes((1_000_000, 106), "<f8", data), "header declares 848,000,000 bytes of data, the file "
                                                              "holds 848"),
        "wide dtype": (_npy_bytes((2, 106), "<f16", data), "float16/32/64), got dtype float128"),
        "void": (_npy_bytes((2, 106), "|V1000000000", b""), "got dtype |V1000000000"),
    }  # fmt: skip
    for name, (member, fragment) in cases.items():
        path = _zip(tmp_path / f"{name.replace(' ', '_')}.npz", {"motion.npy": member, "fps.npy": fps})
        tracemalloc.start()
        try:
            message, _ = _both(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert fragment in message, (name, message)
        assert peak < 8 << 20, (name, peak)  # numpy's allocations are traced: nothing the size of the claim


def test_zip_directory_and_file_size_are_bounded(tmp_path: Path) -> None:
    members = {f"x{i}.npy": b"" for i in range(100)}
    message, _ = _both(_zip(tmp_path / "many.npz", {**members, "motion.npy": b"", "fps.npy": b""}))
    assert "declares 102 entries" in message
    good = _npz(tmp_path / "good.npz", motion=_motion(), fps=25.0).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    message, _ = _both(tmp_path / "cut.npz")
    assert "is not a valid .npz motion file (no zip directory; truncated?)" in message
    flipped = bytearray(good)
    flipped[good.index(b"\x93NUMPY") + 200] ^= 0xFF  # one byte of motion data: the member's CRC no longer matches
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    message, _ = _both(tmp_path / "crc.npz")
    assert "Bad CRC-32" in message
    big = tmp_path / "big.npz"
    with open(big, "wb") as fh:
        fh.write(b"PK\x03\x04")
        fh.truncate(motionfile._MAX_FILE_BYTES + 1)  # sparse: takes no disk space
    message, _ = _both(big)
    assert "larger than any motion file of at most 1,048,574 frames" in message


def test_scene_span_stops_at_blenders_last_frame() -> None:
    assert MAX_FRAMES == MAX_SCENE_FRAME == 1_048_574
    assert check_scene_span(MAX_SCENE_FRAME, 25.0, 25.0, 1) == MAX_SCENE_FRAME  # frames 1..1,048,574
    with pytest.raises(MotionFileError, match="would end at scene frame 1,048,575"):
        check_scene_span(MAX_SCENE_FRAME, 25.0, 25.0, 2)
    # 4 hours at 25 fps fit a 25- or 60-fps scene but not a 120-fps one
    assert check_scene_span(360_000, 25.0, 60.0, 1) == pytest.approx(1 + 359_999 * 2.4)
    with pytest.raises(MotionFileError) as err:
        check_scene_span(360_000, 25.0, 120.0, 1)
    assert str(err.value) == (
        "the motion (360,000 frames at 25 fps) would end at scene frame 1,727,996 (scene at 120 fps from frame 1), "
        "past Blender's last frame 1,048,574; split the audio into shorter lines or lower the scene's frame rate"
    )


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(FlameTalkError, match=re.escape("fps 0.001 is outside 1..1000")):
        motion_io.save_motion(tmp_path / "x.npz", _motion(), fps=0.001)
    with pytest.raises(FlameTalkError, match="got dtype int64"):
        motion_io.save_motion(tmp_path / "x.npz", np.zeros((3, 106), np.int64))
    assert not list(tmp_path.iterdir())


# -- the Blender half --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blender(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("bpy")
    folder = tmp_path_factory.mktemp("motion_limits")
    small = synthetic.make_arrays(n_verts=300, n_faces=400, seed=5)
    return {"folder": folder, "flame": Path(synthetic.write_pkl_2020(str(folder / "head.pkl"), small))}


def _animate(blender: dict[str, Path], motion: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, list]:
    import bpy

    from blender_addon.cli import main as cli

    out = blender["folder"] / f"{motion.stem}.blend"
    bpy.ops.wm.read_homefile(use_empty=True)
    capsys.readouterr()
    code = cli.main(["animate", "--flame", str(blender["flame"]), "--motion", str(motion), "--out", str(out),
                     *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not out.exists()
    assert not [a.name for a in bpy.data.actions]  # nothing keyed
    return code, err


@pytest.mark.blender
@pytest.mark.parametrize(("case", "fragment"), [
    ("npy", "is a single .npy array, not an .npz with 'motion' and 'fps'"),
    ("no_fps", "has no 'fps' value"),
    ("slow_fps", "fps 0.001 is outside 1..1000"),
])  # fmt: skip
def test_cli_motion_file_errors_are_one_line_exit_2(blender: dict[str, Path], capsys, case: str,
                                                      fragment: str) -> None:
    folder = blender["folder"]
    if case == "npy":
        np.save(folder / "m.npy", _motion())
        path = folder / "m.npy"
    elif case == "no_fps":
        path = _npz(folder / "nofps.npz", motion=_motion())
    else:
        path = _npz(folder / "slow.npz", motion=_motion(), fps=np.float64(0.001))
    code, err = _animate(blender, path, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("flametalk: error: motion file"), err
    assert fragment in err[0], err


@pytest.mark.blender
def test_take_past_blenders_last_frame_is_refused_before_keying(blender: dict[str, Path], capsys) -> None:
    """43,691 frames at 1 fps in a 25-fps scene would end at frame 1,092,251: refused, exit 2, nothing keyed."""
    path = _npz(blender["folder"] / "long.npz", motion=np.zeros((43_691, 106), np.float32), fps=np.float64(1))
    code, err = _animate(blender, path, capsys)
    assert code == 2 and len(err) == 1, err
    assert "(43,691 frames at 1 fps) would end at scene frame 1,092,251 (scene at 25 fps from frame 1)" in err[0]

    import bpy

    from blender_addon.scene import job as generate
    from blender_addon.scene import keyframes, rig

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    flame_rig = rig.build_rig(synthetic.model_from_arrays(synthetic.make_arrays(n_verts=300, n_faces=400, seed=5)))
    req = generate.GenerateRequest(rig=flame_rig, audio="", checkpoint="", worker_python="", start_frame=1000)
    fits = np.zeros((41_903, 106), np.float32)  # at 1 fps into 25: 1000 + 41,902 * 25 = 1,048,550
    assert keyframes.check_scene_length(len(fits), 1.0, scene, 1000) == 1_048_550
    with pytest.raises(generate.GenerateError) as err:
        generate.apply_motion(flame_rig, np.zeros((41_904, 106), np.float32), 1.0, audio=None, req=req)
    assert err.value.kind == "input" and "would end at scene frame 1,048,575" in str(err.value)
    assert not list(bpy.data.actions) and (scene.frame_start, scene.frame_end) == (1, 250)


def test_style_npy_header_is_checked_before_numpy_allocates(tmp_path: Path) -> None:
    """A 1-KB style clip declaring (10^9, 106) float64: np.load asked for 848 GB; now one line, nothing allocated."""
    from flametalk.io.style import load_style

    (tmp_path / "huge.npy").write_bytes(_npy_bytes((10**9, 106), "<f8", _motion(2).astype("<f8").tobytes()))
    tracemalloc.start()
    try:
        with pytest.raises(FlameTalkError) as err:
            load_style(tmp_path / "huge.npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"style clip '{tmp_path / 'huge.npy'}' is damaged: its header declares "
                              "848,000,000,000 bytes of data, the file holds 1,696; save it again with numpy.save")
    assert peak < 8 << 20
    np.save(tmp_path / "fine.npy", _motion(60))
    style, name = load_style(tmp_path / "fine.npy")
    assert style.shape == (50, 106) and name == "fine"
