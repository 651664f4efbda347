"""Pseudo-labels for an ingested archive: header + image (+ report text) features, k-means, pruning.

Image embedding: a fixed, deterministic, training-free descriptor — the PCA (seeded, fitted on
the archive) of 32×32 downsampled images, plus hand-crafted statistics: a 16-bin intensity
histogram of the foreground, mean and spread, gradient energy (texture and edges), the fraction
of dark pixels inside the body, and a coarse 4×4 grid of mean intensities (layout). It costs
milliseconds per image on a CPU, needs no epochs or seeds beyond the PCA's, and captures what
separates modality (intensity distribution, noise, texture) and anatomy (layout, shape). The
paper used autoencoder embeddings; at our scale a learned embedding adds training time and
nondeterminism without separating the groups better. See docs/pseudolabel.md.

Each feature block (header, image, text) is standardised and scaled by 1/sqrt(its width), so
blocks weigh equally whatever their size. Clusters whose modality or body-part distribution has a
normalised entropy above `max_entropy` are dropped, as the study dropped 14 of its 50 clusters;
their rows keep `label = -1` in the manifest. Labels of kept clusters are the k-means cluster ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtl.atomic import atomic_path
from medtl.training.data.base import DataError

MANIFEST = "manifest.parquet"
SUMMARY = "clusters.csv"
MOSAICS = "clusters"
DROPPED = -1
NUMERIC_FIELDS = (
    "rows", "columns", "pixel_spacing_row", "pixel_spacing_col", "slice_thickness", "bits_stored",
    "kvp", "magnetic_field_strength", "echo_time", "repetition_time", "number_of_frames",
)
CATEGORICAL_FIELDS = ("modality", "body_part", "photometric_interpretation")
THUMB = 32


@dataclass(frozen=True)
class PseudoLabels:
    """Result of `pseudolabel`: labels per manifest row, a per-cluster summary and scores."""

    labels: np.ndarray
    summary: Any  # pandas DataFrame: cluster, size, kept, entropies, compositions
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


def load_manifest(folder: Path) -> Any:
    """The manifest of an ingest output folder, or a `DataError` naming what to run first."""
    import pandas as pd

    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {folder}; run `medtl ingest SRC --out {folder}` first")
    return pd.read_parquet(path)


def _standardise(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float64)
    if block.size == 0 or block.shape[1] == 0:
        return block
    block = (block - block.mean(0)) / np.where(block.std(0) > 1e-9, block.std(0), 1.0)
    return block / np.sqrt(block.shape[1])


def header_features(manifest: Any) -> np.ndarray:
    """One-hot categorical fields and standardised numeric fields (missing → the median)."""
    import pandas as pd

    cats = [pd.get_dummies(manifest[c].fillna("none").astype(str)).to_numpy(float)
            for c in CATEGORICAL_FIELDS if c in manifest]
    nums = []
    for name in NUMERIC_FIELDS:
        if name in manifest:
            col = pd.to_numeric(manifest[name], errors="coerce").astype(float)
            col = col.fillna(col.median() if col.notna().any() else 0.0).to_numpy()
            nums.append(np.log1p(np.abs(col)) * np.sign(col))
    numeric = _standardise(np.stack(nums, 1)) if nums else np.zeros((len(manifest), 0))
    return np.hstack([_standardise(np.hstack(cats)) if cats else np.zeros((len(manifest), 0)), numeric])


def _descriptor(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    thumb = np.asarray(Image.fromarray(image).resize((THUMB, THUMB), Image.Resampling.BILINEAR), np.float64) / 255
    body = image > 8
    values = image[body].astype(np.float64) / 255 if body.any() else np.zeros(1)
    hist = np.histogram(values, bins=16, range=(0, 1))[0] / max(values.size, 1)
    gy, gx = np.gradient(thumb)
    grid = thumb.reshape(4, THUMB // 4, 4, THUMB // 4).mean((1, 3)).ravel()
    stats = np.array([values.mean(), values.std(), np.hypot(gy, gx).mean(), body.mean(),
                      float((values < 0.25).mean())])
    return thumb.ravel(), np.concatenate([hist, stats, grid])


def image_features(folder: Path, paths: list[str], seed: int = 0, components: int = 16) -> np.ndarray:
    """Embeddings of the manifest's PNGs: seeded PCA of 32×32 thumbnails + hand-crafted statistics."""
    from PIL import Image
    from sklearn.decomposition import PCA

    thumbs, stats = [], []
    for rel in paths:
        with Image.open(Path(folder) / rel) as img:
            thumb, stat = _descriptor(np.asarray(img.convert("L")))
        thumbs.append(thumb)
        stats.append(stat)
    thumbs_arr = np.asarray(thumbs)
    n_comp = max(1, min(components, len(paths) - 1, thumbs_arr.shape[1]))
    pca = PCA(n_components=n_comp, random_state=seed, svd_solver="randomized" if len(paths) > 500 else "full")
    return np.hstack([_standardise(pca.fit_transform(thumbs_arr)), _standardise(np.asarray(stats))])


def text_features(manifest: Any, reports_csv: Path, seed: int = 0, components: int = 8) -> np.ndarray:
    """TF-IDF + truncated SVD of report text joined by `study_key`; studies without a report get zeros."""
    import pandas as pd
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    path = Path(reports_csv)
    if not path.is_file():
        raise DataError(f"reports file {reports_csv} does not exist")
    reports = pd.read_csv(path, dtype=str)
    if not {"study_key", "text"} <= set(reports.columns):
        raise DataError(f"{reports_csv} needs columns study_key,text; has {', '.join(reports.columns)}")
    texts = reports.dropna().groupby("study_key")["text"].apply(" ".join)
    joined = manifest["study_key"].map(texts).fillna("")
    if not joined.str.strip().any():
        raise DataError(f"no report in {reports_csv} matches a study_key of the manifest")
    matrix = TfidfVectorizer(min_df=1, max_features=5000).fit_transform(joined)
    n_comp = max(1, min(components, matrix.shape[1] - 1, len(joined) - 1))
    dense = TruncatedSVD(n_components=n_comp, random_state=seed).fit_transform(matrix)
    return _standardise(dense)


def normalised_entropy(values: Any, categories: int) -> float:
    """Shannon entropy of `values`' distribution divided by log(`categories`); 0 when categories ≤ 1."""
    _, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    if categories <= 1 or counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log(p)).sum() / np.log(categories)))


def summarise(manifest: Any, clusters: np.ndarray, max_entropy: float) -> Any:
    """Per-cluster size, modality / body-part composition and entropy, and whether it is kept."""
    import pandas as pd

    n_mod, n_body = manifest["modality"].nunique(), manifest["body_part"].nunique()
    rows = []
    for c in np.unique(clusters):
        part = manifest[clusters == c]
        h_mod = normalised_entropy(part["modality"], n_mod)
        h_body = normalised_entropy(part["body_part"], n_body)
        rows.append({
            "cluster": int(c), "size": len(part),
            "modality_composition": _composition(part["modality"]),
            "body_part_composition": _composition(part["body_part"]),
            "modality_entropy": round(h_mod, 4), "body_part_entropy": round(h_body, 4),
            "kept": bool(max(h_mod, h_body) <= max_entropy),
        })
    return pd.DataFrame(rows)


def _composition(values: Any) -> str:
    counts = values.value_counts()
    return "; ".join(f"{k}={v}" for k, v in counts.items())


def scores(manifest: Any, clusters: np.ndarray) -> dict[str, float]:
    """Homogeneity, completeness and NMI of the clusters against modality, body part and both."""
    from sklearn import metrics

    truths = {
        "modality": manifest["modality"].astype(str),
        "body_part": manifest["body_part"].astype(str),
        "group": manifest["modality"].astype(str) + "/" + manifest["body_part"].astype(str),
    }
    out: dict[str, float] = {}
    for name, truth in truths.items():
        out[f"homogeneity_{name}"] = float(metrics.homogeneity_score(truth, clusters))
        out[f"completeness_{name}"] = float(metrics.completeness_score(truth, clusters))
        out[f"nmi_{name}"] = float(metrics.normalized_mutual_info_score(truth, clusters))
    return out


def pseudolabel(
    folder: Path,
    *,
    clusters: int,
    seed: int = 0,
    max_entropy: float = 0.5,
    reports: Path | None = None,
    write: bool = True,
) -> PseudoLabels:
    """Cluster the ingested images and (with `write`) store `label` in the manifest.

    Writes `manifest.parquet` (with `label`: the cluster id, or -1 for a dropped cluster),
    `clusters.csv` (the summary) and `clusters/cluster_NN.png` mosaics, each atomically.

    Raises:
        DataError: no manifest, `clusters` < 2 or above the number of images, a bad reports file.
    """
    from sklearn.cluster import KMeans

    folder = Path(folder)
    manifest = load_manifest(folder)
    if clusters < 2 or clusters > len(manifest):
        raise DataError(f"--clusters must be between 2 and the number of images ({len(manifest)}), got {clusters}")
    if not 0.0 <= max_entropy <= 1.0:
        raise DataError(f"--max-entropy must lie in [0, 1], got {max_entropy}")
    blocks = [header_features(manifest), image_features(folder, list(manifest["image_path"]), seed)]
    if reports is not None:
        blocks.append(text_features(manifest, reports, seed))
    features = np.hstack(blocks)
    ids = KMeans(n_clusters=clusters, random_state=seed, n_init=10).fit_predict(features)
    summary = summarise(manifest, ids, max_entropy)
    kept = set(summary.loc[summary["kept"], "cluster"])
    labels = np.where(np.isin(ids, list(kept)), ids, DROPPED).astype(np.int64)
    result_metrics = scores(manifest, ids)
    result_metrics.update(kept_clusters=float(len(kept)), dropped_clusters=float(len(summary) - len(kept)),
                          kept_images=float((labels >= 0).sum()))
    params = {"clusters": clusters, "seed": seed, "max_entropy": max_entropy, "reports": reports is not None,
              "images": len(manifest), "features": features.shape[1],
              "embedding": f"pca{THUMB}x{THUMB}+handcrafted"}
    if write:
        _write(folder, manifest, labels, ids, summary, seed)
    return PseudoLabels(labels, summary, result_metrics, params)


def _write(folder: Path, manifest: Any, labels: np.ndarray, ids: np.ndarray, summary: Any, seed: int) -> None:
    mosaics = folder / MOSAICS
    mosaics.mkdir(exist_ok=True)
    for old in mosaics.glob("cluster_*.png"):
        old.unlink()
    for c in summary["cluster"]:
        members = list(manifest.loc[ids == c, "image_path"])
        _atomic(mosaics / f"cluster_{c:02d}.png", lambda p, m=members: mosaic(folder, m, seed).save(p, format="PNG"))
    _atomic(folder / SUMMARY, lambda p: summary.to_csv(p, index=False))
    out = manifest.assign(label=labels)
    _atomic(folder / MANIFEST, lambda p: out.to_parquet(p, index=False))


def _atomic(path: Path, write: Any) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def mosaic(folder: Path, paths: list[str], seed: int = 0, grid: int = 4, tile: int = 64) -> Any:
    """A `grid × grid` PIL image of up to grid² randomly chosen (seeded) member images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.permutation(len(paths))[: grid * grid])]
    canvas = Image.new("L", (grid * tile, grid * tile))
    for k, rel in enumerate(chosen):
        with Image.open(Path(folder) / rel) as img:
            canvas.paste(img.convert("L").resize((tile, tile)), ((k % grid) * tile, (k // grid) * tile))
    return canvas
