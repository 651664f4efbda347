"""Deterministic splitting helpers: group-aware, stratified splits and balanced undersampling.

Every helper is a pure function of its inputs and a seed: callers pass listings already sorted,
a seeded permutation decides the order, and nothing depends on directory or hash order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medtl.training.data.base import DataError

STUDY_FRACTIONS: tuple[float, float, float] = (0.75, 0.125, 0.125)
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise DataError(
            f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}"
        )
    return f


def group_split(
    labels: Sequence | np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    fractions: Sequence[float] = STUDY_FRACTIONS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices into train/val/test, by group and stratified by label.

    Groups (patients) never straddle two splits. Each group is assigned the label of its first
    sample in sorted order (its majority label where labels differ); within each label, groups
    are permuted by `seed` and laid out along the sample axis, each going to the split in which
    the midpoint of its samples falls. Without `groups` every sample is its own group, which is
    a plain stratified split. Pass `labels` of one value for an unstratified split.

    Args:
        labels: one stratum label per sample (class id, or any hashable value).
        groups: one group id per sample (e.g. patient id), or None.
        fractions: train, val, test fractions summing to 1.
        seed: seed of the permutation.

    Returns:
        Three sorted int64 index arrays (train, val, test).
    """
    bounds = np.cumsum(_check_fractions(fractions))
    labels = np.asarray(labels)
    n = len(labels)
    if groups is None:
        group_ids = np.arange(n)
    else:
        if len(groups) != n:
            raise DataError(f"{len(groups)} group ids for {n} samples")
        _, group_ids = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n_groups = int(group_ids.max()) + 1 if n else 0
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for i, g in enumerate(group_ids):
        members[int(g)].append(i)
    _, label_ids = np.unique(labels, return_inverse=True)
    group_label = np.empty(n_groups, dtype=np.int64)
    for g, idx in enumerate(members):
        values, counts = np.unique(label_ids[idx], return_counts=True)
        group_label[g] = values[np.argmax(counts)]
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[], [], []]
    for stratum in np.unique(group_label):
        chosen = np.flatnonzero(group_label == stratum)
        order = chosen[rng.permutation(len(chosen))]
        sizes = np.array([len(members[g]) for g in order], dtype=np.float64)
        total = sizes.sum()
        ends = np.cumsum(sizes)
        mids = (ends - sizes / 2) / total
        for g, mid in zip(order, mids, strict=True):
            part = int(np.searchsorted(bounds, mid, side="right"))
            out[min(part, 2)].extend(members[g])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in out)  # type: ignore[return-value]


def balanced_undersample(labels: Sequence | np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices (sorted) that keep every sample of the rarest class and as many of each other.

    The kept samples of a larger class are a seeded random subset, as the study did for
    GRAZPEDWRI-DX and the COVID-19 database.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    values, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.min())
    rng = np.random.default_rng(seed)
    keep = []
    for value in values:
        idx = np.flatnonzero(labels == value)
        keep.append(idx[np.sort(rng.permutation(len(idx))[:smallest])])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def split_labels(n: int, parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[str]:
    """Name of the split ("train", "val", "test") of each of `n` samples, from three index arrays."""
    names = [""] * n
    for name, idx in zip(SPLIT_NAMES, parts, strict=True):
        for i in idx:
            names[int(i)] = name
    return names


def env_flag(name: str, default: bool) -> bool:
    """Read a boolean environment variable (`1/true/yes/on` or `0/false/no/off`), else `default`."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise DataError(
        f"{name}={raw!r} is not a boolean; use one of 1, 0, true, false, yes, no, on, off"
    )
