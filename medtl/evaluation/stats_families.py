"""Test families of one (task, arch, metric) cell: paper mode (Levene and Kruskal–Wallis, Mann–Whitney
pairs with Bonferroni; Student t for single-modality variants), recommended mode (permutation pairs
with Holm), and the pairwise correction and exclusion notes both share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any

import numpy as np

from medtl.evaluation.stats_exact import (
    bonferroni,
    has_ties,
    holm,
    join_notes,
    kruskal_min_p,
    mwu_pair,
    permutation_pair,
    scipy_fields,
    scipy_stats,
    too_few,
    ttest_pair,
    undefined,
)
from medtl.evaluation.stats_records import Comparison
from medtl.evaluation.uncertainty import difference_interval


@dataclass(frozen=True)
class Arm:
    """One arm's counted values in a cell, with how many runs were left out and why."""

    name: str
    lr: float | None
    values: np.ndarray
    n_failed: int = 0
    n_diverged: int = 0
    n_nan: int = 0
    note: str | None = None
    n_diverged_counted: int = 0

    @property
    def n(self) -> int:
        return int(self.values.size)


@dataclass(frozen=True)
class Cell:
    """Where a family of tests runs: task, arch, metric and the learning rate (None: each arm's own)."""

    task: str
    arch: str
    metric: str
    lr: float | None = None

    def record(self, test: str, **values: Any) -> Comparison:
        """A Comparison of this cell (lr_a = lr_b = the cell's learning rate when it has one)."""
        lrs = {"lr_a": self.lr, "lr_b": self.lr} if self.lr is not None else {}
        return Comparison(self.task, self.arch, self.metric, test, **{**lrs, **values})


# ---------------------------------------------------------------- paper mode


def paper_family(ctx: Cell, arms: list[Arm], alpha: float) -> list[Comparison]:
    """Levene and Kruskal–Wallis across the arms, then every pair by Mann–Whitney U with Bonferroni."""
    ready = [a for a in arms if a.n >= 2]
    notes = [too_few(a.name, a.n) + ": left out" for a in arms if a.n < 2] + exclusions(arms)
    values = [a.values for a in ready]
    pooled = np.concatenate(values) if values else np.empty(0)
    ties = has_ties(pooled)
    total = int(pooled.size)
    if len(arms) == 1:
        reason = f"only one arm '{arms[0].name}': nothing to compare"
    elif len(ready) < 2:
        reason = "fewer than 2 arms with at least 2 runs: test undefined"
    elif np.ptp(pooled) == 0:
        reason = "all values identical: test undefined"
    else:
        reason = None
    common = {"n_a": total, "ties": ties}
    if reason is None and all(np.ptp(v) == 0 for v in values):
        levene = undefined("every arm constant: variance test undefined")
    elif reason is None:
        levene = scipy_fields(scipy_stats().levene(*values))
    else:
        levene = undefined(reason)
    if reason is None:
        kruskal = scipy_fields(scipy_stats().kruskal(*values))
        kruskal["min_attainable_p"] = kruskal_min_p([v.size for v in values])
        h = kruskal["statistic"]
        if h is not None and total > 1:
            kruskal.update(effect_size=h / (total - 1), effect_size_name="epsilon_squared")
    else:
        kruskal = undefined(reason)
    p_kw = kruskal.get("p_raw")
    significant = None if p_kw is None else bool(p_kw < alpha)
    out = []
    for test, result, method in (
        ("levene", levene, "Levene (center=median)"),
        ("kruskal", kruskal, "asymptotic chi-square (tie corrected)"),
    ):
        result.setdefault("min_attainable_p", 0.0 if result.get("p_raw") is not None else None)
        note = join_notes([result.pop("note", None), *notes])
        out.append(
            ctx.record(
                test,
                **common,
                **result,
                p_adjusted=result.get("p_raw"),
                method=method,
                omnibus_significant=significant,
                note=note,
            )
        )
    pairs = list(combinations(arms, 2))
    return out + _pairwise(ctx, "mannwhitneyu", pairs, mwu_pair, "bonferroni", significant)


def ttest_family(ctx: Cell, arms: list[Arm]) -> list[Comparison]:
    """Student's t of the first arm (multi-modality) against each single-modality variant, uncorrected."""
    pairs = [(arms[0], other) for other in arms[1:]]
    return _pairwise(ctx, "ttest", pairs, ttest_pair, "none")


# ---------------------------------------------------------------- recommended mode


def permutation_family(
    ctx: Cell, arms: list[Arm], perm: dict[str, int], reference_only: bool = False
) -> list[Comparison]:
    """Permutation tests with Holm: every pair, or the first arm against each other (`reference_only`)."""
    if reference_only:
        pairs = [(arms[0], other) for other in arms[1:]]
    else:
        pairs = list(combinations(arms, 2))
    if not pairs and arms:
        return [
            ctx.record(
                "permutation",
                group_a=arms[0].name,
                n_a=arms[0].n,
                note=f"only one arm '{arms[0].name}': nothing to compare",
            )
        ]
    return _pairwise(ctx, "permutation", pairs, partial(permutation_pair, **perm), "holm")


# ---------------------------------------------------------------- shared by both modes


def _pairwise(
    ctx: Cell,
    test: str,
    pairs: list[tuple[Arm, Arm]],
    run: Callable[..., dict[str, Any]],
    correction: str,
    significant: bool | None = None,
) -> list[Comparison]:
    results = [run(a.name, a.values, b.name, b.values) for a, b in pairs]
    raw = [r.get("p_raw") for r in results]
    adjusted = {"bonferroni": bonferroni, "holm": holm, "none": list}[correction](raw)
    return [
        ctx.record(
            test,
            **_merge(_pair_base(ctx, a, b), result),
            p_adjusted=p_adj,
            correction=correction,
            n_comparisons=len(pairs),
            omnibus_significant=significant,
        )
        for (a, b), result, p_adj in zip(pairs, results, adjusted, strict=True)
    ]


def _pair_base(ctx: Cell, a: Arm, b: Arm) -> dict[str, Any]:
    base: dict[str, Any] = {"group_a": a.name, "group_b": b.name, "n_a": a.n, "n_b": b.n}
    if ctx.lr is None:
        base.update(lr_a=a.lr, lr_b=b.lr)
    base["note"] = join_notes(exclusions([a, b]))
    return {**base, **difference_fields(a.values, b.values)}


def difference_fields(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The INTERVAL_KEYS of a pair: both means, mean_a − mean_b and its bootstrap interval over seeds."""
    interval = difference_interval(a, b)
    mean_a = float(np.mean(a)) if a.size else None
    mean_b = float(np.mean(b)) if b.size else None
    return {
        "mean_a": mean_a, "mean_b": mean_b,
        "mean_diff": None if mean_a is None or mean_b is None else mean_a - mean_b,
        "diff_ci_low": interval.low, "diff_ci_high": interval.high, "diff_ci_level": interval.level,
        "diff_ci_method": interval.method, "diff_ci_resamples": interval.resamples, "diff_ci_seed": interval.seed,
        "diff_ci_note": interval.note,
    }


def _merge(base: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**base, **result, "note": join_notes([result.get("note"), base.get("note")])}


def exclusions(arms: Sequence[Arm]) -> list[str]:
    """Notes on the runs each arm left out (failed, diverged, NaN metric) or counted at their best checkpoint."""
    notes = []
    for arm in arms:
        if arm.note:
            notes.append(arm.note)
        parts = [
            f"{n} {what}"
            for n, what in (
                (arm.n_failed, "failed"),
                (arm.n_diverged, "diverged"),
                (arm.n_nan, "NaN-metric"),
            )
            if n
        ]
        if parts:
            notes.append(f"arm '{arm.name}': {', '.join(parts)} run(s) excluded")
        if arm.n_diverged_counted:
            notes.append(f"arm '{arm.name}': {arm.n_diverged_counted} diverged run(s) counted at their best checkpoint")
    return notes
