"""Place FLAME Head (the Character section): the panel's FLAME head is moved over the character — where the stored
fit puts it, else by the bounding boxes — so the user adjusts it by hand and Fit starts from there (the placement
Fit reads back is the fit's own similarity); without a FLAME head it is one report and nothing moves."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from fixtures.gltf import ICT_FACE  # noqa: E402
from fixtures.ict_flame import cached_fit, expr_keys, ict_flame, rotation  # noqa: E402

from blender_addon.flame import characterfile  # noqa: E402
from blender_addon.scene import character, rig  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def addon():
    import addon_utils

    addon_utils.enable("blender_addon", default_set=True)
    yield
    addon_utils.disable("blender_addon", default_set=True)


def _world(obj: bpy.types.Object) -> np.ndarray:
    co = np.empty(3 * len(obj.data.vertices), np.float64)
    obj.data.vertices.foreach_get("co", co)
    mat = np.array(obj.matrix_world, np.float64)
    return co.reshape(-1, 3) @ mat[:3, :3].T + mat[:3, 3]


def _scene() -> tuple[bpy.types.Object, rig.FlameRig]:
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    bpy.ops.import_scene.gltf(filepath=str(ICT_FACE))
    obj = bpy.data.objects["ICT_Face"]
    obj.scale, obj.location = (100.0, 100.0, 100.0), (12.0, -30.0, 150.0)  # cm, moved (not applied)
    head = rig.build_rig(ict_flame(expr_keys()))  # its template is the ICT head (FLAME-format test model)
    bpy.context.scene.flametalk_character.target = obj
    bpy.context.view_layer.update()
    return obj, head


def test_place_by_bounding_box_then_by_fit() -> None:
    obj, head = _scene()
    with pytest.raises(RuntimeError, match="no FLAME head to place"):
        bpy.ops.flametalk.character_place_head()
    assert not bpy.context.scene.flametalk_character.use_placement
    bpy.context.scene.flametalk.head = head.armature
    assert bpy.ops.flametalk.character_place_head() == {"FINISHED"}
    bpy.context.view_layer.update()
    assert bpy.context.scene.flametalk_character.use_placement
    # no fit yet: bounding boxes (the test model's template is this very head: it lands on it)
    err = np.abs(_world(head.mesh) - _world(obj)).max()
    assert err < 0.01  # cm
    # a stored fit with a known similarity: the head goes exactly there, and Fit's start reads it back
    _, fitted = cached_fit(1.0, split=0.0)
    fields = {k: getattr(fitted, k) for k in characterfile.FIT_FIELDS}
    fields["scale"], fields["rotation"] = 1.1, rotation((5.0, -8.0, 12.0))
    fields["translation"] = np.array([0.01, -0.02, 0.03])
    character.store_fit(obj, fields)
    assert bpy.ops.flametalk.character_place_head() == {"FINISHED"}
    bpy.context.view_layer.update()
    init = np.array(obj.matrix_world.inverted() @ head.mesh.matrix_world)  # what Fit sends as its start
    np.testing.assert_allclose(init, character.fit_matrix(fields), atol=1e-5)
    assert np.abs(init[:3, :3] - np.eye(3)).max() > 0.1  # really moved from the bounding-box placement
