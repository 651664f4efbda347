"""Brain Tumor MRI: four classes; `Training` split 75/25 per class into train/val, `Testing` is test."""

from __future__ import annotations

from pathlib import Path

from medtl.training.data import cache
from medtl.training.data.base import DataError, Splits
from medtl.training.data.generic import Record, assemble, list_images
from medtl.training.data.splits import group_split, split_labels
from medtl.training.spec import TASKS, Task

VAL_FRACTION = 0.25
LAYOUT = (
    "expected the Brain Tumor MRI layout: Training/{glioma,meningioma,notumor,pituitary}/*.jpg "
    "+ Testing/{glioma,meningioma,notumor,pituitary}/*.jpg"
)


def find_root(path: Path) -> Path:
    """The folder holding `Training/` and `Testing/`: `path` or up to two levels below it.

    Raises:
        DataError: no such folder.
    """
    candidates = [path, *sorted(path.glob("*")), *sorted(path.glob("*/*"))]
    for base in candidates:
        if (base / "Training").is_dir() and (base / "Testing").is_dir():
            return base
    raise DataError(f"no Training/ and Testing/ folders in {path}; {LAYOUT}")


def load(
    path: Path | None, *, task: Task = Task.BRAIN_TUMOR_MRI, image_size: int, seed: int = 0
) -> Splits:
    """Read Brain Tumor MRI under `path`; class ids follow `TASKS[task].classes`.

    `Training` is split 75/25 into train/val per class with `seed`; `Testing` is the test split.

    Raises:
        DataError: a class folder is missing or empty.
    """
    if path is None or not Path(path).is_dir():
        raise DataError(f"brain-tumor-mri needs a folder, got {path}; {LAYOUT}")
    root = find_root(Path(path))
    classes = TASKS[task].classes
    training: list[Record] = []
    testing: list[Record] = []
    for part, bucket in (("Training", training), ("Testing", testing)):
        for label, name in enumerate(classes):
            folder = root / part / name
            files = list_images(folder) if folder.is_dir() else []
            if not files:
                raise DataError(f"no images in {folder}; {LAYOUT}")
            bucket += [
                Record(id=f"{part}/{name}/{f.stem}", path=f, split="test", target=label)
                for f in files
            ]
    parts = group_split(
        [r.target for r in training], fractions=(1 - VAL_FRACTION, VAL_FRACTION, 0.0), seed=seed
    )
    names = split_labels(len(training), parts)
    training = [Record(r.id, r.path, s, r.target) for r, s in zip(training, names, strict=True)]
    records = training + testing
    return assemble(
        records,
        kind="brain-tumor-mri",
        root=root,
        task_type=TASKS[task].type,
        image_size=image_size,
        digest=cache.source_digest(root, [r.path for r in records]),
    )
