"""Motion .npz files: round trip, no pickles, atomic writes, validation with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flametalk.errors import FlameTalkError
from flametalk.io import motion as motion_io
from flametalk.io.motion import load_motion, save_motion

PROV = {"checkpoint": {"sha256": "ab" * 32}, "style": {"name": "natural_0"}, "settings": {"postprocess": True},
        "flametalk_version": "0.1.0", "note": "ünïcode ok"}  # fmt: skip


def motion(frames: int = 37, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((frames, 106)).astype(np.float32)


def test_round_trip_and_plain_npz_layout(tmp_path):
    m = motion()
    path = save_motion(tmp_path / "a.motion.npz", m, fps=25, provenance=PROV)
    got, fps, prov = load_motion(path)
    np.testing.assert_array_equal(got, m)
    assert got.dtype == np.float32 and fps == 25.0 and prov == PROV
    with np.load(path, allow_pickle=False) as data:  # no pickled objects anywhere
        assert sorted(data.files) == ["fps", "motion", "provenance"]
        assert data["motion"].dtype == np.float32 and data["motion"].shape == (37, 106)
        assert data["fps"].shape == () and float(data["fps"]) == 25.0
        assert data["provenance"].dtype.kind == "U"
        assert json.loads(str(data["provenance"])) == PROV


def test_float64_input_is_stored_as_float32_and_name_is_kept(tmp_path):
    path = save_motion(tmp_path / "no_suffix", motion().astype(np.float64))
    assert path.name == "no_suffix" and path.is_file()  # np.savez would have appended .npz to a str path
    got, _, prov = load_motion(path)
    assert got.dtype == np.float32 and prov == {}


def test_failed_write_leaves_the_existing_file_intact_and_no_temp_files(tmp_path, monkeypatch):
    path = save_motion(tmp_path / "m.npz", motion(10, seed=1), provenance={"v": 1})
    before = path.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(motion_io.np, "savez", broken_savez)
    with pytest.raises(FlameTalkError, match="No space left on device"):
        save_motion(path, motion(20, seed=2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    monkeypatch.undo()
    save_motion(path, motion(20, seed=2))  # a successful write replaces it completely
    assert load_motion(path)[0].shape == (20, 106)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((10, 100), np.float32), r"shape \(frames, 106\)"),
        (np.zeros((0, 106), np.float32), "no frames"),
        (np.zeros((10, 106), np.int32), "floating-point"),
        (np.full((10, 106), np.nan, np.float32), "NaN or infinite values in 10 of 10 frames"),
    ],
)
def test_save_rejects_bad_motion_without_writing(tmp_path, bad, message):
    with pytest.raises(FlameTalkError, match=message):
        save_motion(tmp_path / "x.npz", bad)
    assert not list(tmp_path.iterdir())


def test_save_errors_for_missing_folder_bad_fps_and_unserialisable_provenance(tmp_path):
    with pytest.raises(FlameTalkError, match="does not exist"):
        save_motion(tmp_path / "nope" / "x.npz", motion())
    with pytest.raises(FlameTalkError, match="fps must be a positive number"):
        save_motion(tmp_path / "x.npz", motion(), fps=0)
    with pytest.raises(FlameTalkError, match="JSON"):
        save_motion(tmp_path / "x.npz", motion(), provenance={"x": float("nan")})


def _npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def test_load_errors_are_clear(tmp_path):
    good = {"motion": motion(), "fps": np.asarray(25.0), "provenance": np.asarray("{}")}
    cases = {
        "missing": (tmp_path / "missing.npz", "does not exist"),
        "garbage": (tmp_path / "garbage.npz", "not a valid .npz motion file"),
        "no motion": (_npz(tmp_path / "nomotion.npz", fps=np.asarray(25.0)), r"has no 'motion' array \(found: fps\)"),
        "shape": (_npz(tmp_path / "shape.npz", **{**good, "motion": np.zeros((5, 3))}), r"\(frames, 106\)"),
        "dtype": (_npz(tmp_path / "dtype.npz", **{**good, "motion": np.zeros((5, 106), int)}), "floating-point"),
        "nan": (_npz(tmp_path / "nan.npz", **{**good, "motion": np.full((5, 106), np.inf)}), "NaN or infinite"),
        "pickle": (_npz(tmp_path / "pickle.npz", **{**good, "provenance": np.array([{"a": 1}], dtype=object)}),
                   "pickled objects"),
        "json": (_npz(tmp_path / "json.npz", **{**good, "provenance": np.asarray("{not json")}), "not valid JSON"),
        "no fps": (_npz(tmp_path / "nofps.npz", motion=motion()), "has no 'fps' value"),
        "npy": (tmp_path / "plain.npy", "single .npy array"),
    }  # fmt: skip
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    np.save(tmp_path / "plain.npy", motion())
    for name, (path, message) in cases.items():
        with pytest.raises(FlameTalkError, match=message):
            load_motion(path)
        assert name  # (named cases make failures readable)
