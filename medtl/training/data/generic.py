"""Image decoding shared by the dataset readers, and loaders for a user's own folder or CSV.

Every image becomes uint8 grayscale `(size, size)`: the longer side is resized to `size` keeping
the aspect ratio (bilinear, antialiased when shrinking; nearest neighbour for masks) and the rest
is zero-padded, centred. 8-bit files keep their values; deeper files (16-bit PNG, 32-bit) are read
at full depth and min-max scaled over the image to 0-255 before resizing.

Datasets marked for de-identified sample ids get keyed ids (see `sample_ids`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medtl.training import schema as S
from medtl.training.data import cache
from medtl.training.data.base import UNKNOWN, DataError, SampleSet, Splits
from medtl.training.data.sample_ids import deid_key, keyed_paths, keyed_sample_ids
from medtl.training.data.splits import SPLIT_NAMES, balanced_undersample, group_split, split_labels
from medtl.training.data.subgroups import csv_subgroups
from medtl.training.spec import TaskType

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DEEP_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def scale_to_8bit(array: np.ndarray) -> np.ndarray:
    """Min-max scale a deep image (e.g. uint16) to float32 in [0, 255], keeping low-byte detail."""
    data = np.asarray(array, dtype=np.float64)
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.float32)
    return ((data - lo) * (255.0 / (hi - lo))).astype(np.float32)


def read_gray(path: Path) -> np.ndarray:
    """Decode an image file to 2D grayscale: uint8 for 8-bit files, float32 in [0, 255] for deeper ones.

    Raises:
        OSError, ValueError, SyntaxError: the file is missing or cannot be decoded.
    """
    with Image.open(path) as im:
        if im.mode in _DEEP_MODES:
            return scale_to_8bit(np.asarray(im))
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8).copy()


def fit(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize keeping aspect ratio so the longer side is `size`, zero-pad to a centred square, uint8."""
    if image.ndim != 2 or min(image.shape) == 0:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        resized = image
    else:
        deep = image.dtype != np.uint8
        pil = Image.fromarray(image.astype(np.float32) if deep else image, "F" if deep else "L")
        method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
        resized = np.asarray(pil.resize((nw, nh), method))
    if resized.dtype != np.uint8:
        resized = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


@dataclass(frozen=True)
class Record:
    """One sample before decoding: where its file is, which split it goes to, its labels and subgroups.

    `attributes`: subgroup name → value (sex, projection, ...); a name another record has and this
    one lacks is `UNKNOWN` for it.
    """

    id: str
    path: Path
    split: str
    target: float = 0.0
    group: str | None = None
    extras: tuple[float, ...] = ()
    mask_path: Path | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def _decode(record: Record, size: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    try:
        image = read_gray(record.path)
        mask = None
        if record.mask_path is not None:
            mask = (read_gray(record.mask_path) > 0).astype(np.uint8)
            if mask.shape != image.shape:
                return None
            mask = fit(mask, size, nearest=True)
        return fit(image, size), mask
    except _DECODE_ERRORS:
        return None


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def skipped_note(names: Sequence[str], what: str = "unreadable images skipped") -> dict[str, str]:
    """`Splits.notes` entry counting skipped files and naming the first few."""
    if not names:
        return {}
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return {"skipped": f"{len(names)} {what}: {shown}"}


def assemble(
    records: Sequence[Record],
    *,
    kind: str,
    root: Path,
    task_type: TaskType,
    image_size: int,
    digest: str,
    extra_names: tuple[str, ...] = (),
    options: dict[str, object] | None = None,
    notes: dict[str, str] | None = None,
) -> Splits:
    """Decode the records' images (through the cache) and bundle them as train/val/test Splits.

    The cache stores images in split order so each split is a contiguous memory-mapped slice.
    Records whose file is missing or cannot be decoded are dropped and counted in `notes`. Targets,
    extras and subgroup attributes come from the records at every load, never from the cache.

    Raises:
        DataError: no image could be read.
    """
    key = deid_key(root)
    if key is not None:
        keyed_ids = keyed_sample_ids(key, [r.id for r in records])
        records = [dataclasses.replace(r, id=k) for r, k in zip(records, keyed_ids, strict=True)]
    ordered = sorted(records, key=lambda r: SPLIT_NAMES.index(r.split))  # stable within a split
    listing = hashlib.sha256()
    for r in ordered:
        listing.update(
            f"{r.id}\0{_rel(r.path, root)}\0{r.mask_path and _rel(r.mask_path, root)}\n".encode()
        )
    params = {
        "source": str(root.resolve()),
        "digest": digest,
        "size": image_size,
        "listing": listing.hexdigest()[:24],
        **(options or {}),
    }
    segmentation = task_type is TaskType.SEGMENTATION

    def build() -> cache.CacheEntry:
        with ThreadPoolExecutor(_workers()) as pool:
            decoded = list(pool.map(lambda r: _decode(r, image_size), ordered))
        kept = [i for i, d in enumerate(decoded) if d is not None]
        images = np.zeros((len(kept), image_size, image_size), dtype=np.uint8)
        masks = np.zeros_like(images) if segmentation else None
        for row, i in enumerate(kept):
            images[row] = decoded[i][0]
            if masks is not None:
                masks[row] = decoded[i][1]
        arrays = {"images": images} if masks is None else {"images": images, "masks": masks}
        failed = [_rel(ordered[i].path, root) for i, d in enumerate(decoded) if d is None]
        return cache.CacheEntry(arrays=arrays, meta={"kept": kept, "failed": failed})

    entry, _ = cache.load_or_build(kind, params, build)
    kept = np.asarray(entry.meta["kept"], dtype=np.int64)
    if len(kept) == 0:
        raise DataError(f"none of the {len(ordered)} images under {root} could be read ({kind})")
    kept_records = [ordered[i] for i in kept]
    targets_all: np.ndarray
    if segmentation:
        targets_all = entry.arrays["masks"]
    elif task_type is TaskType.REGRESSION:
        targets_all = np.asarray([r.target for r in kept_records], dtype=np.float32)
    else:
        targets_all = np.asarray([r.target for r in kept_records], dtype=np.int64)
    has_groups = any(r.group is not None for r in kept_records)
    attribute_names = sorted({name for r in ordered for name in r.attributes})
    parts: dict[str, SampleSet] = {}
    start = 0
    for name in SPLIT_NAMES:
        stop = start + sum(1 for r in kept_records if r.split == name)
        chunk = kept_records[start:stop]
        parts[name] = SampleSet(
            images=entry.arrays["images"][start:stop],
            targets=targets_all[start:stop],
            ids=tuple(r.id for r in chunk),
            extras=np.asarray([r.extras for r in chunk], dtype=np.float32).reshape(len(chunk), -1)
            if extra_names
            else None,
            groups=tuple(str(r.group) for r in chunk) if has_groups else None,
            attributes={n: tuple(r.attributes.get(n, UNKNOWN) for r in chunk) for n in attribute_names},
        )
        start = stop
    return Splits(
        **parts,
        source=str(root),
        source_digest=digest,
        extra_names=extra_names,
        notes={**(notes or {}), **skipped_note(
            entry.meta["failed"] if key is None else keyed_paths(key, entry.meta["failed"])
        )},
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def index_images(root: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, list[Path]]:
    """Map file stem -> image paths (sorted) anywhere under `root`."""
    found: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in extensions:
                found.setdefault(stem, []).append(Path(dirpath) / name)
    return found


def assign_splits(
    records: list[Record], labels: Sequence, seed: int, *, grouped: bool
) -> list[Record]:
    """Give records a 75/12.5/12.5 split, by group when `grouped`, stratified by `labels`."""
    groups = [str(r.group) for r in records] if grouped else None
    names = split_labels(len(records), group_split(labels, groups, seed=seed))
    return [dataclasses.replace(r, split=s) for r, s in zip(records, names, strict=True)]


def balanced_splits(records: list[Record], seed: int, *, balance: bool, grouped: bool) -> list[Record]:
    """`assign_splits` stratified by target, after (with `balance`) undersampling every class to the rarest's size.

    The undersampling is seeded by `seed` (`splits.balanced_undersample`), as the study did for
    GRAZPEDWRI-DX and the COVID-19 database.
    """
    if balance:
        keep = balanced_undersample([r.target for r in records], seed=seed)
        records = [records[i] for i in keep]
    return assign_splits(records, [r.target for r in records], seed, grouped=grouped)


def assemble_balanced(
    records: list[Record], seed: int, *, balance: bool, grouped: bool, **assemble_options: object
) -> Splits:
    """`balanced_splits`, then `assemble` with the choice noted (`notes["balanced"]`): the two
    undersampled binary datasets of the study (GRAZPEDWRI-DX, COVID-19)."""
    records = balanced_splits(records, seed, balance=balance, grouped=grouped)
    return assemble(records, notes={"balanced": str(balance)}, **assemble_options)


def _classes_of(values: Sequence[str], classes: Sequence[str] | None) -> tuple[str, ...]:
    found = sorted(set(values))
    if classes is None:
        return tuple(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"labels {unknown} are not among the classes {list(classes)}")
    return tuple(classes)


def load_class_folders(
    path: Path, *, image_size: int = 224, seed: int = 0, classes: Sequence[str] | None = None
) -> Splits:
    """Classification from `path/<class>/<image>` folders, split 75/12.5/12.5 stratified by class.

    Class ids follow `classes` if given, else the sorted folder names.
    """
    path = Path(path)
    folders = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    names = _classes_of([p.name for p in folders], classes)
    records = []
    for folder in folders:
        for file in list_images(folder):
            records.append(
                Record(f"{folder.name}/{file.stem}", file, "train", names.index(folder.name))
            )
    if not records:
        raise DataError(
            f"no images in class folders under {path}; expected <class>/<image>.png|jpg"
        )
    records = assign_splits(records, [r.target for r in records], seed, grouped=False)
    files = [r.path for r in records]
    return assemble(
        records,
        kind="class-folders",
        root=path,
        task_type=TaskType.MULTICLASS,
        image_size=image_size,
        digest=cache.source_digest(path, files),
        notes={"classes": ",".join(names)},
    )


def _read_csv(csv: Path, required: Sequence[str], layout: str):
    import pandas as pd

    csv = Path(csv)
    if not csv.is_file():
        raise DataError(f"no CSV file {csv}; expected {layout}")
    header = pd.read_csv(csv, nrows=0).columns
    # Subgroup values are kept as written ("1", not 1.0 once a cell is empty).
    frame = pd.read_csv(csv, dtype={c: str for c in header if str(c).strip().startswith(S.SUBGROUP_PREFIX)})
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{csv} lacks column(s) {missing}; expected {layout}")
    if frame.empty:
        raise DataError(f"{csv} has no rows; expected {layout}")
    return frame


def _csv_records(frame, csv: Path, targets: Sequence[float], extras: list[str]) -> list[Record]:
    grouped = "patient_id" in frame.columns
    subgroups = csv_subgroups(frame, str(csv))
    records = []
    for i, row in enumerate(frame.to_dict("records")):
        file = Path(str(row["path"]))
        file = file if file.is_absolute() else csv.parent / file
        records.append(
            Record(
                id=Path(str(row["path"])).as_posix(),
                path=file,
                split="train",
                target=targets[i],
                group=str(row["patient_id"]) if grouped else None,
                extras=tuple(float(row[c]) for c in extras),
                attributes={name: values[i] for name, values in subgroups.items()},
            )
        )
    return records


def load_csv_classification(
    csv: Path, *, image_size: int = 224, seed: int = 0, classes: Sequence[str] | None = None
) -> Splits:
    """Classification from a CSV `path,label[,patient_id][,subgroup_<name>...]` (paths relative to the CSV's folder).

    Split 75/12.5/12.5 stratified by label and, with `patient_id`, by patient. Each `subgroup_<name>`
    column (e.g. `subgroup_site`) becomes the samples' attribute `name` (see `subgroups`).
    """
    layout = "a CSV with columns path,label[,patient_id][,subgroup_<name>...]"
    frame = _read_csv(csv, ["path", "label"], layout)
    labels = [str(v) for v in frame["label"]]
    names = _classes_of(labels, classes)
    records = _csv_records(frame, Path(csv), [names.index(v) for v in labels], [])
    records = assign_splits(
        records, [r.target for r in records], seed, grouped="patient_id" in frame
    )
    csv = Path(csv)
    digest = cache.source_digest(csv.parent, [csv, *(r.path for r in records)])
    task_type = TaskType.BINARY if len(names) == 2 else TaskType.MULTICLASS
    return assemble(
        records,
        kind="csv-classification",
        root=csv.parent,
        task_type=task_type,
        image_size=image_size,
        digest=digest,
        notes={"classes": ",".join(names)},
    )


def load_csv_regression(csv: Path, *, image_size: int = 224, seed: int = 0) -> Splits:
    """Regression from a CSV `path,target[,extra...][,patient_id][,subgroup_<name>...]`; other columns are extra inputs.

    Split 75/12.5/12.5 (by patient with `patient_id`); extra inputs must be numeric. `subgroup_<name>`
    columns are subgroup attributes, never inputs (see `subgroups`).
    """
    layout = "a CSV with columns path,target[,extra inputs...][,patient_id][,subgroup_<name>...]"
    frame = _read_csv(csv, ["path", "target"], layout)
    extras = [
        c for c in frame.columns
        if c not in {"path", "target", "patient_id"} and not c.startswith(S.SUBGROUP_PREFIX)
    ]
    try:
        targets = frame["target"].astype(float).tolist()
        for c in extras:
            frame[c] = frame[c].astype(float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{csv}: target and extra columns must be numeric ({exc})") from None
    records = _csv_records(frame, Path(csv), targets, extras)
    records = assign_splits(records, [0] * len(records), seed, grouped="patient_id" in frame)
    csv = Path(csv)
    digest = cache.source_digest(csv.parent, [csv, *(r.path for r in records)])
    return assemble(
        records,
        kind="csv-regression",
        root=csv.parent,
        task_type=TaskType.REGRESSION,
        image_size=image_size,
        digest=digest,
        extra_names=tuple(extras),
    )


def load_image_mask_pairs(
    path: Path,
    *,
    image_size: int = 224,
    seed: int = 0,
    images: str = "images",
    masks: str = "masks",
) -> Splits:
    """Segmentation from `path/images/<stem>.*` paired with `path/masks/<stem>.*` (non-zero = mask).

    Split 75/12.5/12.5 at random (no patient ids in this layout); images without a mask are skipped.
    """
    path = Path(path)
    image_dir, mask_dir = path / images, path / masks
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(
            f"no {images}/ and {masks}/ folders in {path}; expected {images}/<stem>.png + {masks}/<stem>.png"
        )
    mask_by_stem = {p.stem: p for p in list_images(mask_dir)}
    image_files = list_images(image_dir)
    records = [
        Record(p.stem, p, "train", 0, mask_path=mask_by_stem[p.stem])
        for p in image_files
        if p.stem in mask_by_stem
    ]
    if not records:
        raise DataError(f"no image in {image_dir} has a mask of the same name in {mask_dir}")
    records = assign_splits(records, [0] * len(records), seed, grouped=False)
    unpaired = [p.name for p in image_files if p.stem not in mask_by_stem]
    digest = cache.source_digest(
        path, [*(r.path for r in records), *(r.mask_path for r in records)]
    )
    notes = (
        {"unpaired": f"{len(unpaired)} images without a mask: {', '.join(unpaired[:3])}"}
        if unpaired
        else {}
    )
    return assemble(
        records,
        kind="image-mask-pairs",
        root=path,
        task_type=TaskType.SEGMENTATION,
        image_size=image_size,
        digest=digest,
        notes=notes,
    )
