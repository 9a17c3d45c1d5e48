"""FLAME file reader: every supported layout reads to the same arrays; unsafe/garbled/wrong files are refused."""

from __future__ import annotations

import importlib.util
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures import hostile_files
from fixtures.common import REPO as ROOT
from flametalk.testing import synthetic_flame as synthetic

from blender_addon.flame import FlameFileError, load_flame, load_shape_coefficients
from blender_addon.flame.reader import WARN_2023

KEYS = {"v_template": "v_template", "shapedirs": "shapedirs", "posedirs": "posedirs",
        "J_regressor": "j_regressor", "weights": "weights"}


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return synthetic.make_arrays(n_verts=300, n_faces=500, seed=7)


@pytest.fixture(scope="module")
def files(arrays: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    have_torch = importlib.util.find_spec("torch") is not None
    return synthetic.write_all(str(tmp_path_factory.mktemp("flame")), arrays, with_pt=have_torch)


def _assert_same(model, arrays) -> None:
    for key, attr in KEYS.items():
        np.testing.assert_array_equal(getattr(model, attr), arrays[key], err_msg=key)
    np.testing.assert_array_equal(model.faces, arrays["f"].astype(np.int64))
    np.testing.assert_array_equal(model.parents, [-1, 0, 1, 1, 1])
    assert (model.n_shape, model.n_expr, model.n_pose) == (300, 100, 36)


@pytest.mark.parametrize("layout", ["pkl2020", "pkl2023", "npz", "pt", "pt-no-torch"])
def test_layouts_read_identically(layout: str, files: dict[str, str], arrays) -> None:
    use_torch = None
    if layout.startswith("pt"):
        if "pt" not in files:
            pytest.skip("writing the .pt layout needs torch")
        use_torch = False if layout == "pt-no-torch" else None
    model = load_flame(files[layout.split("-")[0]], use_torch=use_torch)
    _assert_same(model, arrays)
    assert model.version == ("2023" if layout == "pkl2023" else "2020")
    assert model.warnings == ([WARN_2023] if layout == "pkl2023" else [])


def test_torch_free_pt_reader_does_not_import_torch(files: dict[str, str]) -> None:
    if "pt" not in files:
        pytest.skip("writing the .pt layout needs torch")
    code = (
        "import sys; sys.modules['torch'] = None\n"  # makes `import torch` fail, as in Blender
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from blender_addon.flame import load_flame\n"
        f"m = load_flame({files['pt']!r})\n"
        "print(m.n_verts, m.source_format)\n"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["300", "pt"]


def test_official_2020_pickle_layout_needs_no_chumpy(files: dict[str, str]) -> None:
    data = Path(files["pkl2020"]).read_bytes()
    assert data[:2] == b"\x80\x02"  # Python 2 protocol
    assert b"cchumpy.ch\nCh\n" in data and b"cscipy.sparse.csc\ncsc_matrix\n" in data
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert importlib.util.find_spec("chumpy") is None
    model = load_flame(files["pkl2020"])
    assert model.source_format == "pkl-chumpy"
    assert "chumpy" not in sys.modules


def test_full_size_counts_come_from_file(tmp_path: Path) -> None:
    arrays = synthetic.make_arrays(seed=1)
    path = synthetic.write_pkl_2020(str(tmp_path / "generic_model.pkl"), arrays)
    model = load_flame(path)
    assert (model.n_verts, len(model.faces), model.n_joints) == (5023, 9976, 5)
    assert model.shapedirs.shape == (5023, 3, 400) and model.posedirs.shape == (5023, 3, 36)
    np.testing.assert_array_equal(model.j_regressor, arrays["J_regressor"])


def test_version_override_and_2023_warning(files: dict[str, str]) -> None:
    assert load_flame(files["pkl2020"], version="2023").warnings == [WARN_2023]
    assert load_flame(files["pkl2023"], version="2020").warnings == []
    with pytest.raises(FlameFileError, match="unknown FLAME version"):
        load_flame(files["pkl2020"], version="2017")


@pytest.mark.parametrize("module", ["posix", "os", "subprocess", "builtins"])
def test_malicious_pickle_is_refused_and_nothing_runs(module: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = hostile_files.write_malicious_pkl(str(tmp_path / "generic_model.pkl"), str(sentinel), module=module)
    with pytest.raises(FlameFileError) as info:
        load_flame(path)
    message = str(info.value)
    assert f"{module}.system" in message and "refused" in message and "\n" not in message
    assert not sentinel.exists()


def test_malicious_pickle_inside_pt_is_refused(files: dict[str, str], tmp_path: Path) -> None:
    if "pt" not in files:
        pytest.skip("writing the .pt layout needs torch")
    sentinel = tmp_path / "pwned"
    evil = hostile_files.write_malicious_pkl(str(tmp_path / "evil.pkl"), str(sentinel))
    path = tmp_path / "FLAME_with_eye.pt"
    with zipfile.ZipFile(files["pt"]) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = Path(evil).read_bytes() if item.filename.endswith("data.pkl") else src.read(item)
            dst.writestr(item, data)
    for use_torch in (None, False):
        with pytest.raises(FlameFileError, match=r"posix\.system.*refused"):
            load_flame(path, use_torch=use_torch)
    assert not sentinel.exists()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_missing_and_garbled_files(files: dict[str, str], tmp_path: Path) -> None:
    good = Path(files["pkl2020"]).read_bytes()
    cases = {
        "not found": str(tmp_path / "nope.pkl"),
        "not found ": str(tmp_path),  # a folder is not a file
        "size 0": _write(tmp_path / "empty.pkl", b""),
        "damaged": _write(tmp_path / "cut.pkl", good[: len(good) // 2]),
        "not a FLAME": _write(tmp_path / "random.pkl", os.urandom(4096)),
        "not a FLAME model": _write(tmp_path / "text.pkl", b"hello, this is not a pickle\n" * 10),
        "is not a FLAME model (top level": _write(tmp_path / "list.pkl", b"\x80\x02]q\x00."),
        "damaged or not": _write(tmp_path / "bad.pt", b"PK\x03\x04" + os.urandom(200)),
    }
    for expected, path in cases.items():
        with pytest.raises(FlameFileError) as info:
            load_flame(path)
        assert expected.strip() in str(info.value), (path, str(info.value))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda a: a.pop("shapedirs"), "'shapedirs' is missing"),
        (lambda a: a.update(v_template=a["v_template"][:, :2]), "'v_template' has shape (300, 2), expected (N, 3)"),
        (lambda a: a.update(shapedirs=a["shapedirs"][:10]), "'shapedirs' has shape (10, 3, 400)"),
        (lambda a: a.update(shapedirs=a["shapedirs"][:, :, :300]), "no expressions"),
        (lambda a: a.update(posedirs=a["posedirs"][:, :, :30]), "'posedirs' has shape"),
        (lambda a: a.update(J_regressor=a["J_regressor"][:4]), "'J_regressor' has shape (4, 300)"),
        (lambda a: a.update(weights=a["weights"][:, :4]), "'weights' has shape"),
        (lambda a: a.update(f=a["f"].astype(np.int64) + 1000), "vertices that do not exist"),
        (lambda a: a.update(f=a["f"].astype(np.float64)), "integer vertex indices"),
        (lambda a: a["v_template"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda a: a.update(kintree_table=np.array([[0, 0, 5, 1, 1], [0, 1, 2, 3, 4]])), "not a tree"),
    ],
)
def test_wrong_array_shapes(change, expected: str, arrays, tmp_path: Path) -> None:
    broken = {k: v.copy() for k, v in arrays.items()}
    change(broken)
    path = synthetic.write_npz(str(tmp_path / "flame.npz"), broken)
    with pytest.raises(FlameFileError) as info:
        load_flame(path)
    assert expected in str(info.value)


def test_chumpy_expression_objects_are_not_evaluated(arrays, tmp_path: Path) -> None:
    # A derived chumpy object (not a plain Ch array) would need chumpy itself: clear error instead.
    content = dict(arrays.items())
    content["shapedirs"] = synthetic._Obj("chumpy.ch_ops", "add", {"a": 1, "b": 2})
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(synthetic._Emitter(py2=True).dumps(content))
    with pytest.raises(FlameFileError, match=r"'shapedirs' is unreadable.*chumpy\.ch_ops\.add"):
        load_flame(str(path))


def test_shape_coefficients(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.arange(10.0))
    shape = load_shape_coefficients(str(tmp_path / "s.npy"))
    assert shape.shape == (300,) and shape[9] == 9 and not shape[10:].any()
    np.savez(tmp_path / "s.npz", shape=np.ones((1, 300)))
    assert load_shape_coefficients(str(tmp_path / "s.npz")).sum() == 300
    np.save(tmp_path / "big.npy", np.zeros(301))
    with pytest.raises(FlameFileError, match="up to 300"):
        load_shape_coefficients(str(tmp_path / "big.npy"))
    with pytest.raises(FlameFileError, match="not found"):
        load_shape_coefficients(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_real_pickler_output_with_chumpy_and_scipy_classes(protocol: int, arrays, tmp_path: Path) -> None:
    """Python's own pickler (protocol 0/1 use copy_reg._reconstructor, 2 uses NEWOBJ) writing a real scipy csc
    matrix and objects of a stand-in `chumpy.ch.Ch` class that exists only while writing."""
    import pickle
    import types

    sparse = pytest.importorskip("scipy.sparse")

    class Ch:  # what matters is the pickled name and state, as written by chumpy's __getstate__
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake = types.ModuleType("chumpy.ch")
    fake.Ch = Ch
    sys.modules.update({"chumpy": types.ModuleType("chumpy"), "chumpy.ch": fake})
    try:
        content = dict(arrays, shapedirs=Ch(arrays["shapedirs"]), v_template=Ch(arrays["v_template"]),
                       J_regressor=sparse.csc_matrix(arrays["J_regressor"]), bs_style="lbs")
        data = pickle.dumps(content, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(data)
    if protocol < 2:
        assert b"copy_reg\n_reconstructor" in data
    _assert_same(load_flame(str(path)), arrays)
