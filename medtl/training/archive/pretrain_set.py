"""The pretraining dataset: pseudo-labelled PNGs of an ingest folder, split by patient.

Rows of dropped clusters (`label == -1`) are left out. Labels are remapped to 0..K-1 over the
selected modality (the mapping is recorded in `Splits.notes["label_map"]`). Patients are ordered
by a keyed digest of their (already de-identified) key and the data seed, then cut 80/10/10 with
at least one patient in validation and test, so a patient's images never straddle two splits
and the split does not depend on the order of the manifest. Each image carries the manifest's
`modality` and `body_part` (fixed vocabularies, docs/privacy.md) as subgroup attributes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medtl.training.data.base import DataError, SampleSet, Splits
from medtl.training.data.subgroups import texts
from medtl.training.spec import Modality, parse_enum

FRACTIONS = (0.8, 0.1, 0.1)
SUBGROUP_COLUMNS = ("modality", "body_part")
"""Manifest columns kept as subgroup attributes: vocabulary words of the header allow-list, never identifiers."""


def split_patients(patients: list[str], seed: int = 0, fractions: tuple[float, float, float] = FRACTIONS) -> dict[str, str]:
    """Map each patient key to `train`, `val` or `test`, deterministically from the key and seed.

    Needs at least 3 patients; validation and test get at least one each.
    """
    unique = sorted(set(patients))
    if len(unique) < 3:
        raise DataError(f"need at least 3 patients to split train/val/test, found {len(unique)}")
    order = sorted(unique, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n = len(order)
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, names, strict=True))


def oversampling_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample weights that give every class the same total weight (they sum to 1).

    For `torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights),
    replacement=True)`: each class is then drawn equally often in expectation.
    """
    targets = np.asarray(targets)
    if targets.ndim != 1 or len(targets) == 0:
        raise DataError(f"targets must be a non-empty 1-D array, got shape {targets.shape}")
    classes, inverse, counts = np.unique(targets, return_inverse=True, return_counts=True)
    return 1.0 / (len(classes) * counts[inverse].astype(np.float64))


def _load_images(folder: Path, paths: list[str], size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, rel in enumerate(paths):
        with Image.open(folder / rel) as img:
            gray = img.convert("L")
            out[i] = np.asarray(gray if gray.size == (size, size) else gray.resize((size, size), Image.Resampling.BILINEAR))
    return out


def load_pretrain(folder: Path, *, modality: str | Modality = Modality.ALL, image_size: int = 224, seed: int = 0) -> Splits:
    """Train/val/test splits of the pseudo-labelled archive in `folder` for one modality.

    Args:
        folder: an ingest output folder whose manifest has a `label` column (`medtl pseudolabel`).
        modality: `all`, `MR`, `CR` or `CT`.
        image_size: side of the square uint8 images returned.
        seed: the data seed of the patient split.

    Raises:
        DataError: no manifest or no labels, too few patients or classes for the modality.
    """
    import pandas as pd

    folder = Path(folder)
    modality = parse_enum(Modality, modality, "modality")
    path = folder / "manifest.parquet"
    if not path.is_file():
        raise DataError(f"no manifest.parquet in {folder}; run `medtl ingest` then `medtl pseudolabel`")
    manifest = pd.read_parquet(path)
    if "label" not in manifest:
        raise DataError(f"{path} has no labels yet; run `medtl pseudolabel {folder} --clusters K` first")
    rows = manifest[manifest["label"] >= 0]
    if modality is not Modality.ALL:
        rows = rows[rows["modality"] == modality.value]
    rows = rows.sort_values("image_path").reset_index(drop=True)
    classes = sorted(int(v) for v in rows["label"].unique())
    if len(classes) < 2:
        raise DataError(f"modality {modality.value}: {len(rows)} labelled images in {len(classes)} cluster(s); need 2 or more clusters")
    mapping = {c: i for i, c in enumerate(classes)}
    assign = split_patients(list(rows["patient_key"]), seed)
    parts = {}
    for name in ("train", "val", "test"):
        sel = rows[rows["patient_key"].map(assign) == name]
        parts[name] = SampleSet(
            images=_load_images(folder, list(sel["image_path"]), image_size),
            targets=sel["label"].map(mapping).to_numpy(np.int64),
            ids=tuple(sel["image_path"]),
            groups=tuple(sel["patient_key"]),
            attributes={c: tuple(texts(sel[c])) for c in SUBGROUP_COLUMNS if c in sel.columns},
        )
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows[["image_path", "label"]], index=False).values.tobytes())
    return Splits(
        train=parts["train"], val=parts["val"], test=parts["test"], source=str(folder),
        source_digest=digest.hexdigest()[:16],
        notes={"modality": modality.value, "classes": str(len(classes)),
               "label_map": json.dumps({str(c): i for c, i in mapping.items()})},
    )
