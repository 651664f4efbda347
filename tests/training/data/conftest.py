"""Tiny copies of the five downstream datasets in their native on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.training.data import grazpedwri


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """A fresh, private preprocessing cache for every test."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MEDTL_CACHE_DIR", str(folder))
    return folder


def _gray(rng: np.random.Generator, h: int, w: int, level: int) -> np.ndarray:
    return np.clip(rng.normal(level, 20, (h, w)), 0, 255).astype(np.uint8)


def make_rsna(root: Path, n_train: int = 12, n_val: int = 6, n_test: int = 6) -> Path:
    """RSNA layout: doubled training folder, validation CSV, test truth in an .xlsx."""
    rng = np.random.default_rng(1)
    train_dir = root / "boneage-training-dataset" / "boneage-training-dataset"
    val_dir = root / "Bone Age Validation Set" / "boneage-validation-dataset-1"
    test_dir = root / "Bone Age Test Set" / "Test Set Images"
    for d in (train_dir, val_dir, test_dir):
        d.mkdir(parents=True)
    ids = {
        "train": range(1377, 1377 + n_train),
        "val": range(9000, 9000 + n_val),
        "test": range(4360, 4360 + n_test),
    }
    dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
    for split, folder in dirs.items():
        for k, i in enumerate(ids[split]):
            Image.fromarray(_gray(rng, 40 + 4 * (k % 3), 30, 60 + 10 * k)).save(folder / f"{i}.png")
    train = pd.DataFrame(
        {
            "id": list(ids["train"]),
            "boneage": [12.0 * (k + 1) for k in range(n_train)],
            "male": [k % 3 != 0 for k in range(n_train)],
        }
    )
    train.to_csv(root / "train.csv", index=False)  # booleans written as True/False
    val = pd.DataFrame(
        {
            "Image ID": list(ids["val"]),
            "male": ["True" if k % 2 else "False" for k in range(n_val)],
            "Bone Age (months)": [100 + k for k in range(n_val)],
        }
    )
    val.to_csv(root / "Bone Age Validation Set" / "Validation Dataset.csv", index=False)
    test = pd.DataFrame(
        {
            "Case ID": list(ids["test"]),
            "Sex": ["M" if k < 2 else "F" for k in range(n_test)],
            "Ground truth bone age (months)": [50.5 + k for k in range(n_test)],
        }
    )
    test.to_excel(root / "Bone Age Test Set" / "Bone age ground truth.xlsx", index=False)
    return root


def make_grazpedwri(root: Path, n_patients: int = 24, osteopenic_every: int = 4) -> Path:
    """GRAZPEDWRI-DX layout: dataset.csv (17 columns, flags 1 or empty) + 16-bit PNGs in images/."""
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        patient = str(1000 + p)
        osteo = p % osteopenic_every == 0
        for study in range(1 + p % 3):
            stem = f"{patient}_{1253423501 + p}_{study + 1:02d}_WRI-L2_F010"
            base = 20000 + 300 * p
            image = (base + rng.integers(0, 4000, (48, 36))).astype(np.uint16)
            Image.fromarray(image).save(root / "images" / f"{stem}.png")
            rows.append(
                {
                    "filestem": stem,
                    "patient_id": patient,
                    "study_number": study + 1,
                    "timehash": 1253423501 + p,
                    "gender": "M" if p % 2 else "F",
                    "age": 10.5,
                    "laterality": "L",
                    "projection": "" if p == 5 else 1 + study % 2,  # one patient without it
                    "initial_exam": 1 if study == 0 else "",
                    "ao_classification": "23r-M/2.1",
                    "cast": "",
                    "diagnosis_uncertain": "",
                    "osteopenia": 1 if osteo else "",
                    "fracture_visible": 1,
                    "metal": "",
                    "pixel_spacing": 0.144,
                    "device_manufacturer": "Siemens",
                }
            )
    pd.DataFrame(rows, columns=list(grazpedwri.COLUMNS)).to_csv(root / "dataset.csv", index=False)
    return root


def make_covid(root: Path, n_covid: int = 8, n_normal: int = 20, doubled: bool = True) -> Path:
    """COVID-19 Radiography layout, optionally with the doubled top folder; returns the outer folder."""
    rng = np.random.default_rng(3)
    top = root / "COVID-19_Radiography_Dataset"
    inner = top / "COVID-19_Radiography_Dataset" if doubled else top
    counts = {"COVID": n_covid, "Normal": n_normal, "Lung_Opacity": 3, "Viral Pneumonia": 2}
    for name, n in counts.items():
        (inner / name / "images").mkdir(parents=True)
        (inner / name / "masks").mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(_gray(rng, 32, 32, 90 if name == "COVID" else 150)).save(
                inner / name / "images" / f"{name}-{i}.png"
            )
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(
                inner / name / "masks" / f"{name}-{i}.png"
            )
    return root


BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def make_brain(root: Path, n_train: int = 8, n_test: int = 3) -> Path:
    """Brain Tumor MRI layout: Training/<class>/Tr-xx_NNNN.jpg and Testing/<class>/Te-xx_NNNN.jpg."""
    rng = np.random.default_rng(4)
    for part, prefix, n in (("Training", "Tr", n_train), ("Testing", "Te", n_test)):
        for c, name in enumerate(BRAIN_CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(_gray(rng, 36, 40, 40 + 50 * c))
                if i % 2:
                    image = image.convert("RGB")  # the download mixes gray and RGB JPEGs
                image.save(folder / f"{prefix}-{name[:2]}_{i:04d}.jpg", quality=90)
    return root


def make_luna(root: Path, n_series: int = 10) -> dict:
    """LUNA16 layout: subset*/<uid>.mhd/.raw written with SimpleITK + annotations.csv in world mm.

    Returns {"root", "nodules": [(uid, z, y, x, diameter_mm)], "spacing"} with voxel centres.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(5)
    spacing = (0.8, 0.8, 2.5)
    rows, nodules = [], []
    for s in range(n_series):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100 + s}"
        volume = np.full((12, 32, 32), -1000, dtype=np.int16)
        volume += rng.integers(0, 30, volume.shape).astype(np.int16)
        origin = (-100.0 + s, -120.0, -300.0 - 5 * s)
        z, y, x = 4 + s % 4, 10 + s, 12 + (s * 3) % 10
        diameter = 4.0 + s % 3
        zz, yy, xx = np.ogrid[:12, :32, :32]
        ball = (
            ((xx - x) * spacing[0]) ** 2
            + ((yy - y) * spacing[1]) ** 2
            + ((zz - z) * spacing[2]) ** 2
        )
        volume[ball <= (diameter / 2) ** 2] = 40
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        folder = root / f"subset{s % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
        world = [origin[0] + x * spacing[0], origin[1] + y * spacing[1], origin[2] + z * spacing[2]]
        rows.append(
            {
                "seriesuid": uid,
                "coordX": world[0],
                "coordY": world[1],
                "coordZ": world[2],
                "diameter_mm": diameter,
            }
        )
        nodules.append((uid, z, y, x, diameter))
    rows.append(
        {
            "seriesuid": "1.3.6.1.4.1.14519.5.2.1.6279.6001.999",
            "coordX": 0,
            "coordY": 0,
            "coordZ": 0,
            "diameter_mm": 5,
        }
    )
    pd.DataFrame(rows).to_csv(root / "annotations.csv", index=False)
    return {"root": root, "nodules": nodules, "spacing": spacing}


@pytest.fixture
def rsna_root(tmp_path) -> Path:
    return make_rsna(tmp_path / "rsna")


@pytest.fixture
def graz_root(tmp_path) -> Path:
    return make_grazpedwri(tmp_path / "graz")


@pytest.fixture
def covid_root(tmp_path) -> Path:
    return make_covid(tmp_path / "covid")


@pytest.fixture
def brain_root(tmp_path) -> Path:
    return make_brain(tmp_path / "brain")


@pytest.fixture
def luna(tmp_path) -> dict:
    return make_luna(tmp_path / "luna")
