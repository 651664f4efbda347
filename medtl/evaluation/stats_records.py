"""Study statistics' frozen results: one test's record, learning-rate choices, run counts, the set."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Comparison:
    """One test result; `to_record()` gives the comparisons.json entry.

    Omnibus tests (levene, kruskal) have group_b and n_b None and n_a the total number of runs.
    `statistic` is U of group_a (mannwhitneyu), H (kruskal), W (levene), t (ttest) or
    mean_a - mean_b (permutation). Effect sizes and `hl_shift` are positive when group_a's values
    are larger. `min_attainable_p` is the smallest raw p the test can give at these sizes.
    Undefined tests carry p values None and say why in `note`. Pairs also carry both arms' means,
    their difference and its 95 % bootstrap interval over seeds (INTERVAL_KEYS).
    """

    task: str
    arch: str
    metric: str
    test: str
    group_a: str | None = None
    group_b: str | None = None
    n_a: int = 0
    n_b: int | None = None
    statistic: float | None = None
    p_raw: float | None = None
    p_adjusted: float | None = None
    correction: str = "none"
    method: str = ""
    ties: bool = False
    n_comparisons: int = 1
    min_attainable_p: float | None = None
    omnibus_significant: bool | None = None
    effect_size: float | None = None
    effect_size_name: str | None = None
    hl_shift: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    lr_a: float | None = None
    lr_b: float | None = None
    note: str | None = None
    mean_a: float | None = None
    mean_b: float | None = None
    mean_diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    diff_ci_level: float | None = None
    diff_ci_method: str | None = None
    diff_ci_resamples: int | None = None
    diff_ci_seed: int | None = None
    diff_ci_note: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-safe dict with RECORD_KEYS, then INTERVAL_KEYS (None for NaN or infinite numbers)."""
        return {key: _json_safe(getattr(self, key)) for key in (*RECORD_KEYS, *INTERVAL_KEYS)}


@dataclass(frozen=True)
class LrChoice:
    """The learning rate an arm is compared at: the best mean validation primary metric."""

    task: str
    arch: str
    arm: str
    lr: float | None
    metric: str
    mean_val: float | None
    n_runs: int


@dataclass(frozen=True)
class ArmCount:
    """How many runs of one arm at one learning rate finished, failed or diverged."""

    task: str
    arch: str
    arm: str
    lr: float
    n_runs: int
    n_finished: int
    n_failed: int
    n_diverged: int


@dataclass(frozen=True)
class ComparisonSet:
    """Every comparison of one analysis, with the learning-rate choices and run counts behind it."""

    mode: str
    per_lr: bool
    alpha: float
    records: tuple[Comparison, ...]
    selection: tuple[LrChoice, ...]
    counts: tuple[ArmCount, ...]
    exclude_diverged: bool = False

    def to_records(self) -> list[dict[str, Any]]:
        """The records as plain JSON-safe dicts (the comparisons.json content)."""
        return [r.to_record() for r in self.records]

    def to_frame(self) -> pd.DataFrame:
        """The records as a DataFrame with RECORD_KEYS and INTERVAL_KEYS as columns."""
        return pd.DataFrame(self.to_records(), columns=[*RECORD_KEYS, *INTERVAL_KEYS])

    def selection_frame(self) -> pd.DataFrame:
        """The selected learning rates, one row per (task, arch, arm)."""
        return pd.DataFrame(
            [dataclasses.asdict(c) for c in self.selection], columns=list(LR_COLUMNS)
        )

    def counts_frame(self) -> pd.DataFrame:
        """Run counts per (task, arch, arm, lr)."""
        cols = [f.name for f in dataclasses.fields(ArmCount)]
        return pd.DataFrame([dataclasses.asdict(c) for c in self.counts], columns=cols)


INTERVAL_KEYS = (
    "mean_a", "mean_b", "mean_diff", "diff_ci_low", "diff_ci_high", "diff_ci_level", "diff_ci_method",
    "diff_ci_resamples", "diff_ci_seed", "diff_ci_note",
)
"""A pair's means and the 95 % interval of mean_a − mean_b over seeds (`uncertainty`), beside its test;
None for omnibus tests. comparisons.json and .csv carry them after every other key."""
RECORD_KEYS = tuple(f.name for f in dataclasses.fields(Comparison) if f.name not in INTERVAL_KEYS)
LR_COLUMNS = tuple(f.name for f in dataclasses.fields(LrChoice))


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
