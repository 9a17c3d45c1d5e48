"""A head-shaped synthetic FLAME model for add-on tests and the README preview (FLAME itself cannot ship).

flame/synthetic.py makes random triangles on an ellipsoid (right for the maths, unrecognisable as a head). This
one is a closed surface shaped like a stylised head: a tapered ellipsoid with a nose, brow and cheeks, two eyeballs,
a mouth slit whose lower lip and chin are skinned to the jaw joint (a jaw rotation opens the mouth) and a small
mouth cavity behind it. `vertex_part` tells the parts apart (0 skin, 1 eyes, 2 mouth cavity) for materials. Every
vertex is used by a face (exporters drop unused ones). Arrays are in FLAME's layout and frame (metres, +Y up, face
towards +Z), so the add-on reads it like a real FLAME file.
"""

from __future__ import annotations

import numpy as np

N_SHAPE, N_EXPR, N_JOINTS = 300, 100, 5
MOUTH_Y = -0.045
EYE_RADIUS = 0.0125


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _head_surface(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid (n_lat rings x n_lon) + 2 poles; returns vertices, per-ring latitude index, per-vertex longitude."""
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat + 2)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False) + np.pi / 2  # lon index 0 faces +Z
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    direction = np.stack([np.cos(la) * np.cos(lo), np.sin(la), np.cos(la) * np.sin(lo)], axis=-1).reshape(-1, 3)
    direction = np.concatenate([direction, [[0, -1, 0], [0, 1, 0]]])
    x, y, z = direction.T
    radii = np.array([0.074, 0.105, 0.092])
    verts = direction * radii + np.array([0.0, 0.012, -0.005])
    vy = verts[:, 1]
    front = np.clip(z, 0, 1)
    verts[:, 0] *= 1 - 0.28 * _smoothstep((0.0 - vy) / 0.09)  # narrower jaw and chin
    verts[:, 2] += 0.012 * front * _smoothstep((0.03 - vy) / 0.1)  # fuller lower face
    verts[:, 2] -= 0.02 * np.clip(-z, 0, 1) * _smoothstep((vy + 0.02) / 0.1)  # flatter back of the skull

    def bump(cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-((verts[:, 0] - cx) ** 2) / (2 * sx**2) - (verts[:, 1] - cy) ** 2 / (2 * sy**2)) * front

    verts[:, 2] += 0.024 * bump(0.0, -0.008, 0.009, 0.016)  # nose
    verts[:, 2] += 0.006 * (bump(0.03, 0.048, 0.02, 0.006) + bump(-0.03, 0.048, 0.02, 0.006))  # brow
    verts[:, 2] -= 0.008 * (bump(0.03, 0.027, 0.013, 0.01) + bump(-0.03, 0.027, 0.013, 0.01))  # eye sockets
    verts[:, 2] += 0.004 * (bump(0.0, MOUTH_Y + 0.006, 0.02, 0.004) + bump(0.0, MOUTH_Y - 0.007, 0.018, 0.005))
    verts[:, 2] += 0.006 * bump(0.0, -0.088, 0.02, 0.01)  # chin
    ring = np.concatenate([np.repeat(np.arange(n_lat), n_lon), [-1, n_lat]])
    lon_index = np.concatenate([np.tile(np.arange(n_lon), n_lat), [-1, -1]])
    return verts, ring, lon_index


def _sphere(center: np.ndarray, radius: float, n_lat: int = 8, n_lon: int = 12) -> tuple[np.ndarray, np.ndarray]:
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat + 2)[1:-1]
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    d = np.stack([np.cos(la) * np.cos(lo), np.sin(la), np.cos(la) * np.sin(lo)], axis=-1).reshape(-1, 3)
    d = np.concatenate([d, [[0, -1, 0], [0, 1, 0]]])
    faces = _grid_faces(n_lat, n_lon, lambda r, c: r * n_lon + c % n_lon, n_lat * n_lon, n_lat * n_lon + 1)
    return d * radius + center, faces


def _grid_faces(n_lat: int, n_lon: int, index, south: int, north: int) -> np.ndarray:
    faces = []
    for r in range(n_lat - 1):
        for c in range(n_lon):
            a, b, cc, d = index(r, c), index(r, c + 1), index(r + 1, c + 1), index(r + 1, c)
            faces += [(a, b, cc), (a, cc, d)]
    for c in range(n_lon):
        faces.append((south, index(0, c + 1), index(0, c)))
        faces.append((north, index(n_lat - 1, c), index(n_lat - 1, c + 1)))
    return np.array(faces, dtype=np.int64)


def _orient_outwards(verts: np.ndarray, faces: np.ndarray, center: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("ij,ij->i", normal, tri.mean(axis=1) - center) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, ::-1]
    return faces


def _smooth_fields(verts: np.ndarray, count: int, rng: np.random.Generator, amplitude: float,
                   mask: np.ndarray) -> np.ndarray:
    """(V, 3, count) smooth displacement fields: a few Gaussian bumps each, on the face side."""
    out = np.zeros((len(verts), 3, count))
    candidates = np.nonzero(mask & (verts[:, 2] > 0.0))[0]
    for k in range(count):
        for _ in range(3):
            c = verts[rng.choice(candidates)]
            sigma = rng.uniform(0.012, 0.03)
            w = np.exp(-np.sum((verts - c) ** 2, axis=1) / (2 * sigma**2)) * mask
            out[:, :, k] += w[:, None] * rng.normal(size=3) * amplitude
    return out


def make_head_arrays(n_lat: int = 36, n_lon: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    verts, ring, lon_index = _head_surface(n_lat, n_lon)
    n_grid = n_lat * n_lon
    south, north = n_grid, n_grid + 1
    ring_y = np.array([verts[ring == r, 1].mean() for r in range(n_lat)])
    mouth_ring = int(np.argmin(np.abs(ring_y - MOUTH_Y)))
    verts[ring == mouth_ring, 1] = MOUTH_Y  # a level mouth line

    # The mouth: front longitudes of the mouth ring get a twin vertex used by the faces below (lower lip), so the
    # slit is closed at rest and opens when the jaw turns. The corner longitudes keep one vertex (closed corners).
    half_width = 0.026
    mouth_cols = [c for c in range(n_lon) if abs(verts[mouth_ring * n_lon + c, 0]) < half_width
                  and verts[mouth_ring * n_lon + c, 2] > 0]
    inner = sorted(mouth_cols, key=lambda c: verts[mouth_ring * n_lon + c, 0])[1:-1]  # corners stay closed
    twin = {c: len(verts) + i for i, c in enumerate(inner)}
    verts = np.concatenate([verts, verts[[mouth_ring * n_lon + c for c in inner]]])

    def index(r: int, c: int) -> int:
        return r * n_lon + c % n_lon

    faces = []
    for r in range(n_lat - 1):
        for c in range(n_lon):
            a, b, cc, d = index(r, c), index(r, c + 1), index(r + 1, c + 1), index(r + 1, c)
            if r + 1 == mouth_ring:  # the face row just below the mouth uses the lower-lip twins
                cc, d = twin.get((c + 1) % n_lon, cc), twin.get(c % n_lon, d)
            faces += [(a, b, cc), (a, cc, d)]
    for c in range(n_lon):
        faces.append((south, index(0, c + 1), index(0, c)))
        faces.append((north, index(n_lat - 1, c), index(n_lat - 1, c + 1)))
    head_faces = _orient_outwards(verts, np.array(faces), np.array([0.0, 0.012, -0.005]))
    n_head = len(verts)

    # Eyes: spheres in the sockets.
    eye_parts, eye_faces, eye_centers = [], [], []
    for side in (1.0, -1.0):
        target = np.array([side * 0.03, 0.027])
        near = np.argmin(np.sum((verts[:n_grid, :2] - target) ** 2, axis=1) - 10 * (verts[:n_grid, 2] > 0))
        center = np.array([target[0], target[1], verts[near, 2] - 0.7 * EYE_RADIUS])
        sv, sf = _sphere(center, EYE_RADIUS)
        offset = n_head + sum(len(p) for p in eye_parts)
        eye_parts.append(sv)
        eye_faces.append(_orient_outwards(sv, sf, center) + offset)
        eye_centers.append(center)
    # Mouth cavity: a flattened ball just behind the lips, its lower half following the jaw.
    lip_z = verts[[index(mouth_ring, c) for c in inner], 2].min()
    bag_center = np.array([0.0, MOUTH_Y - 0.004, lip_z - 0.026])
    bag_verts, bag_faces = _sphere(bag_center, 1.0, 10, 16)
    bag_verts = (bag_verts - bag_center) * np.array([0.02, 0.015, 0.02]) + bag_center
    n_eyes = sum(len(p) for p in eye_parts)
    bag_faces = _orient_outwards(bag_verts, bag_faces, bag_center) + n_head + n_eyes
    verts = np.concatenate([verts] + eye_parts + [bag_verts])
    faces = np.concatenate([head_faces] + eye_faces + [bag_faces]).astype(np.uint32)
    n_verts = len(verts)
    part = np.zeros(n_verts, dtype=np.int32)
    part[n_head:n_head + n_eyes] = 1
    part[n_head + n_eyes:] = 2
    is_eye = part == 1
    eye_of = np.full(n_verts, -1)
    eye_of[n_head:n_head + len(eye_parts[0])] = 0
    eye_of[n_head + len(eye_parts[0]):n_head + n_eyes] = 1

    # Skinning: jaw = below the mouth at the front; root = the neck stump; eyes = eyeballs; the rest = neck joint.
    vy, vz = verts[:, 1], verts[:, 2]
    jaw = _smoothstep((MOUTH_Y - vy) / 0.012) * _smoothstep((vz + 0.02) / 0.05)
    jaw[list(twin.values())] = 1.0
    jaw[[index(mouth_ring, c) for c in inner]] = 0.0
    jaw[part == 2] = np.clip((MOUTH_Y + 0.002 - vy[part == 2]) / 0.012, 0.0, 1.0)
    root = _smoothstep((-0.075 - vy) / 0.02) * (1 - jaw)
    weights = np.zeros((n_verts, N_JOINTS))
    weights[:, 2] = jaw
    weights[:, 0] = root
    weights[:, 1] = 1 - jaw - root
    weights[is_eye] = 0.0
    weights[eye_of == 0, 3] = 1.0
    weights[eye_of == 1, 4] = 1.0

    # Joints from vertices (the regressor): a front + back pair on one ring, weighted so the mean lies at the
    # wanted depth; eyes = the eyeball's mean vertex.
    j_regressor = np.zeros((N_JOINTS, n_verts))
    for j, (ring_target, depth) in enumerate([(-0.085, -0.015), (-0.06, -0.012), (-0.027, -0.004)]):
        r = int(np.argmin(np.abs(ring_y - ring_target)))
        front, back = index(r, 0), index(r, n_lon // 2)
        zf, zb = verts[front, 2], verts[back, 2]
        wf = (depth - zb) / (zf - zb)
        j_regressor[j, [front, back]] = [wf, 1 - wf]
    for e in range(2):
        members = np.nonzero(eye_of == e)[0]
        j_regressor[3 + e, members] = 1.0 / len(members)
    joints = j_regressor @ verts

    skin = part == 0
    shapedirs = np.zeros((n_verts, 3, N_SHAPE + N_EXPR))
    shapedirs[:, :, N_SHAPE:] = _smooth_fields(verts, N_EXPR, rng, 1.2e-3, skin)
    posedirs = _smooth_fields(verts, 9 * (N_JOINTS - 1), rng, 1.5e-3, skin)
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {
        "v_template": verts, "f": faces, "shapedirs": shapedirs, "posedirs": posedirs, "J_regressor": j_regressor,
        "weights": weights, "kintree_table": kintree, "J": joints, "vertex_part": part,
    }
