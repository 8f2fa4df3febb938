"""`synthetic_scenes`: seeded synthetic 3D lidar-like scenes for per-point semantic segmentation.

Each scene is a 32 m x 32 m square of ground with boxes, vertical cylinders, spheres and walls at
random positions and yaw angles (rotations about z), non-overlapping in plan. Between 10,000 and
30,000 points per scene (the count drawn uniformly) are sampled uniformly on the surfaces (ground
outside the objects' footprints; box and wall sides and tops; cylinder sides and tops; whole
spheres) with ground sampled at a quarter of the objects' density, plus Gaussian noise of 2 cm.
Every point carries its semantic label (CLASSES) and an intensity-like scalar: |cos| of the angle
between the surface normal and the ray to a sensor 2 m above the scene centre, times a per-surface
reflectivity drawn uniformly (so intensity says something about geometry, not about the class),
plus noise.

Points are voxelised to a bird's-eye grid of GRID_SHAPE = (128, 128) pillars of VOXEL_SIZE = 0.25 m:
coords (x, y) = floor((xy - SCENE_MIN) / VOXEL_SIZE), in [0, 128).

Records (one per scene): 'xyz_mm' int16 [n, 3] (millimetres), 'intensity' uint8 [n] (0..255),
'coords' int16 [n, 2], 'label' uint8 [n], 'index'. Scene i of split s is generated from
`np.random.default_rng([SEED, SPLIT_IDS[s], i])`, so the data are a pure function of the code.

The reader derives PER_POINT_FEATURES (6 per point) from each whole scene: the offset of the point
from its pillar's centre in x and y (in pillars, in [-0.5, 0.5]), z (m), z minus the mean z and z
minus the lowest z of the points in its pillar (m), and the intensity in [0, 1]. It then pads every
scene to `max_points` (a required data field) with 'mask' False; a scene with more points than
`max_points` keeps a uniform random subset of them (fixed per scene, seeded), which lets a CPU run
train on fewer points per scene; max_points=30000 keeps every point.
Batches: {'points': float32[B, max_points, 6], 'coords': int32[B, max_points, 2],
'label': int32[B, max_points], 'mask': bool[B, max_points]}.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.fitted import FittedCache
from fintrans.data.sources import MappedSource
from fintrans.data.spec import DatasetSpec, Loaded

CLASSES = ("ground", "box", "cylinder", "sphere", "wall")
GROUND, BOX, CYLINDER, SPHERE, WALL = range(len(CLASSES))
SPLIT_SIZES = {"train": 200, "validation": 40, "test": 40}
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
SEED = 5
MIN_POINTS, MAX_POINTS = 10_000, 30_000
VOXEL_SIZE = 0.25  # m
GRID_SHAPE = (128, 128)  # (nx, ny) pillars
SCENE_MIN = -0.5 * VOXEL_SIZE * np.asarray(GRID_SHAPE, np.float64)  # (x, y) of the grid's corner
SCENE_SIZE = VOXEL_SIZE * GRID_SHAPE[0]
SENSOR = np.asarray([0.0, 0.0, 2.0])
NOISE = 0.02  # m
GROUND_DENSITY = 0.25  # relative to the objects' surfaces
PER_POINT_FEATURES = ("dx_pillar", "dy_pillar", "z", "z_minus_pillar_mean", "z_minus_pillar_min", "intensity")
# (min, max) count of each object kind per scene; every scene has at least one of each.
OBJECT_COUNTS = {WALL: (1, 3), BOX: (2, 6), CYLINDER: (2, 5), SPHERE: (2, 5)}


# --- scene geometry ------------------------------------------------------------------------------
def _rotation(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.asarray([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_FACE_NORMALS = np.asarray([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], np.float64)


def _cuboid_surface(rng, n, size, yaw, centre):
    """n points on the four sides (+x, -x, +y, -y) and the top of an upright cuboid (size = (sx, sy,
    h)) standing on the ground at centre (x, y), turned by yaw; returns (points [n, 3], normals [n, 3])."""
    sx, sy, h = size
    areas = np.asarray([sy * h, sy * h, sx * h, sx * h, sx * sy])
    face = rng.choice(5, size=n, p=areas / areas.sum())
    pts = (rng.uniform(-0.5, 0.5, size=(n, 3)) + np.asarray([0.0, 0.0, 0.5])) * np.asarray([sx, sy, h])
    pts[:, 0] = np.where(face == 0, sx / 2, np.where(face == 1, -sx / 2, pts[:, 0]))
    pts[:, 1] = np.where(face == 2, sy / 2, np.where(face == 3, -sy / 2, pts[:, 1]))
    pts[:, 2] = np.where(face == 4, h, pts[:, 2])
    rot = _rotation(yaw)
    return pts @ rot.T + np.asarray([centre[0], centre[1], 0.0]), _FACE_NORMALS[face] @ rot.T


def _cuboid_area(size):
    sx, sy, h = size
    return 2 * (sx + sy) * h + sx * sy


def _cylinder_surface(rng, n, radius, height, centre):
    side = 2 * math.pi * radius * height
    top = math.pi * radius ** 2
    n_side = rng.binomial(n, side / (side + top))
    theta = rng.uniform(0, 2 * math.pi, n)
    r = np.where(np.arange(n) < n_side, radius, radius * np.sqrt(rng.uniform(0, 1, n)))
    z = np.where(np.arange(n) < n_side, rng.uniform(0, height, n), height)
    pts = np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta), z], axis=1)
    normals = np.where((np.arange(n) < n_side)[:, None],
                       np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], axis=1), np.asarray([0.0, 0.0, 1.0]))
    return pts, normals


def _sphere_surface(rng, n, radius, centre):
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return np.r_[centre, radius] + radius * normals, normals


def _inside_footprint(xy, obj) -> np.ndarray:
    kind, centre, params = obj["kind"], obj["centre"], obj["params"]
    d = xy - centre
    if kind == CYLINDER:
        return np.hypot(d[:, 0], d[:, 1]) < params["radius"]
    if kind in (BOX, WALL):
        c, s = math.cos(params["yaw"]), math.sin(params["yaw"])
        u, v = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
        sx, sy, _ = params["size"]
        return (np.abs(u) < sx / 2) & (np.abs(v) < sy / 2)
    return np.zeros(len(xy), bool)  # a sphere touches the ground at one point


def _draw_object(rng, kind):
    if kind == BOX:
        size = (rng.uniform(0.8, 3.0), rng.uniform(0.8, 3.0), rng.uniform(0.5, 2.5))
        params = {"size": size, "yaw": rng.uniform(0, math.pi)}
        return params, math.hypot(size[0], size[1]) / 2, _cuboid_area(size)
    if kind == WALL:
        size = (rng.uniform(4.0, 12.0), rng.uniform(0.2, 0.4), rng.uniform(1.5, 3.0))
        params = {"size": size, "yaw": rng.uniform(0, math.pi)}
        return params, math.hypot(size[0], size[1]) / 2, _cuboid_area(size)
    if kind == CYLINDER:
        radius, height = rng.uniform(0.3, 1.2), rng.uniform(0.8, 3.5)
        return {"radius": radius, "height": height}, radius, 2 * math.pi * radius * height + math.pi * radius ** 2
    radius = rng.uniform(0.4, 1.5)
    return {"radius": radius}, radius, 4 * math.pi * radius ** 2


def _place_objects(rng) -> list[dict]:
    """Objects of every kind (large ones first) at random non-overlapping positions in plan."""
    kinds = [k for k, (lo, hi) in OBJECT_COUNTS.items() for _ in range(rng.integers(lo, hi + 1))]
    objects: list[dict] = []
    margin = 0.3
    for kind in kinds:
        for _ in range(100):
            params, radius, area = _draw_object(rng, kind)
            lo = SCENE_MIN + radius + margin
            hi = SCENE_MIN + SCENE_SIZE - radius - margin
            centre = rng.uniform(lo, hi)
            if all(np.hypot(*(centre - o["centre"])) > radius + o["radius"] + margin for o in objects):
                objects.append({"kind": kind, "centre": centre, "radius": radius, "params": params, "area": area})
                break
    return objects


def generate_scene(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One scene: 'xyz' float64 [n, 3] (m, rounded to mm), 'intensity' float64 [n] in [0, 1], 'label' int64 [n],
    'coords' int64 [n, 2] with n in [MIN_POINTS, MAX_POINTS]."""
    objects = _place_objects(rng)
    n_total = int(rng.integers(MIN_POINTS, MAX_POINTS + 1))
    ground_area = SCENE_SIZE ** 2 - sum(math.pi * o["radius"] ** 2 for o in objects if o["kind"] != SPHERE)
    weights = np.asarray([GROUND_DENSITY * max(ground_area, 1.0)] + [o["area"] for o in objects])
    counts = rng.multinomial(n_total, weights / weights.sum())

    xyz, normals, labels, reflect = [], [], [], []
    # Ground: uniform over the square, outside the objects' footprints.
    n_ground, ground = counts[0], np.zeros((0, 2))
    while len(ground) < n_ground:
        need = n_ground - len(ground)
        cand = rng.uniform(SCENE_MIN, SCENE_MIN + SCENE_SIZE, size=(need + need // 4 + 64, 2))
        cand = cand[np.argsort(cand[:, 0])]  # so the candidates near an object are one slice
        free = np.ones(len(cand), bool)
        for o in objects:
            lo, hi = np.searchsorted(cand[:, 0], [o["centre"][0] - o["radius"], o["centre"][0] + o["radius"]])
            free[lo:hi] &= ~_inside_footprint(cand[lo:hi], o)
        ground = np.concatenate([ground, cand[free]])
    xyz.append(np.concatenate([ground[:n_ground], np.zeros((n_ground, 1))], axis=1))
    normals.append(np.tile([0.0, 0.0, 1.0], (n_ground, 1)))
    labels.append(np.full(n_ground, GROUND))
    reflect.append(np.full(n_ground, rng.uniform(0.2, 1.0)))
    for o, n in zip(objects, counts[1:]):
        p = o["params"]
        if o["kind"] in (BOX, WALL):
            pts, nrm = _cuboid_surface(rng, n, p["size"], p["yaw"], o["centre"])
        elif o["kind"] == CYLINDER:
            pts, nrm = _cylinder_surface(rng, n, p["radius"], p["height"], o["centre"])
        else:
            pts, nrm = _sphere_surface(rng, n, p["radius"], o["centre"])
        xyz.append(pts)
        normals.append(nrm)
        labels.append(np.full(n, o["kind"]))
        reflect.append(np.full(n, rng.uniform(0.2, 1.0)))
    xyz = np.concatenate(xyz) + rng.normal(scale=NOISE, size=(n_total, 3))
    normals, labels, reflect = np.concatenate(normals), np.concatenate(labels), np.concatenate(reflect)
    ray = SENSOR - xyz
    cos = np.abs((normals * ray).sum(1)) / np.maximum(np.linalg.norm(ray, axis=1), 1e-6)
    intensity = np.clip(reflect * cos + rng.normal(scale=0.05, size=n_total), 0.0, 1.0)
    shuffle = rng.permutation(n_total)  # no class-sorted order left in the records
    xyz, intensity, labels = xyz[shuffle], intensity[shuffle], labels[shuffle]
    xyz = np.round(xyz * 1000) / 1000  # millimetres, as stored
    # Noise may push a point on the scene's edge outside it: keep every point on the grid.
    xyz[:, :2] = np.clip(xyz[:, :2], SCENE_MIN, SCENE_MIN + SCENE_SIZE - 0.001)
    return {"xyz": xyz, "intensity": intensity, "label": labels, "coords": voxelize(xyz)}


def voxelize(xyz: np.ndarray) -> np.ndarray:
    """(x, y) pillar indices [n, 2] on GRID_SHAPE (a point past an edge would go to the edge pillar;
    generate_scene keeps every point inside)."""
    idx = np.floor((xyz[:, :2] - SCENE_MIN) / VOXEL_SIZE).astype(np.int64)
    return np.clip(idx, 0, np.asarray(GRID_SHAPE) - 1)


def scene_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([SEED, SPLIT_IDS[split], index])


def point_features(xyz: np.ndarray, intensity: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """PER_POINT_FEATURES float32 [n, 6] of one whole scene."""
    pillar = coords[:, 0].astype(np.int64) * GRID_SHAPE[1] + coords[:, 1]
    cells = GRID_SHAPE[0] * GRID_SHAPE[1]
    z = xyz[:, 2]
    mean_z = np.bincount(pillar, weights=z, minlength=cells) / np.maximum(np.bincount(pillar, minlength=cells), 1)
    min_z = np.full(cells, np.inf)
    np.minimum.at(min_z, pillar, z)
    centre = SCENE_MIN + (coords + 0.5) * VOXEL_SIZE
    offset = (xyz[:, :2] - centre) / VOXEL_SIZE
    return np.concatenate([offset, np.stack([z, z - mean_z[pillar], z - min_z[pillar], intensity], axis=1)],
                          axis=1).astype(np.float32)


class SyntheticScenes(OfflineBuilder, skip_registration=True):
    name = "synthetic_scenes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        def points(shape, dtype):  # raw bytes: fast to write and read
            return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)

        return tfds.core.DatasetInfo(
            builder=self,
            description=(f"Synthetic lidar-like scenes: ground plus boxes, cylinders, spheres and walls, "
                         f"{MIN_POINTS}-{MAX_POINTS} surface points per scene with per-point labels {CLASSES}, "
                         f"voxelised to a {GRID_SHAPE[0]}x{GRID_SHAPE[1]} bird's-eye grid of {VOXEL_SIZE} m pillars. "
                         f"Splits of {SPLIT_SIZES} scenes, generated from seed {SEED}."),
            features=tfds.features.FeaturesDict({
                "xyz_mm": points((None, 3), np.int16),
                "intensity": points((None,), np.uint8),
                "coords": points((None, 2), np.int16),
                "label": points((None,), np.uint8),
                "index": np.int32,
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(classes=list(CLASSES), grid_shape=list(GRID_SHAPE), voxel_size=VOXEL_SIZE,
                                            scene_min=SCENE_MIN.tolist()),
        )

    def _generate_examples(self, split: str):
        for i in range(SPLIT_SIZES[split]):
            s = generate_scene(scene_rng(split, i))
            yield i, {"xyz_mm": np.round(s["xyz"] * 1000).astype(np.int16),
                      "intensity": np.round(s["intensity"] * 255).astype(np.uint8),
                      "coords": s["coords"].astype(np.int16), "label": s["label"].astype(np.uint8), "index": i}


def read(records: Mapping[str, Sequence[Mapping[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    del metadata, fitted  # nothing fitted
    max_points = fields["max_points"]

    def scene(split: str, r: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Scene r's points padded to max_points: {'points', 'coords', 'label', 'mask'}."""
        xyz = r["xyz_mm"].astype(np.float64) / 1000.0
        c = r["coords"].astype(np.int64)
        f = point_features(xyz, r["intensity"].astype(np.float64) / 255.0, c)
        label = r["label"]
        if len(f) > max_points:  # a fixed uniform subset per scene (see the module docstring)
            keep = np.sort(np.random.default_rng([SEED, SPLIT_IDS[split], int(r["index"]), max_points])
                           .choice(len(f), max_points, replace=False))
            f, c, label = f[keep], c[keep], label[keep]
        n = len(f)
        out = {"points": np.zeros((max_points, f.shape[1]), np.float32), "coords": np.zeros((max_points, 2), np.int32),
               "label": np.zeros((max_points,), np.int32), "mask": np.arange(max_points) < n}
        out["points"][:n], out["coords"][:n], out["label"][:n] = f, c, label
        return out

    sources = {split: MappedSource(recs, functools.partial(scene, split)) for split, recs in records.items()}
    info = {"num_classes": len(CLASSES), "classes": list(CLASSES), "in_features": len(PER_POINT_FEATURES),
            "features": list(PER_POINT_FEATURES), "grid_shape": GRID_SHAPE, "voxel_size": VOXEL_SIZE,
            "max_points": max_points}
    return Loaded(sources=sources, info=info)


SPEC = register(DatasetSpec(name="synthetic_scenes", builder=SyntheticScenes,
                   fields={"max_points": (1, f"points per scene after padding ({MAX_POINTS} keeps every point; "
                                              "fewer subsamples each scene)")},
                   read=read, streams=True))
