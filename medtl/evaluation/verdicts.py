"""The report's answer: one verdict line per (task, arch) cell, best arm and whether it is significant."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medtl.evaluation.comparisons import Comparisons
from medtl.evaluation.formatting import interval, num
from medtl.evaluation.stats import primary_metric
from medtl.evaluation.summaries import interval_of
from medtl.evaluation.uncertainty import Interval
from medtl.training import schema as S


@dataclass(frozen=True)
class Verdict:
    """The answer for one (task, arch, fraction) cell: best arm on the primary metric and on epochs.

    `means` and `epochs` map each arm to its mean at its selected learning rate, `intervals` and
    `epoch_intervals` to that mean's 95 % interval over seeds; `p_metric` and `p_epochs` map each
    other arm to the adjusted p of its pairwise test against the best arm.
    """

    task: str
    arch: str
    data_fraction: float
    metric: str
    higher_is_better: bool
    best: str | None
    means: dict[str, float]
    p_metric: dict[str, float | None]
    fastest: str | None
    epochs: dict[str, float]
    p_epochs: dict[str, float | None]
    alpha: float
    test: str
    intervals: dict[str, Interval] = field(default_factory=dict)
    epoch_intervals: dict[str, Interval] = field(default_factory=dict)

    @property
    def significant(self) -> bool:
        """Whether the best arm beats every other arm after correction."""
        ps = list(self.p_metric.values())
        return bool(ps) and all(p is not None and p < self.alpha for p in ps)

    @property
    def text(self) -> str:
        """One line: which arm is best on the metric and on epochs, and whether it is significant."""
        where = f"{self.task} / {self.arch}" + ("" if self.data_fraction == 1.0 else f" ({self.data_fraction:.0%} data)")
        if self.best is None:
            return f"{where}: no arm has a usable {self.metric} yet."
        tests = "Mann-Whitney U, Bonferroni" if self.test == "mannwhitneyu" else "permutation, Holm"
        return (f"{where}: {_lead(self.means, self.best)} on {self.metric} "
                f"({_means_text(self.means, self.best, self.intervals)})"
                f"{_sig_text(self.p_metric, self.alpha)}; fewest epochs to convergence: "
                f"{_lead(self.epochs, self.fastest, 'fastest')} ({_means_text(self.epochs, self.fastest, self.epoch_intervals)})"
                f"{_sig_text(self.p_epochs, self.alpha)} [{tests}].")


def _lead(means: dict[str, float], best: str | None, word: str = "best") -> str:
    """`domain is best`, or `tied: random, domain` when several arms share the best mean."""
    if best is None:
        return "no arm"
    tied = [a for a, m in means.items() if m == means[best]]
    return f"tied: {', '.join(tied)}" if len(tied) > 1 else (f"{best} is best" if word == "best" else best)


def _means_text(means: dict[str, float], first: str | None, intervals: dict[str, Interval]) -> str:
    order = [first, *[a for a in means if a != first]]
    shown = []
    for a in order:
        if a in means:
            ci = intervals.get(a)
            shown.append(f"{a} {num(means[a], 3)}" + ("" if ci is None else f" {interval(ci.low, ci.high, ci.note, 3)}"))
    return ", ".join(shown)


def _sig_text(ps: dict[str, float | None], alpha: float) -> str:
    if not ps:
        return ", no other arm to compare"
    untested = [a for a, p in ps.items() if p is None]
    ps = {a: p for a, p in ps.items() if p is not None}
    if not ps:
        return f", untested vs {', '.join(untested)} (test undefined)"
    sig = {a: p for a, p in ps.items() if p < alpha}
    rest = {a: p for a, p in ps.items() if a not in sig}
    listed = lambda arms: ", ".join(f"{a} {num(p, 2)}" for a, p in arms.items())  # noqa: E731
    if untested:
        rest = {**rest, **{a: None for a in untested}}
    if not rest:
        return f", significant vs every other arm (p adj. {listed(sig)})"
    if not sig:
        return f", not significant (p adj. {listed(rest)})"
    return f", significant vs {', '.join(sig)} (p adj. {listed(sig)}), not vs {', '.join(rest)} (p adj. {listed(rest)})"


def verdicts(at_lr: pd.DataFrame, chosen: pd.DataFrame, comparisons: Comparisons) -> list[Verdict]:
    """One Verdict per (task, arch, fraction) of the comparisons, main arms at their selected lr.

    Arm means come from the summary (what the tables show); the p values are the comparisons'
    pairwise tests (Mann–Whitney U with Bonferroni in paper mode, permutation with Holm in
    recommended mode) of the best arm against each other main arm.

    Args:
        at_lr: the summary's rows at each arm's selected learning rate.
        chosen: the selected learning rates (task, arch, arm, data_fraction, lr).
        comparisons: the main mode's comparisons.
    """
    rows = at_lr
    records = comparisons.records()
    pair_test = "mannwhitneyu" if comparisons.mode == "paper" else "permutation"
    out = []
    for fraction, cs in comparisons.sets:
        for task, arch in sorted({(r.task, r.arch) for r in cs.records}):
            metric, higher = primary_metric(task)
            cell = rows[(rows["task"] == task) & (rows["arch"] == arch) & (rows["data_fraction"] == fraction)
                        & rows["arm"].isin(S.MAIN_ARMS)]
            means, intervals = _arm_means(cell, f"test_{metric}")
            epochs, epoch_intervals = _arm_means(cell, "epochs_to_convergence")
            best = _pick(means, higher)
            fastest = _pick(epochs, False)
            recs = [r for r in records if r["task"] == task and r["arch"] == arch and r["data_fraction"] == fraction
                    and r["test"] == pair_test]
            lrs = chosen[(chosen["task"] == task) & (chosen["arch"] == arch) & (chosen["data_fraction"] == fraction)]
            lr_of = dict(zip(lrs["arm"], lrs["lr"].astype(float), strict=True)) if comparisons.per_lr else {}
            out.append(Verdict(task, arch, float(fraction), metric, higher, best, means,
                               _pvalues(recs, f"test_{metric}", best, means, lr_of.get(best)),
                               fastest, epochs, _pvalues(recs, "epochs_to_convergence", fastest, epochs, lr_of.get(fastest)),
                               cs.alpha, pair_test, intervals, epoch_intervals))
    return out


def _arm_means(cell: pd.DataFrame, metric: str) -> tuple[dict[str, float], dict[str, Interval]]:
    """Each arm's mean (arms in display order) and its interval, from the summary's rows."""
    values = cell[(cell["metric"] == metric) & (cell["n"] > 0)]
    rows = {str(row["arm"]): row for _, row in values.iterrows() if math.isfinite(float(row["mean"]))}
    order = S.arm_order(list(rows))
    return {a: float(rows[a]["mean"]) for a in order}, {a: interval_of(rows[a]) for a in order}


def _pick(means: dict[str, float], higher: bool) -> str | None:
    if not means:
        return None
    return (max if higher else min)(means, key=lambda a: means[a])


def _pvalues(
    records: list[dict[str, Any]], metric: str, best: str | None, means: dict[str, float], lr: float | None
) -> dict[str, float | None]:
    """Adjusted p of best vs each other arm; `lr` (per-lr analyses) picks the best arm's selected lr."""
    out: dict[str, float | None] = {}
    for arm in means:
        if arm == best:
            continue
        hit = [r for r in records if r["metric"] == metric and {r["group_a"], r["group_b"]} == {best, arm}
               and (lr is None or r["lr_a"] == lr)]
        out[arm] = hit[0]["p_adjusted"] if hit else None
    return out
