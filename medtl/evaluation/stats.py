"""Study statistics: learning-rate selection and arm comparisons; DataFrame in, frozen records out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medtl.errors import UserError
from medtl.evaluation.stats_exact import (
    DEFAULT_RESAMPLES,
    MAX_EXACT_SPLITS,
    bonferroni,
    has_ties,
    holm,
    join_notes,
    kruskal_min_p,
    mwu_pair,
    permutation_pair,
    scipy_fields,
    too_few,
    ttest_pair,
    undefined,
)
from medtl.training.schema import arm_order
from medtl.training.spec import PRIMARY_METRIC, TASKS, Task, parse_enum

MODES = ("paper", "recommended")
ALPHA = 0.05
FINISHED = "FINISHED"
EPOCHS = "epochs_to_convergence"
MULTI_MODALITY = "domain"
VARIANT_PREFIX = "domain-"
REQUIRED_COLUMNS = ("task", "arch", "group", "lr", "seed", "status", "diverged")


class StatsError(UserError, ValueError):
    """The runs table cannot be analysed as asked; the message names what is wrong and the options."""


@dataclass(frozen=True)
class Comparison:
    """One test result; `to_record()` gives the comparisons.json entry.

    Omnibus tests (levene, kruskal) have group_b and n_b None and n_a the total number of runs.
    `statistic` is U of group_a (mannwhitneyu), H (kruskal), W (levene), t (ttest) or
    mean_a - mean_b (permutation). Effect sizes and `hl_shift` are positive when group_a's values
    are larger. `min_attainable_p` is the smallest raw p the test can give at these sizes.
    Undefined tests carry p values None and say why in `note`.
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

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-safe dict with exactly RECORD_KEYS (None for NaN or infinite numbers)."""
        return {key: _json_safe(getattr(self, key)) for key in RECORD_KEYS}


@dataclass(frozen=True)
class LrChoice:
    """The learning rate an arm is compared at: the best mean validation primary metric."""

    task: str
    arch: str
    group: str
    lr: float | None
    metric: str
    mean_val: float | None
    n_runs: int


@dataclass(frozen=True)
class ArmCount:
    """How many runs of one arm at one learning rate finished, failed or diverged."""

    task: str
    arch: str
    group: str
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
        """The records as a DataFrame with RECORD_KEYS as columns."""
        return pd.DataFrame(self.to_records(), columns=list(RECORD_KEYS))

    def selection_frame(self) -> pd.DataFrame:
        """The selected learning rates, one row per (task, arch, group)."""
        return pd.DataFrame(
            [dataclasses.asdict(c) for c in self.selection], columns=list(_LR_COLUMNS)
        )

    def counts_frame(self) -> pd.DataFrame:
        """Run counts per (task, arch, group, lr)."""
        cols = [f.name for f in dataclasses.fields(ArmCount)]
        return pd.DataFrame([dataclasses.asdict(c) for c in self.counts], columns=cols)


RECORD_KEYS = tuple(f.name for f in dataclasses.fields(Comparison))
_LR_COLUMNS = tuple(f.name for f in dataclasses.fields(LrChoice))


@dataclass(frozen=True)
class _Arm:
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
class _Cell:
    task: str
    arch: str
    metric: str
    lr: float | None = None

    def record(self, test: str, **values: Any) -> Comparison:
        lrs = {"lr_a": self.lr, "lr_b": self.lr} if self.lr is not None else {}
        return Comparison(self.task, self.arch, self.metric, test, **{**lrs, **values})


def primary_metric(task: Task | str) -> tuple[str, bool]:
    """Name of a task's primary metric and whether higher is better.

    Args:
        task: a task name such as `covid19`.

    Returns:
        (metric, higher_is_better), e.g. ("mae", False) for regression tasks.

    Raises:
        SpecError: if the task is unknown (the message lists the valid tasks).
    """
    return PRIMARY_METRIC[TASKS[parse_enum(Task, task, "task")].type]


def select_learning_rates(df: pd.DataFrame, by: str = "val", *, exclude_diverged: bool = False) -> pd.DataFrame:
    """Per (task, arch, group), the learning rate with the best mean validation primary metric.

    Only FINISHED runs with a finite `best_val_<primary>` count; diverged runs count with their
    best checkpoint's value unless `exclude_diverged`. Direction follows
    the task (MAE: lower is better); equal means go to the smaller learning rate. The test metric
    is never used.

    Args:
        df: one row per run (see `compare`).
        by: must be "val".

    Returns:
        DataFrame with columns task, arch, group, lr, metric, mean_val, n_runs (lr None where no
        run qualifies).

    Raises:
        StatsError: if `by` is not "val" or a needed column is missing.
    """
    if by != "val":
        raise StatsError(
            f"learning rates are selected on validation only: by must be 'val', got {by!r}"
        )
    choices = _select(_normalise(df, exclude_diverged))
    return pd.DataFrame([dataclasses.asdict(c) for c in choices], columns=list(_LR_COLUMNS))


def compare(
    df: pd.DataFrame,
    mode: str = "paper",
    per_lr: bool = False,
    *,
    alpha: float = ALPHA,
    seed: int = 0,
    max_exact: int = MAX_EXACT_SPLITS,
    n_resamples: int = DEFAULT_RESAMPLES,
    exclude_diverged: bool = False,
) -> ComparisonSet:
    """Compare the arms of every (task, arch) cell on the test primary metric and on epochs.

    `paper` mode: Levene (center=median) and Kruskal–Wallis across the main arms, then every pair
    with its own default `scipy.stats.mannwhitneyu` call, Bonferroni (p x pairs, capped at 1);
    pairs are always reported and `omnibus_significant` says whether Kruskal–Wallis was below
    alpha. Single- vs multi-modality (`domain` vs `domain-<X>`): Student's t-test per learning rate.
    `recommended` mode: exact (or seeded Monte Carlo) permutation tests of the mean difference
    with Holm over the main-arm pairs, and separately over `domain` vs its variants, each with
    Cliff's delta and the Hodges–Lehmann shift with its exact interval.

    Every FINISHED run counts, a diverged one with the test metrics of its best checkpoint (the
    loop keeps it), so an arm that diverges is not flattered; `exclude_diverged` leaves them out
    of learning-rate selection and tests alike (the behaviour before), and the notes say which.

    Args:
        df: one row per run with columns task, arch, group, lr, seed, status, diverged,
            best_val_<primary>, test_<primary> and epochs_to_convergence.
        mode: "paper" or "recommended".
        per_lr: compare the arms at every learning rate instead of each arm's selected one.
        alpha: significance level of the omnibus gate.
        seed: seed of Monte Carlo permutation tests.
        max_exact: largest number of splits a permutation test enumerates.
        n_resamples: Monte Carlo resamples beyond that.
        exclude_diverged: leave diverged runs out (selection and tests).

    Returns:
        ComparisonSet (frozen) with records, learning-rate selection and run counts.

    Raises:
        StatsError: unknown mode (the message names the valid modes) or a missing column.
    """
    if mode not in MODES:
        raise StatsError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must lie in (0, 1), got {alpha!r}")
    data = _normalise(df, exclude_diverged)
    selection = _select(data)
    chosen = {(c.task, c.arch, c.group): c.lr for c in selection}
    perm = {"seed": seed, "max_exact": max_exact, "n_resamples": n_resamples}
    records: list[Comparison] = []
    for (task, arch), cell in data.groupby(["task", "arch"], sort=True):
        metric, _ = primary_metric(task)
        columns = (f"test_{metric}", EPOCHS)
        _require(cell, columns)
        groups = _ordered(cell["group"].unique())
        main = [g for g in groups if not g.startswith(VARIANT_PREFIX)]
        variants = [g for g in groups if g.startswith(VARIANT_PREFIX)]
        lrs = sorted(x for x in cell["lr"].unique() if math.isfinite(x))
        for lr in lrs if per_lr else [None]:
            for column in columns:
                ctx = _Cell(str(task), str(arch), column, None if lr is None else float(lr))
                arms = [_arm_at(cell, g, column, lr, chosen[(task, arch, g)]) for g in main]
                if mode == "paper":
                    records += _paper_family(ctx, arms, alpha)
                else:
                    records += _permutation_family(ctx, arms, perm)
                if mode == "recommended" and variants:
                    fam = [
                        _arm_at(cell, g, column, lr, chosen.get((task, arch, g)))
                        for g in [MULTI_MODALITY, *variants]
                    ]
                    records += _permutation_family(ctx, fam, perm, reference_only=True)
        if mode == "paper" and variants:
            # Student's t per learning rate where a single-modality arm was trained (the paper's Figure 5).
            variant_lrs = sorted(x for x in cell.loc[cell["group"].isin(variants), "lr"].unique() if math.isfinite(x))
            for lr in variant_lrs:
                for column in columns:
                    ctx = _Cell(str(task), str(arch), column, float(lr))
                    fam = [_arm_at(cell, g, column, lr, None) for g in [MULTI_MODALITY, *variants]]
                    records += _ttest_family(ctx, fam)
    return ComparisonSet(mode, per_lr, alpha, tuple(records), tuple(selection), _counts(data), exclude_diverged)


# ---------------------------------------------------------------- families


def _paper_family(ctx: _Cell, arms: list[_Arm], alpha: float) -> list[Comparison]:
    ready = [a for a in arms if a.n >= 2]
    notes = [too_few(a.name, a.n) + ": left out" for a in arms if a.n < 2] + _exclusions(arms)
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
        levene = scipy_fields(stats.levene(*values))
    else:
        levene = undefined(reason)
    if reason is None:
        kruskal = scipy_fields(stats.kruskal(*values))
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


def _permutation_family(
    ctx: _Cell, arms: list[_Arm], perm: dict[str, int], reference_only: bool = False
) -> list[Comparison]:
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


def _ttest_family(ctx: _Cell, arms: list[_Arm]) -> list[Comparison]:
    pairs = [(arms[0], other) for other in arms[1:]]
    return _pairwise(ctx, "ttest", pairs, ttest_pair, "none")


def _pairwise(
    ctx: _Cell,
    test: str,
    pairs: list[tuple[_Arm, _Arm]],
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


def _pair_base(ctx: _Cell, a: _Arm, b: _Arm) -> dict[str, Any]:
    base: dict[str, Any] = {"group_a": a.name, "group_b": b.name, "n_a": a.n, "n_b": b.n}
    if ctx.lr is None:
        base.update(lr_a=a.lr, lr_b=b.lr)
    base["note"] = join_notes(_exclusions([a, b]))
    return base


# ---------------------------------------------------------------- data preparation


def _normalise(df: pd.DataFrame, exclude_diverged: bool = False) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise StatsError(f"expected a pandas DataFrame of runs, got {type(df).__name__}")
    _require(df, REQUIRED_COLUMNS)
    out = df.copy()
    for name in ("task", "arch", "group", "status"):
        out[name] = out[name].astype(str)
    out["lr"] = pd.to_numeric(out["lr"], errors="coerce").astype(float)
    out["diverged"] = out["diverged"].map(_as_bool).astype(bool)
    out["_usable"] = (out["status"] == FINISHED) & ~(out["diverged"] & exclude_diverged)
    return out


def _require(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StatsError(
            f"runs table lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}"
        )


def _select(data: pd.DataFrame) -> list[LrChoice]:
    choices = []
    for (task, arch, group), rows in data.groupby(["task", "arch", "group"], sort=True):
        metric, higher = primary_metric(task)
        column = f"best_val_{metric}"
        _require(rows, [column])
        val = pd.to_numeric(rows[column], errors="coerce")
        ok = rows["_usable"] & np.isfinite(val) & np.isfinite(rows["lr"])
        if not ok.any():
            choices.append(LrChoice(task, arch, group, None, column, None, 0))
            continue
        means = val[ok].groupby(rows.loc[ok, "lr"]).agg(["mean", "size"]).reset_index()
        means["key"] = -means["mean"] if higher else means["mean"]
        best = means.sort_values(["key", "lr"], kind="stable").iloc[0]
        choices.append(
            LrChoice(
                task, arch, group, float(best["lr"]), column, float(best["mean"]), int(best["size"])
            )
        )
    return choices


def _arm_at(
    cell: pd.DataFrame, group: str, column: str, lr: float | None, chosen: float | None
) -> _Arm:
    rows = cell[cell["group"] == group]
    at = lr if lr is not None else chosen
    if lr is None and chosen is None:
        arm = _arm(rows, group, None, column)
        note = (
            f"arm '{group}': no learning rate selectable (no usable run with a validation metric)"
        )
        return dataclasses.replace(arm, values=np.empty(0), n_nan=0, note=note)
    return _arm(rows[rows["lr"] == at], group, float(at), column)


def _arm(rows: pd.DataFrame, name: str, lr: float | None, column: str) -> _Arm:
    finished = rows["status"] == FINISHED
    usable = rows["_usable"].to_numpy(bool)
    diverged = (finished & rows["diverged"]).to_numpy(bool)
    every = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    finite = np.isfinite(every)
    counted = usable & finite
    return _Arm(
        name,
        lr,
        every[counted],
        int((~finished).sum()),
        int((diverged & ~counted).sum()),
        int((usable & ~finite & ~diverged).sum()),
        n_diverged_counted=int((diverged & counted).sum()),
    )


def _counts(data: pd.DataFrame) -> tuple[ArmCount, ...]:
    out = []
    for (task, arch, group, lr), rows in data.groupby(["task", "arch", "group", "lr"], sort=True):
        finished = rows["status"] == FINISHED
        out.append(
            ArmCount(
                task,
                arch,
                group,
                float(lr),
                len(rows),
                int(finished.sum()),
                int((~finished).sum()),
                int((finished & rows["diverged"]).sum()),
            )
        )
    return tuple(out)


# ---------------------------------------------------------------- small helpers


def _ordered(groups: Sequence[str]) -> list[str]:
    return arm_order(groups, last_prefix=VARIANT_PREFIX)


def _merge(base: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**base, **result, "note": join_notes([result.get("note"), base.get("note")])}


def _exclusions(arms: Sequence[_Arm]) -> list[str]:
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


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None or pd.isna(value):
        return False
    return bool(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
