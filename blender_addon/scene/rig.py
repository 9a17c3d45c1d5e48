"""Build an exactly animating FLAME rig (armature + mesh) in the current scene.

How the rig reproduces FLAME exactly (see lbs.py for the model):
- Every bone points up (Blender +Z) with roll 0, so its rest orientation is the FLAME->Blender axis change
  itself: a bone's local axes ARE FLAME's axes. A bone's quaternion is therefore FLAME's joint rotation as is,
  and pose correctives read (R - I) straight from it.
- Control bones `root, neck, jaw, eye_L, eye_R` (parented as FLAME) carry the user's rotations. Each has a
  deform child `DEF-<name>` whose vertex group holds FLAME's skinning weights.
- FLAME regresses its joints from the shaped mesh, so the pivots move with expression: J = J_rest + dJ(expr),
  linear in the coefficients. A hidden helper mesh (`<name>_joint_offsets`, one vertex per bone, shape keys driven
  by the head's expression values) computes those offsets; a Copy Location constraint puts them on the bones
  (control: dJ_k - dJ_parent; deform: -dJ_k), which makes every bone pivot about FLAME's shaped joint.
- Pose correctives: shape keys `pose_000..pose_035` hold FLAME's posedirs; each is driven by a simple expression
  (no Python needed, so it keeps working in saved files with auto-run off) computing one entry of R - I from the
  bone's quaternion (normalised, as Blender normalises it to build the bone matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from ..flame import JOINT_NAMES, FlameModel, flame_to_blender

EXPR_KEY = "exp_{:03d}"
POSE_KEY = "pose_{:03d}"
DEF_PREFIX = "DEF-"
SLIDER_LIMIT = 10.0  # Blender's hard limit for shape-key sliders; FLAME coefficients go negative and above 1
BONE_LENGTH = {"root": 0.04, "neck": 0.03, "jaw": 0.025, "eye_L": 0.015, "eye_R": 0.015}
OFFSET_CONSTRAINT = "FLAME joint offset"
RIG_TAG = "flametalk_rig"  # custom property marking the armature object of a FlameTalk rig

# Entry (a, b) of R - I for the unit quaternion q / |q|, written as driver expressions over w, x, y, z.
_NORM = "(w*w+x*x+y*y+z*z)"
_R_MINUS_I = (
    ("-2*(y*y+z*z)", "2*(x*y-w*z)", "2*(x*z+w*y)"),
    ("2*(x*y+w*z)", "-2*(x*x+z*z)", "2*(y*z-w*x)"),
    ("2*(x*z-w*y)", "2*(y*z+w*x)", "-2*(x*x+y*y)"),
)


@dataclass
class FlameRig:
    armature: bpy.types.Object
    mesh: bpy.types.Object
    helper: bpy.types.Object
    n_expr: int
    warnings: list[str]

    @property
    def key(self) -> bpy.types.Key:
        return self.mesh.data.shape_keys


def pose_driver_expression(a: int, b: int) -> str:
    return f"{_R_MINUS_I[a][b]}/{_NORM}"


def _prepare(model: FlameModel, shape: np.ndarray | None) -> dict[str, np.ndarray]:
    """All numbers the rig needs, in Blender's frame where they are positions, before touching bpy data."""
    if len(model.parents) != len(JOINT_NAMES):
        raise ValueError(f"expected FLAME's {len(JOINT_NAMES)} joints, the model has {len(model.parents)}")
    base = model.v_template.copy()
    if shape is not None:
        shape = np.asarray(shape, dtype=np.float64).ravel()
        if shape.size > model.n_shape or not np.all(np.isfinite(shape)):
            raise ValueError(f"expected up to {model.n_shape} finite shape coefficients, got {shape.size}")
        base += model.shape_dirs[:, :, : shape.size] @ shape
    joints = model.j_regressor @ base  # FLAME frame, zero expression
    expr = model.expr_dirs  # (V, 3, E)
    d_joint = np.einsum("jv,vce->ejc", model.j_regressor, expr)  # (E, J, 3) joint shift per unit coefficient
    parents = model.parents
    helper = np.zeros((expr.shape[2], 2 * len(JOINT_NAMES), 3))
    for j in range(len(JOINT_NAMES)):
        parent_shift = d_joint[:, parents[j]] if parents[j] >= 0 else 0.0
        helper[:, j] = d_joint[:, j] - parent_shift  # control bone: its pivot relative to its parent's
        helper[:, len(JOINT_NAMES) + j] = -d_joint[:, j]  # deform bone: back to the shaped pivot
    return {
        "verts": flame_to_blender(base),
        "expr": flame_to_blender(np.moveaxis(expr, 2, 0)),  # (E, V, 3)
        "pose": flame_to_blender(np.moveaxis(model.posedirs, 2, 0)),  # (P, V, 3)
        "joints": flame_to_blender(joints),
        "helper": helper,  # bone-local (= FLAME-frame) offsets: Copy Location copies them as they are
    }


def _add_shape_keys(obj: bpy.types.Object, base: np.ndarray, names: list[str], deltas: np.ndarray) -> None:
    obj.shape_key_add(name="Basis", from_mix=False)
    for name, delta in zip(names, deltas):
        block = obj.shape_key_add(name=name, from_mix=False)
        block.data.foreach_set("co", (base + delta).astype(np.float32).ravel())
        block.slider_min, block.slider_max = -SLIDER_LIMIT, SLIDER_LIMIT


def _new_mesh_object(name: str, verts: np.ndarray, faces: np.ndarray | None) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    if faces is not None and len(faces):
        n_faces = len(faces)
        mesh.loops.add(3 * n_faces)
        mesh.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
        mesh.polygons.add(n_faces)
        mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))
        mesh.polygons.foreach_set("use_smooth", np.ones(n_faces, dtype=bool))
    mesh.update(calc_edges=True)
    return bpy.data.objects.new(name, mesh)


def _build_bones(arm_obj: bpy.types.Object, joints: np.ndarray, parents: np.ndarray) -> None:
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        edit_bones = arm_obj.data.edit_bones
        for j, name in enumerate(JOINT_NAMES):
            head = joints[j]
            for bone_name, length in ((name, BONE_LENGTH[name]), (DEF_PREFIX + name, 0.5 * BONE_LENGTH[name])):
                bone = edit_bones.new(bone_name)
                bone.head = head
                bone.tail = head + np.array([0.0, 0.0, length])  # +Z with roll 0: local axes = FLAME axes
                bone.roll = 0.0
                bone.use_connect = False
                bone.use_deform = bone_name.startswith(DEF_PREFIX)
        for j, name in enumerate(JOINT_NAMES):
            edit_bones[DEF_PREFIX + name].parent = edit_bones[name]
            if parents[j] >= 0:
                edit_bones[name].parent = edit_bones[JOINT_NAMES[parents[j]]]
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous


def _setup_pose(arm_obj: bpy.types.Object, helper: bpy.types.Object) -> None:
    for j, name in enumerate(JOINT_NAMES):
        for bone_name, group in ((name, f"J{j}"), (DEF_PREFIX + name, f"D{j}")):
            pbone = arm_obj.pose.bones[bone_name]
            pbone.rotation_mode = "QUATERNION"
            con = pbone.constraints.new("COPY_LOCATION")
            con.name = OFFSET_CONSTRAINT
            con.target = helper
            con.subtarget = group
            con.target_space = "LOCAL"
            con.owner_space = "LOCAL"
            con.use_offset = not bone_name.startswith(DEF_PREFIX)  # keep a user's own bone translation
            if bone_name.startswith(DEF_PREFIX):
                pbone.lock_location = pbone.lock_rotation = pbone.lock_scale = (True, True, True)
                pbone.lock_rotation_w = True


def _add_quaternion_vars(driver: bpy.types.Driver, arm_obj: bpy.types.Object, bone: str) -> None:
    for index, var_name in enumerate("wxyz"):
        var = driver.variables.new()
        var.name = var_name
        var.type = "SINGLE_PROP"
        target = var.targets[0]
        target.id_type = "OBJECT"
        target.id = arm_obj
        target.data_path = f'pose.bones["{bone}"].rotation_quaternion[{index}]'


def _add_pose_drivers(key: bpy.types.Key, arm_obj: bpy.types.Object) -> None:
    for j, bone in enumerate(JOINT_NAMES[1:]):
        for a in range(3):
            for b in range(3):
                name = POSE_KEY.format(9 * j + 3 * a + b)
                driver = key.driver_add(f'key_blocks["{name}"].value').driver
                driver.type = "SCRIPTED"
                _add_quaternion_vars(driver, arm_obj, bone)
                driver.expression = pose_driver_expression(a, b)


def _add_helper_drivers(helper_key: bpy.types.Key, key: bpy.types.Key, n_expr: int) -> None:
    for e in range(n_expr):
        path = f'key_blocks["{EXPR_KEY.format(e)}"].value'
        driver = helper_key.driver_add(path).driver
        driver.type = "SCRIPTED"
        var = driver.variables.new()
        var.name = "v"
        var.type = "SINGLE_PROP"
        var.targets[0].id_type = "KEY"
        var.targets[0].id = key
        var.targets[0].data_path = path
        driver.expression = "v"


def build_rig(
    model: FlameModel,
    shape: np.ndarray | None = None,
    name: str = "FLAME",
    collection: bpy.types.Collection | None = None,
) -> FlameRig:
    """Create `<name>_rig` (armature), `<name>_head` (mesh, FLAME vertex order) and the hidden helper.

    Raises ValueError before creating anything when the inputs do not fit; removes what it made if Blender
    fails half-way, so the scene is unchanged on error.
    """
    data = _prepare(model, shape)
    collection = collection or bpy.context.scene.collection
    created: list[bpy.types.ID] = []
    try:
        arm = bpy.data.armatures.new(f"{name}_rig")
        created.append(arm)
        arm_obj = bpy.data.objects.new(f"{name}_rig", arm)
        created.append(arm_obj)
        mesh_obj = _new_mesh_object(f"{name}_head", data["verts"], model.faces)
        created += [mesh_obj.data, mesh_obj]
        helper = _new_mesh_object(f"{name}_joint_offsets", np.zeros((2 * len(JOINT_NAMES), 3)), None)
        created += [helper.data, helper]
        for obj in (arm_obj, mesh_obj, helper):
            collection.objects.link(obj)

        n_expr = model.n_expr
        expr_names = [EXPR_KEY.format(e) for e in range(n_expr)]
        pose_names = [POSE_KEY.format(p) for p in range(model.n_pose)]
        _add_shape_keys(mesh_obj, data["verts"], expr_names + pose_names, np.concatenate([data["expr"], data["pose"]]))
        _add_shape_keys(helper, np.zeros((2 * len(JOINT_NAMES), 3)), expr_names, data["helper"])

        for j, joint in enumerate(JOINT_NAMES):
            weights = model.weights[:, j]
            group = mesh_obj.vertex_groups.new(name=DEF_PREFIX + joint)
            for value in np.unique(weights[weights > 0]):  # one call per distinct weight, not per vertex
                group.add(np.nonzero(weights == value)[0].tolist(), float(value), "REPLACE")
            helper.vertex_groups.new(name=f"J{j}").add([j], 1.0, "REPLACE")
            helper.vertex_groups.new(name=f"D{j}").add([len(JOINT_NAMES) + j], 1.0, "REPLACE")

        _build_bones(arm_obj, data["joints"], model.parents)
        _setup_pose(arm_obj, helper)
        _add_pose_drivers(mesh_obj.data.shape_keys, arm_obj)
        _add_helper_drivers(helper.data.shape_keys, mesh_obj.data.shape_keys, n_expr)

        modifier = mesh_obj.modifiers.new("Armature", "ARMATURE")
        modifier.object = arm_obj
        modifier.use_vertex_groups = True
        modifier.use_bone_envelopes = False
        modifier.use_deform_preserve_volume = False  # FLAME blends matrices linearly
        for child in (mesh_obj, helper):
            child.parent = arm_obj  # both identity transforms: no parent inverse needed
        helper.hide_render = True
        helper.display_type = "WIRE"
        helper.hide_set(True)  # hidden in the viewport but still evaluated (the constraints need it)

        arm_obj[RIG_TAG] = 1
        arm_obj["flametalk_mesh"] = mesh_obj
        arm_obj["flametalk_helper"] = helper
        arm_obj["flametalk_flame_version"] = model.version
        arm_obj.show_in_front = True
        mesh_obj["flametalk_n_expr"] = n_expr
    except BaseException:
        _remove_ids(created)
        raise
    return FlameRig(arm_obj, mesh_obj, helper, n_expr, list(model.warnings))


def _remove_ids(ids: list[bpy.types.ID]) -> None:
    for datablock in reversed(ids):
        try:
            if isinstance(datablock, bpy.types.Object):
                bpy.data.objects.remove(datablock)
            elif isinstance(datablock, bpy.types.Mesh):
                bpy.data.meshes.remove(datablock)
            elif isinstance(datablock, bpy.types.Armature):
                bpy.data.armatures.remove(datablock)
        except ReferenceError:
            pass  # already gone with its owner


def find_rig(obj: bpy.types.Object | None) -> FlameRig | None:
    """The FlameRig that `obj` (the armature, the head or the helper) belongs to, if any."""
    if obj is None:
        return None
    arm = obj if RIG_TAG in obj else obj.parent
    if arm is None or RIG_TAG not in arm:
        return None
    mesh, helper = arm.get("flametalk_mesh"), arm.get("flametalk_helper")
    if mesh is None or helper is None:
        return None
    return FlameRig(arm, mesh, helper, int(mesh.get("flametalk_n_expr", 0)), [])


def evaluated_world_vertices(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph | None = None) -> np.ndarray:
    """(V, 3) float64 world-space vertices of `obj` after shape keys, drivers, constraints and modifiers."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        co = np.empty(3 * len(mesh.vertices), dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
    finally:
        evaluated.to_mesh_clear()
    matrix = np.array(evaluated.matrix_world, dtype=np.float64)
    return co.reshape(-1, 3).astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
