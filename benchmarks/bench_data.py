"""Samples per second served from the preprocessing cache vs decoding the source files, per image kind.

Generates a few hundred files per kind in a temporary folder (8-bit PNG in the COVID-19 layout,
16-bit PNG in the GRAZPEDWRI-DX layout, JPEG in the Brain Tumor MRI layout, CT volumes in the
LUNA16 layout) and times each dataset reader three ways:

- decode: cache disabled (`MEDTL_CACHE_DIR=off`), every file decoded and resized;
- fill: empty cache, decode plus writing the entry;
- cached: warm cache, the reader's listing and digest plus reading every pixel of the memory map;
- read_only: reading every pixel of an already opened entry (what each epoch costs).

Run: `python benchmarks/bench_data.py [--n 300] [--size 64] [--source-px 64]`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
from PIL import Image


def _noise(rng: np.random.Generator, px: int, dtype=np.uint8, top: int = 255) -> np.ndarray:
    return rng.integers(0, top, (px, px)).astype(dtype)


def make_png8(root: Path, n: int, px: int) -> Path:
    rng = np.random.default_rng(0)
    for name in ("COVID", "Normal"):
        folder = root / "COVID-19_Radiography_Dataset" / name / "images"
        folder.mkdir(parents=True)
        for i in range(n // 2):
            Image.fromarray(_noise(rng, px)).save(folder / f"{name}-{i}.png")
    return root


def make_png16(root: Path, n: int, px: int) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        stem = f"{1000 + i // 3}_{i}_01_WRI-L2_F010"
        Image.fromarray(_noise(rng, px, np.uint16, 65535)).save(root / "images" / f"{stem}.png")
        rows.append(
            {"filestem": stem, "patient_id": 1000 + i // 3, "osteopenia": 1 if i % 2 else ""}
        )
    pd.DataFrame(rows).to_csv(root / "dataset.csv", index=False)
    return root


def make_jpeg(root: Path, n: int, px: int) -> Path:
    rng = np.random.default_rng(2)
    classes = ("glioma", "meningioma", "notumor", "pituitary")
    for part, share in (("Training", 0.8), ("Testing", 0.2)):
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(max(1, int(n * share / 4))):
                Image.fromarray(_noise(rng, px)).save(folder / f"x{i}.jpg", quality=90)
    return root


def make_ct(root: Path, n: int, px: int) -> Path:
    """Volumes of `px` x `px` x 40 slices, each with nodules covering about 20 slices."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    rows = []
    series = max(1, n // 20)
    for s in range(series):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{s:04d}"
        volume = rng.integers(-1000, 400, (40, px, px)).astype(np.int16)
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing((0.7, 0.7, 1.0))
        folder = root / f"subset{s % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
        for z in (10, 30):
            rows.append(
                {
                    "seriesuid": uid,
                    "coordX": px * 0.35,
                    "coordY": px * 0.35,
                    "coordZ": z,
                    "diameter_mm": 10,
                }
            )
    pd.DataFrame(rows).to_csv(root / "annotations.csv", index=False)
    return root


def _time(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _touch(splits) -> int:
    total = 0
    for _, part in splits.items():
        for start in range(0, len(part), 64):
            total += int(np.asarray(part.images[start : start + 64]).sum(dtype=np.int64) > -1)
    return sum(len(p) for _, p in splits.items())


def bench_kind(
    name: str, make: Callable, load: Callable, n: int, size: int, px: int, work: Path
) -> dict:
    root = make(work / name, n, px)
    cache_dir = work / f"cache-{name}"
    os.environ["MEDTL_CACHE_DIR"] = "off"
    t_decode, splits = _time(lambda: load(root, image_size=size))
    samples = sum(len(p) for _, p in splits.items())
    os.environ["MEDTL_CACHE_DIR"] = str(cache_dir)
    t_fill, _ = _time(lambda: load(root, image_size=size))
    t_cached, warm = _time(lambda: load(root, image_size=size), repeat=3)
    t_read, _ = _time(lambda: _touch(warm), repeat=3)
    t_cached += t_read
    return {
        "samples": samples,
        "decode_samples_per_s": round(samples / t_decode, 1),
        "fill_samples_per_s": round(samples / t_fill, 1),
        "cached_samples_per_s": round(samples / t_cached, 1),
        "read_only_samples_per_s": round(samples / t_read, 1),
        "speedup": round(t_decode / t_cached, 1),
    }


def main(n: int = 300, size: int = 64, source_px: int = 64) -> dict:
    """Generate `n` files per kind of `source_px` pixels, time the readers at `size`; return the numbers."""
    from medtl.training.data import brain_tumor_mri, covid19, grazpedwri, luna16

    kinds = {
        "png8 (covid19)": (make_png8, lambda r, **k: covid19.load(r, balance=False, **k)),
        "png16 (grazpedwri)": (make_png16, lambda r, **k: grazpedwri.load(r, balance=False, **k)),
        "jpeg (brain-tumor-mri)": (make_jpeg, brain_tumor_mri.load),
        "ct slices (luna16)": (make_ct, luna16.load),
    }
    results: dict[str, object] = {
        "n_files": n,
        "image_size": size,
        "source_px": source_px,
        "threads": os.cpu_count(),
    }
    # bench_kind switches the cache on and off; the caller's setting comes back afterwards
    with mock.patch.dict(os.environ), tempfile.TemporaryDirectory() as tmp:
        for i, (name, (make, load)) in enumerate(kinds.items()):
            results[name] = bench_kind(name.split()[0], make, load, n, size, source_px, Path(tmp) / str(i))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="files per kind (default 300)")
    parser.add_argument("--size", type=int, default=64, help="output image side (default 64)")
    parser.add_argument(
        "--source-px", type=int, default=64, help="side of the generated files (default 64)"
    )
    args = parser.parse_args()
    print(json.dumps(main(args.n, args.size, args.source_px), indent=2))
