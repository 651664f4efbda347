"""COVID-19 Radiography Database: COVID vs Normal chest radiographs, balanced, split 75/12.5/12.5.

The Normal class is undersampled (seeded) to the COVID count as in the study; turn it off with
`BALANCE = False`, `MEDTL_COVID19_BALANCE=0` or `load(..., balance=False)`. Lung opacity and viral
pneumonia images are not used.
"""

from __future__ import annotations

from pathlib import Path

from medtl.training.data import cache
from medtl.training.data.base import DataError, Splits
from medtl.training.data.generic import Record, assemble_balanced, list_images
from medtl.training.data.splits import env_flag
from medtl.training.spec import TASKS, Task

BALANCE = True
BALANCE_ENV = "MEDTL_COVID19_BALANCE"
TOP = "COVID-19_Radiography_Dataset"
LAYOUT = f"expected the COVID-19 Radiography layout: {TOP}/COVID/images/*.png + {TOP}/Normal/images/*.png"


def _image_folder(base: Path, name: str) -> Path | None:
    for folder in (base / name / "images", base / name):
        if folder.is_dir() and list_images(folder):
            return folder
    return None


def find_root(path: Path) -> Path:
    """The folder holding `COVID/` and `Normal/`: `path` itself, or one or two `COVID-19_Radiography_Dataset` below.

    Raises:
        DataError: no such folder.
    """
    for base in (path, path / TOP, path / TOP / TOP):
        if _image_folder(base, "COVID") and _image_folder(base, "Normal"):
            return base
    raise DataError(f"no COVID/ and Normal/ image folders in {path}; {LAYOUT}")


def load(
    path: Path | None,
    *,
    task: Task = Task.COVID19,
    image_size: int,
    seed: int = 0,
    balance: bool | None = None,
) -> Splits:
    """Read the COVID-19 Radiography Database under `path` (outer, inner or doubled folder).

    Class ids follow `TASKS[task].classes`: Normal = 0, COVID = 1. Undersampling and the
    stratified 75/12.5/12.5 split depend on `seed` only.

    Raises:
        DataError: the COVID or Normal image folder is missing.
    """
    if path is None or not Path(path).is_dir():
        raise DataError(f"covid19 needs a folder, got {path}; {LAYOUT}")
    root = find_root(Path(path))
    classes = TASKS[task].classes
    records = []
    for label, name in enumerate(classes):
        folder = _image_folder(root, name)
        if folder is None:
            raise DataError(f"no {name}/images/*.png in {root}; {LAYOUT}")
        records += [
            Record(id=f.stem, path=f, split="train", target=label) for f in list_images(folder)
        ]
    digest = cache.source_digest(root, [r.path for r in records])  # before undersampling
    do_balance = balance if balance is not None else env_flag(BALANCE_ENV, BALANCE)
    return assemble_balanced(records, seed, balance=do_balance, grouped=False, kind="covid19", root=root,
                             task_type=TASKS[task].type, image_size=image_size, digest=digest)
