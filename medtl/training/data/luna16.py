"""LUNA16 nodule segmentation: axial CT slices with nodule masks built from `annotations.csv`.

Each annotated series is read with SimpleITK; every nodule's world centre (mm) becomes a voxel
index through the image's origin, spacing and direction. The mask of a nodule is, by default, a
sphere of diameter `diameter_mm` measured in millimetres (so anisotropic spacing is respected).
The study's alternative (`mask="threshold"`): from the centre voxel, extend a box along each axis,
in both directions, while voxels stay above -700 HU (at most one diameter each way), and keep the
box's voxels above -700 HU; a nodule whose centre is not above -700 HU falls back to the sphere.
Every axial slice holding mask voxels is a sample. HU are clipped to [-1000, 1000] and scaled to
0-255; masks are resized with nearest neighbour.

Splits are by series: the annotated series present on disk are sorted by seriesuid and the i-th
goes to validation when (i - seed) % 10 == 0, to test when (i - seed) % 10 == 5, else to train
(80/10/10; seed 0 gives the study's "every 10th series" validation set).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from medtl.training.data import cache
from medtl.training.data.base import DataError, SampleSet, Splits
from medtl.training.data.generic import fit, skipped_note
from medtl.training.data.splits import SPLIT_NAMES
from medtl.training.spec import Task

HU_RANGE = (-1000.0, 1000.0)
THRESHOLD_HU = -700.0
MASK_MODES = ("sphere", "threshold")
MASK_MODE = "sphere"
MASK_ENV = "MEDTL_LUNA16_MASK"
EVERY = 10
LAYOUT = "expected the LUNA16 layout: annotations.csv + subset*/<seriesuid>.mhd and .raw"


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DataError("reading LUNA16 needs SimpleITK: pip install SimpleITK==2.5.7") from None
    return sitk


def series_split(index: int, seed: int = 0) -> str:
    """Split of the `index`-th series in sorted order: val every 10th, test 5 after it, else train."""
    position = (index - seed) % EVERY
    return "val" if position == 0 else "test" if position == EVERY // 2 else "train"


def sphere_mask(
    shape: tuple[int, int, int], centre_xyz: np.ndarray, diameter_mm: float, spacing_xyz
) -> np.ndarray:
    """Boolean (z, y, x) mask of a ball of `diameter_mm` around a continuous voxel index (x, y, z)."""
    radius = diameter_mm / 2.0
    mask = np.zeros(shape, dtype=bool)
    axes = []
    for axis_len, c, sp in zip(shape[::-1], centre_xyz, spacing_xyz, strict=True):
        half = int(math.ceil(radius / sp)) + 1
        lo, hi = max(0, int(math.floor(c)) - half), min(axis_len, int(math.ceil(c)) + half + 1)
        axes.append((lo, hi, c, sp))
    (x0, x1, cx, sx), (y0, y1, cy, sy), (z0, z1, cz, sz) = axes
    if x0 >= x1 or y0 >= y1 or z0 >= z1:
        return mask
    zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
    dist2 = ((xx - cx) * sx) ** 2 + ((yy - cy) * sy) ** 2 + ((zz - cz) * sz) ** 2
    mask[z0:z1, y0:y1, x0:x1] = dist2 <= radius**2
    centre = tuple(int(round(v)) for v in (cz, cy, cx))
    if all(0 <= v < n for v, n in zip(centre, shape, strict=True)):
        mask[centre] = True  # a nodule smaller than a voxel still marks its centre
    return mask


def threshold_mask(
    hu: np.ndarray, centre_xyz: np.ndarray, diameter_mm: float, spacing_xyz
) -> np.ndarray | None:
    """The study's grown box (see module doc) as a boolean (z, y, x) mask; None if the centre is not above -700 HU."""
    centre = [int(round(v)) for v in centre_xyz[::-1]]  # z, y, x
    if (
        not all(0 <= c < n for c, n in zip(centre, hu.shape, strict=True))
        or hu[tuple(centre)] <= THRESHOLD_HU
    ):
        return None
    lo, hi = list(centre), list(centre)
    for axis, sp in zip((2, 1, 0), spacing_xyz, strict=True):
        limit = max(1, int(math.ceil(diameter_mm / sp)))
        for step in (-1, 1):
            pos = list(centre)
            for _ in range(limit):
                pos[axis] += step
                if not 0 <= pos[axis] < hu.shape[axis] or hu[tuple(pos)] <= THRESHOLD_HU:
                    break
                (lo if step < 0 else hi)[axis] = pos[axis]
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    mask = np.zeros(hu.shape, dtype=bool)
    mask[box] = hu[box] > THRESHOLD_HU
    return mask


def hu_to_uint8(hu: np.ndarray) -> np.ndarray:
    """Clip HU to [-1000, 1000] and scale to float32 in [0, 255]."""
    lo, hi = HU_RANGE
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)


def read_series(
    mhd: Path, nodules: list[tuple[float, float, float, float]], mode: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Volume (z, y, x) in HU, its nodule mask (uint8) and the number of threshold fallbacks.

    Raises:
        RuntimeError: SimpleITK cannot read the series.
    """
    sitk = _sitk()
    image = sitk.ReadImage(str(mhd))
    hu = sitk.GetArrayFromImage(image)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    mask = np.zeros(hu.shape, dtype=bool)
    fallbacks = 0
    for x, y, z, diameter in nodules:
        centre = np.asarray(
            image.TransformPhysicalPointToContinuousIndex((x, y, z)), dtype=np.float64
        )
        grown = threshold_mask(hu, centre, diameter, spacing) if mode == "threshold" else None
        if mode == "threshold" and grown is None:
            fallbacks += 1
        mask |= grown if grown is not None else sphere_mask(hu.shape, centre, diameter, spacing)
    return hu, mask.astype(np.uint8), fallbacks


def _find_annotations(root: Path) -> Path:
    found = sorted(root.rglob("annotations.csv"), key=lambda p: (len(p.parts), str(p)))
    if found:
        return found[0]
    raise DataError(f"no annotations.csv in {root}; {LAYOUT}")


def _volumes(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for mhd in sorted(root.rglob("*.mhd")):
        found.setdefault(mhd.stem, mhd)
    return found


def load(
    path: Path | None,
    *,
    task: Task = Task.LUNA16,
    image_size: int,
    seed: int = 0,
    mask: str | None = None,
) -> Splits:
    """Read LUNA16 under `path` into 2D axial slice samples with nodule masks, split by series.

    Args:
        path: folder with `annotations.csv` and `subset*/` folders.
        task: the registry's task (luna16).
        image_size: output side in pixels.
        seed: rotates which series go to validation and test (0: the study's every 10th).
        mask: "sphere" or "threshold"; None reads `MEDTL_LUNA16_MASK`, else `MASK_MODE`.

    Raises:
        DataError: annotations.csv, its columns or the volumes are missing; bad mask mode.
    """
    import pandas as pd

    if path is None or not Path(path).is_dir():
        raise DataError(f"luna16 needs a folder, got {path}; {LAYOUT}")
    root = Path(path)
    mode = mask or os.environ.get(MASK_ENV) or MASK_MODE
    if mode not in MASK_MODES:
        raise DataError(f"LUNA16 mask mode {mode!r} is not one of {list(MASK_MODES)}")
    csv = _find_annotations(root)
    frame = pd.read_csv(csv)
    frame.columns = [str(c).strip() for c in frame.columns]
    needed = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    if [c for c in needed if c not in frame.columns]:
        raise DataError(
            f"annotations.csv lacks column(s) {[c for c in needed if c not in frame.columns]}; {LAYOUT}"
        )
    volumes = _volumes(root)
    if not volumes:
        raise DataError(f"no .mhd volumes under {root}; {LAYOUT}")
    nodules: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in frame.dropna(subset=needed).itertuples(index=False):
        nodules.setdefault(str(row.seriesuid), []).append(
            (float(row.coordX), float(row.coordY), float(row.coordZ), float(row.diameter_mm))
        )
    series = sorted(uid for uid in nodules if uid in volumes)
    if not series:
        raise DataError(
            f"no annotated series of annotations.csv has a volume under {root}; {LAYOUT}"
        )
    split_of = {uid: series_split(i, seed) for i, uid in enumerate(series)}
    ordered = sorted(series, key=lambda uid: (SPLIT_NAMES.index(split_of[uid]), uid))
    files = [csv]
    for uid in series:
        files += [
            p for p in volumes[uid].parent.glob(f"{uid}.*") if p.suffix in {".mhd", ".raw", ".zraw"}
        ]
    digest = cache.source_digest(root, files)
    params = {
        "source": str(root.resolve()),
        "digest": digest,
        "size": image_size,
        "mask": mode,
        "series": [f"{uid}:{split_of[uid]}" for uid in ordered],
    }

    def build() -> cache.CacheEntry:
        images, masks, ids, splits_, failed, fallbacks = [], [], [], [], [], 0
        for uid in ordered:
            try:
                hu, volume_mask, fell = read_series(volumes[uid], nodules[uid], mode)
            except (RuntimeError, OSError, ValueError):
                failed.append(volumes[uid].relative_to(root).as_posix())
                continue
            fallbacks += fell
            for z in np.flatnonzero(volume_mask.any(axis=(1, 2))):
                images.append(fit(hu_to_uint8(hu[z]), image_size))
                masks.append(fit(volume_mask[z], image_size, nearest=True))
                ids.append(f"{uid}_z{int(z):04d}")
                splits_.append(split_of[uid])
        shape = (len(images), image_size, image_size)
        arrays = {
            "images": np.stack(images) if images else np.zeros(shape, np.uint8),
            "masks": np.stack(masks) if masks else np.zeros(shape, np.uint8),
        }
        meta = {"ids": ids, "splits": splits_, "failed": failed, "fallbacks": fallbacks}
        return cache.CacheEntry(arrays=arrays, meta=meta)

    entry, _ = cache.load_or_build("luna16", params, build)
    ids, splits_ = entry.meta["ids"], entry.meta["splits"]
    if not ids:
        raise DataError(
            f"no nodule slice could be read from the {len(series)} annotated series under {root}"
        )
    parts, start = {}, 0
    for name in SPLIT_NAMES:
        stop = start + splits_.count(name)
        chunk = ids[start:stop]
        parts[name] = SampleSet(
            images=entry.arrays["images"][start:stop],
            targets=entry.arrays["masks"][start:stop],
            ids=tuple(chunk),
            groups=tuple(i.rsplit("_z", 1)[0] for i in chunk),
        )
        start = stop
    notes = {"mask": mode, **skipped_note(entry.meta["failed"], "unreadable volumes skipped")}
    if entry.meta["fallbacks"]:
        notes["threshold_fallbacks"] = (
            f"{entry.meta['fallbacks']} nodules used the sphere (centre not above -700 HU)"
        )
    return Splits(**parts, source=str(root), source_digest=digest, notes=notes)
