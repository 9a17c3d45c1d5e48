"""Character and Fit: .npz round trips, and bad input refused with one clear line."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fixtures.ict_flame import cached_fit
from flametalk.errors import FlameTalkError
from flametalk.retarget import Character, Fit


def _tiny(**overrides) -> Character:
    rng = np.random.default_rng(0)
    fields = {"rest": rng.normal(size=(6, 3)), "triangles": np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]]),
              "names": ["a_L", "a_R"], "deltas": rng.normal(size=(2, 6, 3)), "name": "tiny"}
    fields.update(overrides)
    return Character(**fields)


def test_character_round_trip(tmp_path):
    char = _tiny(ranges=np.array([[-1.0, 1.0], [0.0, 2.0]]), face_weights=np.linspace(0, 1, 6),
                 jaw_pivot=[0.0, 1.0, 2.0], jaw_axes=2.0 * np.eye(3))
    char.save(tmp_path / "c.npz")
    back = Character.load(tmp_path / "c.npz")
    assert back.names == ["a_L", "a_R"] and back.name == "tiny"
    for key in ("rest", "triangles", "deltas", "ranges", "face_weights", "jaw_pivot", "jaw_axes"):
        np.testing.assert_array_equal(getattr(back, key), getattr(char, key))
    np.testing.assert_allclose(back.jaw_axes, np.eye(3))  # a scaled bone matrix is orthonormalised
    assert back.deltas.dtype == np.float32 and back.rest.dtype == np.float64
    defaults = _tiny()
    np.testing.assert_array_equal(defaults.ranges, [[0, 1], [0, 1]])


@pytest.mark.parametrize("overrides, message", [
    ({"names": [], "deltas": np.zeros((0, 6, 3))}, "has no shape keys"),
    ({"rest": np.full((6, 3), np.nan)}, "vertices contain NaN"),
    ({"deltas": np.full((2, 6, 3), np.inf)}, "deltas contain NaN or infinity"),
    ({"deltas": np.zeros((2, 5, 3))}, r"deltas have shape \(2, 5, 3\), expected \(2, 6, 3\)"),
    ({"names": ["a", "b", "c"]}, "deltas have shape"),
    ({"names": ["a", "a"]}, "not unique"),
    ({"triangles": np.array([[0, 1, 9]])}, "do not exist"),
    ({"ranges": np.array([[1.0, 0.0], [0.0, 1.0]])}, "minimum is above its maximum"),
    ({"face_weights": np.zeros(6)}, "vertex group is empty"),
    ({"face_weights": np.zeros(5)}, "face weights have shape"),
])
def test_character_bad_input_is_one_clear_line(overrides, message):
    with pytest.raises(FlameTalkError, match=message) as err:
        _tiny(**overrides)
    assert "\n" not in str(err.value) and "tiny" in str(err.value)


def test_character_load_bad_files(tmp_path):
    with pytest.raises(FlameTalkError, match="not found"):
        Character.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(FlameTalkError, match=re.escape("junk.npz is not a character file")):
        Character.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", rest=np.zeros((4, 3)))
    with pytest.raises(FlameTalkError, match="'triangles' is missing"):
        Character.load(tmp_path / "partial.npz")


def test_fit_round_trip(tmp_path):
    _, fitted = cached_fit()
    fitted.save(tmp_path / "fit.npz")
    back = Fit.load(tmp_path / "fit.npz")
    assert back.scale == fitted.scale and back.n_used == fitted.n_used and back.rms_mm == fitted.rms_mm
    for key in ("rotation", "translation", "shape", "flame_vertices", "tri", "bary", "offset"):
        np.testing.assert_array_equal(getattr(back, key), getattr(fitted, key))
    np.testing.assert_array_equal(back.face_index, fitted.face_index)
    bad = dict(np.load(tmp_path / "fit.npz").items())
    bad["bary"] = bad["bary"][:10]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(FlameTalkError, match="inconsistent"):
        Fit.load(tmp_path / "bad.npz")
