"""A character (a mesh with shape keys) as the arrays the worker's retarget reads, and its fit stored with it.

    obj = find_character(name)               # the mesh named, else the only mesh with shape keys
    write_character_file(obj, "char.npz", face_group=..., jaw_bone=...)   # flame/characterfile.py's layout
    store_fit(obj, flame.characterfile.read_fit("fit.npz"))               # survives save and reload
    write_stored_fit(obj, "fit.npz")         # True when the mesh has a fit that still matches it

Arrays come from the mesh datablock in the object's own frame and units (object transforms are not applied):
rest = the reference (basis) key's coordinates; triangles = loop triangles; per shape key its coordinates minus
those of its relative key (what Blender adds at weight 1), slider range = slider_min..slider_max; optional face
vertex group weights; optional jaw bone: its rest head and axes in the mesh object's frame (from the armature the
mesh is deformed by or parented to).

The fit (the FLAME head <-> character correspondence, flame/characterfile.py FIT_FIELDS) lives on the mesh: the
per-vertex part as point attributes (`flametalk_fit_tri`, `flametalk_fit_bary`, `flametalk_fit_offset`), the rest as
the custom property `flametalk_fit` (with the vertex count it was made for: a mesh edited since has no fit).
"""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from ..flame import characterfile

FIT_PROP = "flametalk_fit"
TRI_ATTR, BARY_ATTR, OFFSET_ATTR = "flametalk_fit_tri", "flametalk_fit_bary", "flametalk_fit_offset"


class CharacterError(ValueError):
    """One readable line: what is wrong with the character and what to do."""


def has_shape_keys(obj: bpy.types.Object) -> bool:
    keys = getattr(obj.data, "shape_keys", None) if obj.type == "MESH" else None
    return keys is not None and len(keys.key_blocks) > 1


def find_character(name: str | None = None, objects: Any = None) -> bpy.types.Object:
    """The object `name` (it must be a mesh with shape keys), else the only mesh with shape keys."""
    objects = bpy.data.objects if objects is None else objects
    if name:
        obj = objects.get(name)
        if obj is None:
            meshes = ", ".join(o.name for o in objects if o.type == "MESH")[:200] or "none"
            raise CharacterError(f"no object named '{name}' (meshes: {meshes})")
        check_character(obj)
        return obj
    found = [o for o in objects if o.type == "MESH" and has_shape_keys(o)]
    if not found:
        raise CharacterError("no mesh with shape keys found: the character needs shape keys to retarget onto")
    if len(found) > 1:
        names = ", ".join(o.name for o in found[:6])
        raise CharacterError(f"several meshes have shape keys ({names}): name one with --object")
    return found[0]


def check_character(obj: bpy.types.Object) -> None:
    if obj.type != "MESH":
        raise CharacterError(f"'{obj.name}' is not a mesh (it is {obj.type.lower()}): pick the head mesh")
    if not has_shape_keys(obj):
        raise CharacterError(f"mesh '{obj.name}' has no shape keys (besides the basis): nothing to retarget onto; "
                             "pick a mesh with shape keys (ARKit-named or your own)")


def armature_of(obj: bpy.types.Object) -> bpy.types.Object | None:
    """The armature deforming `obj` (its Armature modifier), else its armature parent."""
    arm = obj.find_armature()
    if arm is None and obj.parent is not None and obj.parent.type == "ARMATURE":
        arm = obj.parent
    return arm


def bone_rest(obj: bpy.types.Object, bone: str) -> np.ndarray:
    """4x4 rest matrix of `bone` (of the character's armature) in the mesh object's frame."""
    arm = armature_of(obj)
    if arm is None:
        raise CharacterError(f"'{obj.name}' has no armature (modifier or parent): cannot use bone '{bone}'")
    if bone not in arm.data.bones:
        names = ", ".join(b.name for b in arm.data.bones)[:200]
        raise CharacterError(f"armature '{arm.name}' has no bone '{bone}' (bones: {names})")
    mat = obj.matrix_world.inverted() @ arm.matrix_world @ arm.data.bones[bone].matrix_local
    return np.array(mat, dtype=np.float64)


def _coords(data: Any, n: int) -> np.ndarray:
    out = np.empty(3 * n, dtype=np.float32)
    data.foreach_get("co", out)
    return out.reshape(n, 3)


def extract(obj: bpy.types.Object, face_group: str | None = None, jaw_bone: str | None = None) -> dict[str, Any]:
    """The character arrays of `obj` (keyword arguments of characterfile.write_character)."""
    check_character(obj)
    mesh = obj.data
    n = len(mesh.vertices)
    key = mesh.shape_keys
    basis = key.reference_key
    coords = {b.name: _coords(b.data, n) for b in key.key_blocks}
    rest = coords[basis.name].astype(np.float64)
    blocks = [b for b in key.key_blocks if b != basis]
    deltas = np.stack([coords[b.name] - coords[(b.relative_key or basis).name] for b in blocks]).astype(np.float32)
    ranges = np.array([[b.slider_min, b.slider_max] for b in blocks], dtype=np.float64)
    mesh.calc_loop_triangles()
    tris = np.empty(3 * len(mesh.loop_triangles), dtype=np.int32)
    mesh.loop_triangles.foreach_get("vertices", tris)
    if not len(tris):
        raise CharacterError(f"mesh '{obj.name}' has no faces: the fit needs a surface")
    weights = None
    if face_group:
        group = obj.vertex_groups.get(face_group)
        if group is None:
            raise CharacterError(f"mesh '{obj.name}' has no vertex group '{face_group}'")
        weights = np.zeros(n)
        gi = group.index
        for v in mesh.vertices:
            for g in v.groups:
                if g.group == gi:
                    weights[v.index] = g.weight
        if not np.any(weights > 0.5):
            raise CharacterError(f"vertex group '{face_group}' is empty (no weight above 0.5): paint the face")
    pivot = axes = None
    if jaw_bone:
        mat = bone_rest(obj, jaw_bone)
        pivot, axes = mat[:3, 3], mat[:3, :3]
    return {"rest": rest, "triangles": tris.reshape(-1, 3).astype(np.int64), "names": [b.name for b in blocks],
            "deltas": deltas, "ranges": ranges, "face_weights": weights, "jaw_pivot": pivot, "jaw_axes": axes,
            "name": obj.name}


def write_character_file(obj: bpy.types.Object, path: str, face_group: str | None = None,
                         jaw_bone: str | None = None) -> dict[str, Any]:
    """Write `obj` as a character file; returns the arrays."""
    arrays = extract(obj, face_group, jaw_bone)
    characterfile.write_character(path, **arrays)
    return arrays


# ---- the fit, stored with the mesh ----
def _attribute(mesh: bpy.types.Mesh, name: str, kind: str) -> Any:
    attr = mesh.attributes.get(name)
    if attr is not None and (attr.data_type != kind or attr.domain != "POINT"):
        mesh.attributes.remove(attr)
        attr = None
    return attr if attr is not None else mesh.attributes.new(name, kind, "POINT")


def store_fit(obj: bpy.types.Object, fit: dict[str, Any]) -> None:
    """Keep `fit` (characterfile.check_fit's dict) on the mesh; it is saved with the .blend."""
    mesh = obj.data
    n = len(mesh.vertices)
    fit = characterfile.check_fit(fit, f"the fit of '{obj.name}'")
    if fit["tri"].shape[0] != n:
        raise CharacterError(f"the fit has {fit['tri'].shape[0]} vertices, mesh '{obj.name}' {n}: fit it again")
    _attribute(mesh, TRI_ATTR, "INT").data.foreach_set("value", fit["tri"].astype(np.int32))
    _attribute(mesh, BARY_ATTR, "FLOAT_VECTOR").data.foreach_set("vector", fit["bary"].astype(np.float32).ravel())
    _attribute(mesh, OFFSET_ATTR, "FLOAT").data.foreach_set("value", fit["offset"].astype(np.float32))
    mesh[FIT_PROP] = {
        "n_verts": n, "scale": fit["scale"], "rotation": np.asarray(fit["rotation"], float).ravel().tolist(),
        "translation": np.asarray(fit["translation"], float).tolist(),
        "shape": np.asarray(fit["shape"], float).tolist(), "mm_per_unit": fit["mm_per_unit"],
        "rms_mm": fit["rms_mm"], "max_mm": fit["max_mm"], "n_used": fit["n_used"],
        "flame_vertices": np.asarray(fit["flame_vertices"], float).ravel().tolist(),
    }


def clear_fit(obj: bpy.types.Object) -> None:
    mesh = obj.data
    if FIT_PROP in mesh:
        del mesh[FIT_PROP]
    for name in (TRI_ATTR, BARY_ATTR, OFFSET_ATTR):
        attr = mesh.attributes.get(name)
        if attr is not None:
            mesh.attributes.remove(attr)


def fit_summary(obj: bpy.types.Object) -> dict[str, float] | None:
    """{"rms_mm", "max_mm", "vertices_used"} of the stored fit, or None (none, or the mesh changed since)."""
    if obj is None or obj.type != "MESH":
        return None
    info = obj.data.get(FIT_PROP)
    if info is None or int(info.get("n_verts", -1)) != len(obj.data.vertices):
        return None
    return {"rms_mm": float(info["rms_mm"]), "max_mm": float(info["max_mm"]), "vertices_used": int(info["n_used"])}


def stored_fit(obj: bpy.types.Object) -> dict[str, Any] | None:
    """The fit stored on the mesh (checked), or None when there is none or the mesh changed since."""
    mesh = obj.data
    n = len(mesh.vertices)
    info = mesh.get(FIT_PROP)
    attrs = [mesh.attributes.get(a) for a in (TRI_ATTR, BARY_ATTR, OFFSET_ATTR)]
    if info is None or any(a is None for a in attrs) or int(info.get("n_verts", -1)) != n:
        return None
    tri = np.empty(n, dtype=np.int32)
    attrs[0].data.foreach_get("value", tri)
    bary = np.empty(3 * n, dtype=np.float32)
    attrs[1].data.foreach_get("vector", bary)
    offset = np.empty(n, dtype=np.float32)
    attrs[2].data.foreach_get("value", offset)
    try:
        fit = {"scale": float(info["scale"]), "rotation": np.array(info["rotation"], float).reshape(3, 3),
               "translation": np.array(info["translation"], float), "shape": np.array(info["shape"], float),
               "flame_vertices": np.array(info["flame_vertices"], np.float32).reshape(-1, 3), "tri": tri,
               "bary": bary.reshape(n, 3), "offset": offset, "mm_per_unit": float(info["mm_per_unit"]),
               "rms_mm": float(info["rms_mm"]), "max_mm": float(info["max_mm"]), "n_used": int(info["n_used"])}
        return characterfile.check_fit(fit, f"the fit stored on '{obj.name}'")
    except (KeyError, TypeError, ValueError):
        return None


def write_stored_fit(obj: bpy.types.Object, path: str) -> bool:
    """Write the stored fit as a fit file; False when the mesh has none (or it no longer matches)."""
    fit = stored_fit(obj)
    if fit is None:
        return False
    characterfile.write_fit(path, fit)
    return True


def show_fitted_head(obj: bpy.types.Object, faces: np.ndarray) -> bpy.types.Object:
    """A mesh object with the fitted FLAME head (the stored fit's vertices, FLAME's triangles `faces`), parented to
    the character so it sits where the fit put it; an earlier one is replaced. For checking the fit by eye."""
    fit = stored_fit(obj)
    if fit is None:
        raise CharacterError(f"'{obj.name}' has no fit yet (or the mesh changed since): press Fit first")
    verts = np.asarray(fit["flame_vertices"], np.float64)
    faces = np.asarray(faces, np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.max() >= len(verts):
        raise CharacterError("the FLAME file does not match the fit (another model?): fit the character again")
    name = f"{obj.name} FLAME fit"
    old = bpy.data.objects.get(name)
    if old is not None:
        mesh = old.data
        bpy.data.objects.remove(old)
        if mesh.users == 0:
            bpy.data.meshes.remove(mesh)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts.tolist(), [], faces.tolist())
    mesh.update()
    head = bpy.data.objects.new(name, mesh)
    for collection in obj.users_collection[:1] or [bpy.context.scene.collection]:
        collection.objects.link(head)
    head.parent = obj  # parent inverse stays identity: the vertices are in the character's frame
    head.display_type = "WIRE"
    head.hide_render = True
    return head


def fit_matrix(fit: dict[str, Any]) -> np.ndarray:
    """4x4 of a stored fit: Blender-axes FLAME (metres) -> the mesh's object frame (scale * rotation, translation);
    what a hand-placed FLAME head's placement means to the fit."""
    out = np.eye(4)
    out[:3, :3] = float(np.asarray(fit["scale"])) * np.asarray(fit["rotation"], np.float64)
    out[:3, 3] = np.asarray(fit["translation"], np.float64)
    return out


def place_flame_head(obj: bpy.types.Object, head_mesh: bpy.types.Object, head_root: bpy.types.Object) -> str:
    """Move the FLAME head (`head_root`: its armature, carrying `head_mesh`) over the character `obj`, as a start
    for placing it by hand before Fit: where the stored fit puts it, else a rough guess from the two meshes'
    bounding boxes in the character's frame (no rotation: both +Z up facing -Y; uniform scale from the widths;
    centred left-right and front-back; tops aligned). Returns "fit" or "bounding box"."""
    fit = stored_fit(obj)
    if fit is not None:
        placement, how = fit_matrix(fit), "fit"
    else:
        char = _coords(obj.data.vertices, len(obj.data.vertices))
        flame = _coords(head_mesh.data.vertices, len(head_mesh.data.vertices))
        lo_c, hi_c, lo_f, hi_f = char.min(0), char.max(0), flame.min(0), flame.max(0)
        if hi_f[0] - lo_f[0] <= 0 or hi_c[0] - lo_c[0] <= 0:
            raise CharacterError(f"'{obj.name}' or the FLAME head has no extent: cannot place the head")
        scale = (hi_c[0] - lo_c[0]) / (hi_f[0] - lo_f[0])
        placement = np.eye(4)
        placement[:3, :3] *= scale
        placement[:2, 3] = (lo_c[:2] + hi_c[:2]) / 2 - scale * (lo_f[:2] + hi_f[:2]) / 2
        placement[2, 3] = hi_c[2] - scale * hi_f[2]
        how = "bounding box"
    target = np.array(obj.matrix_world, np.float64) @ placement  # where the FLAME mesh should be, world
    local = np.eye(4) if head_root == head_mesh else np.array(head_mesh.matrix_local, np.float64)  # to its root
    head_root.matrix_world = _matrix(target @ np.linalg.inv(local))
    return how


def _matrix(values: np.ndarray) -> Any:
    import mathutils  # Blender's; imported on use like bpy's other modules

    return mathutils.Matrix([list(map(float, row)) for row in values])
