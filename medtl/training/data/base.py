"""In-memory sample sets: every dataset, synthetic or downloaded, reduces to uint8 arrays.

A `SampleSet` holds one split as arrays (images `(N, H, W)` uint8 grayscale, possibly a memory
map), targets, optional extra tabular inputs, sample ids, patient groups and subgroup attributes
(sex, projection, modality: what evaluation breaks the test metric down by). `Splits` bundles
train/val/test with a digest of their membership so a run records exactly which data it saw.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from medtl.errors import UserError


class DataError(UserError, ValueError):
    """A dataset is missing, malformed or cannot serve the task; the message names what was expected."""


ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
"""A subgroup attribute's name: lower-case letters, digits and `_`, a letter first (it becomes a CSV column)."""

UNKNOWN = ""
"""The value of an attribute that is not recorded for a sample (an empty cell in predictions/test.csv)."""


def _attributes(raw: Mapping[str, Sequence[str]] | None, n: int) -> dict[str, tuple[str, ...]] | None:
    if not raw:
        return None
    out = {}
    for name, values in raw.items():
        if not isinstance(name, str) or not ATTRIBUTE_NAME.fullmatch(name):
            raise DataError(f"subgroup attribute name {name!r} must be lower-case letters, digits and _ (a letter first)")
        values = tuple(values)
        if len(values) != n:
            raise DataError(f"subgroup attribute {name!r} has {len(values)} values for {n} samples")
        if not all(isinstance(v, str) for v in values):
            raise DataError(f"subgroup attribute {name!r} must hold strings ({UNKNOWN!r} where not recorded)")
        out[name] = values
    return out


@dataclass(frozen=True)
class SampleSet:
    """One split. `targets`: int64 class ids, float32 values, or uint8 masks `(N, H, W)`.

    `attributes` maps a subgroup name (`sex`, `projection`, `modality`, ...) to one string a sample
    (`UNKNOWN`, the empty string, where not recorded); the model never sees them, the predictions
    table carries them as `subgroup_<name>` columns. Never an identifier: a patient's key is `groups`.
    """

    images: np.ndarray
    targets: np.ndarray
    ids: tuple[str, ...]
    extras: np.ndarray | None = None
    groups: tuple[str, ...] | None = None
    attributes: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, H, W), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != n or len(self.targets) != n:
            raise DataError(f"split arrays disagree: {len(self.images)} images, {len(self.targets)} targets, {n} ids")
        if self.extras is not None and len(self.extras) != n:
            raise DataError("extra inputs do not match the number of samples")
        object.__setattr__(self, "attributes", _attributes(self.attributes, n))

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> SampleSet:
        index = np.asarray(index, dtype=np.int64)
        return SampleSet(
            images=self.images[index],
            targets=self.targets[index],
            ids=tuple(self.ids[i] for i in index),
            extras=None if self.extras is None else self.extras[index],
            groups=None if self.groups is None else tuple(self.groups[i] for i in index),
            attributes=None
            if self.attributes is None
            else {name: tuple(values[i] for i in index) for name, values in self.attributes.items()},
        )


@dataclass(frozen=True)
class Splits:
    """Train, validation and test sets of one task, with where they came from."""

    train: SampleSet
    val: SampleSet
    test: SampleSet
    source: str
    source_digest: str = ""
    extra_names: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)

    def items(self) -> list[tuple[str, SampleSet]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The subgroup attributes any split carries, sorted."""
        return tuple(sorted({name for _, part in self.items() for name in part.attributes or {}}))

    @property
    def digest(self) -> str:
        """Hash of split membership (ids per split, in order) and of the source files.

        Subgroup attributes are left out: they never reach the model, and the digest is part of a
        run's protocol fingerprint, so runs from before attributes existed still compare with newer ones.
        """
        h = hashlib.sha256(self.source_digest.encode())
        for name, part in self.items():
            h.update(name.encode())
            for sample_id in part.ids:
                h.update(sample_id.encode())
                h.update(b"\0")
        return h.hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        return {name: len(part) for name, part in self.items()}


def stratified_fraction(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified subset of `targets` of about `fraction` of each class, sorted.

    Nested across fractions: each class is permuted once by `seed` and the subset is a prefix of
    that permutation, so the 5% subset lies inside the 25% one, inside the 50% one.
    Continuous or mask targets are treated as one stratum.
    """
    if fraction >= 1.0:
        return np.arange(len(targets))
    strata = targets if targets.ndim == 1 and targets.dtype.kind in "iub" else np.zeros(len(targets), int)
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        order = members[rng.permutation(len(members))]
        count = max(1, int(round(fraction * len(members))))
        keep.append(order[:count])
    return np.sort(np.concatenate(keep))
