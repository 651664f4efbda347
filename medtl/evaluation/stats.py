"""Study statistics: learning-rate selection and arm comparisons; DataFrame in, frozen records out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medtl.errors import UserError
from medtl.evaluation.stats_exact import DEFAULT_RESAMPLES, MAX_EXACT_SPLITS
from medtl.evaluation.stats_families import (
    Arm,
    Cell,
    paper_family,
    permutation_family,
    ttest_family,
)
from medtl.evaluation.stats_records import (  # noqa: F401 - re-exported
    LR_COLUMNS,
    RECORD_KEYS,
    ArmCount,
    Comparison,
    ComparisonSet,
    LrChoice,
)
from medtl.training import schema as S
from medtl.training.spec import PRIMARY_METRIC, TASKS, Task, parse_enum

MODES = ("paper", "recommended")
ALPHA = 0.05
FINISHED = "FINISHED"
EPOCHS = "epochs_to_convergence"
MULTI_MODALITY = "domain"
VARIANT_PREFIX = "domain-"
REQUIRED_COLUMNS = ("task", "arch", "arm", "lr", "seed", "status", "diverged")


class StatsError(UserError, ValueError):
    """The runs table cannot be analysed as asked; the message names what is wrong and the options."""


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
    """Per (task, arch, arm), the learning rate with the best mean validation primary metric.

    Only FINISHED runs with a finite `best_val_<primary>` count; diverged runs count with their
    best checkpoint's value unless `exclude_diverged`. Direction follows
    the task (MAE: lower is better); equal means go to the smaller learning rate. The test metric
    is never used.

    Args:
        df: one row per run (see `compare`).
        by: must be "val".

    Returns:
        one row per (task, arch, arm): columns task, arch, arm, lr, metric, mean_val, n_runs (lr None
        where no run qualifies); lr_selection.csv publishes it with `arm` named `group`.

    Raises:
        StatsError: if `by` is not "val" or a needed column is missing.
    """
    if by != "val":
        raise StatsError(
            f"learning rates are selected on validation only: by must be 'val', got {by!r}"
        )
    choices = lr_choices(df, exclude_diverged=exclude_diverged)
    return pd.DataFrame([dataclasses.asdict(c) for c in choices], columns=list(LR_COLUMNS))


def lr_choices(df: pd.DataFrame, *, exclude_diverged: bool = False) -> tuple[LrChoice, ...]:
    """`select_learning_rates` as records, one per (task, arch, arm), sorted (what `compare` uses).

    Raises:
        StatsError: a needed column is missing.
    """
    return tuple(_select(_normalise(df, exclude_diverged)))


def check_mode(mode: str) -> None:
    """Raises StatsError naming the valid modes when `mode` is not one of them."""
    if mode not in MODES:
        raise StatsError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")


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
    choices: tuple[LrChoice, ...] | None = None,
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
        df: one row per run with columns task, arch, arm (`group` in tables made before the
            glossary is read as the arm), lr, seed, status, diverged, best_val_<primary>,
            test_<primary> and epochs_to_convergence.
        mode: "paper" or "recommended".
        per_lr: compare the arms at every learning rate instead of each arm's selected one.
        alpha: significance level of the omnibus gate.
        seed: seed of Monte Carlo permutation tests.
        max_exact: largest number of splits a permutation test enumerates.
        n_resamples: Monte Carlo resamples beyond that.
        exclude_diverged: leave diverged runs out (selection and tests).
        choices: `lr_choices(df, exclude_diverged=...)` when already made (not made again).

    Returns:
        ComparisonSet (frozen) with records, learning-rate selection and run counts.

    Raises:
        StatsError: unknown mode (the message names the valid modes) or a missing column.
    """
    check_mode(mode)
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must lie in (0, 1), got {alpha!r}")
    data = _normalise(df, exclude_diverged)
    selection = list(choices) if choices is not None else _select(data)
    chosen = {(c.task, c.arch, c.arm): c.lr for c in selection}
    perm = {"seed": seed, "max_exact": max_exact, "n_resamples": n_resamples}
    records: list[Comparison] = []
    for (task, arch), cell in data.groupby(["task", "arch"], sort=True):
        metric, _ = primary_metric(task)
        columns = (f"test_{metric}", EPOCHS)
        _require(cell, columns)
        runs = _CellRuns.of(cell, columns)
        arms = _ordered(cell["arm"].unique())
        main = [a for a in arms if not a.startswith(VARIANT_PREFIX)]
        variants = [a for a in arms if a.startswith(VARIANT_PREFIX)]
        lrs = sorted(x for x in cell["lr"].unique() if math.isfinite(x))
        for lr in lrs if per_lr else [None]:
            for column in columns:
                ctx = Cell(str(task), str(arch), column, None if lr is None else float(lr))
                compared = [_arm_at(runs, a, column, lr, chosen[(task, arch, a)]) for a in main]
                if mode == "paper":
                    records += paper_family(ctx, compared, alpha)
                else:
                    records += permutation_family(ctx, compared, perm)
                if mode == "recommended" and variants:
                    fam = [
                        _arm_at(runs, a, column, lr, chosen.get((task, arch, a)))
                        for a in [MULTI_MODALITY, *variants]
                    ]
                    records += permutation_family(ctx, fam, perm, reference_only=True)
        if mode == "paper" and variants:
            # Student's t per learning rate where a single-modality arm was trained (the paper's Figure 5).
            variant_lrs = sorted(x for x in cell.loc[cell["arm"].isin(variants), "lr"].unique() if math.isfinite(x))
            for lr in variant_lrs:
                for column in columns:
                    ctx = Cell(str(task), str(arch), column, float(lr))
                    fam = [_arm_at(runs, a, column, lr, None) for a in [MULTI_MODALITY, *variants]]
                    records += ttest_family(ctx, fam)
    return ComparisonSet(mode, per_lr, alpha, tuple(records), tuple(selection), _counts(data), exclude_diverged)


# ---------------------------------------------------------------- data preparation


def _normalise(df: pd.DataFrame, exclude_diverged: bool = False) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise StatsError(f"expected a pandas DataFrame of runs, got {type(df).__name__}")
    if "arm" not in df.columns and "group" in df.columns:  # a runs table made before the glossary
        df = df.rename(columns={"group": "arm"})
    _require(df, REQUIRED_COLUMNS)
    out = df.copy()
    for name in ("task", "arch", "arm", "status"):
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
    """Per (task, arch, arm), sorted: the lr with the best mean `best_val_<primary>` (ties: the smaller lr)."""
    keys = ["task", "arch", "arm"]
    if data.empty:
        return []
    column_of = {t: f"best_val_{primary_metric(t)[0]}" for t in data["task"].unique()}
    _require(data, sorted(set(column_of.values())))
    val = pd.Series(np.nan, index=data.index)
    for task, column in column_of.items():
        rows = data["task"] == task
        val[rows] = pd.to_numeric(data.loc[rows, column], errors="coerce")
    ok = data["_usable"] & np.isfinite(val) & np.isfinite(data["lr"])
    means = val[ok].groupby([data.loc[ok, k] for k in [*keys, "lr"]]).agg(["mean", "size"]).reset_index()
    higher = means["task"].map(lambda t: primary_metric(t)[1]).to_numpy(bool)
    means["key"] = np.where(higher, -means["mean"], means["mean"])
    best = means.sort_values([*keys, "key", "lr"], kind="stable").groupby(keys, sort=False).head(1)
    found = {(t, a, g): (lr, m, n) for t, a, g, lr, m, n in best[[*keys, "lr", "mean", "size"]].itertuples(index=False)}
    choices = []
    for task, arch, arm in data.groupby(keys, sort=True).size().index:
        column = column_of[task]
        if (task, arch, arm) not in found:
            choices.append(LrChoice(task, arch, arm, None, column, None, 0))
            continue
        lr, mean, n = found[(task, arch, arm)]
        choices.append(LrChoice(task, arch, arm, float(lr), column, float(mean), int(n)))
    return choices


@dataclasses.dataclass(frozen=True)
class _CellRuns:
    """One (task, arch) cell's runs as arrays, made once: every arm of the cell is a mask on them."""

    arm: np.ndarray
    lr: np.ndarray
    finished: np.ndarray
    usable: np.ndarray
    diverged: np.ndarray
    values: dict[str, np.ndarray]

    @classmethod
    def of(cls, cell: pd.DataFrame, columns: Sequence[str]) -> _CellRuns:
        return cls(
            cell["arm"].to_numpy(), cell["lr"].to_numpy(float), cell["status"].to_numpy() == FINISHED,
            cell["_usable"].to_numpy(bool), cell["diverged"].to_numpy(bool),
            {c: pd.to_numeric(cell[c], errors="coerce").to_numpy(float) for c in columns},
        )


def _arm_at(runs: _CellRuns, arm: str, column: str, lr: float | None, chosen: float | None) -> Arm:
    in_arm = runs.arm == arm
    at = lr if lr is not None else chosen
    if lr is None and chosen is None:
        found = _arm(runs, in_arm, arm, None, column)
        note = (
            f"arm '{arm}': no learning rate selectable (no usable run with a validation metric)"
        )
        return dataclasses.replace(found, values=np.empty(0), n_nan=0, note=note)
    return _arm(runs, in_arm & (runs.lr == at), arm, float(at), column)


def _arm(runs: _CellRuns, rows: np.ndarray, name: str, lr: float | None, column: str) -> Arm:
    """The arm made of the cell's runs where `rows` is true."""
    finished = runs.finished[rows]
    usable = runs.usable[rows]
    diverged = finished & runs.diverged[rows]
    every = runs.values[column][rows]
    finite = np.isfinite(every)
    counted = usable & finite
    return Arm(
        name,
        lr,
        every[counted],
        int((~finished).sum()),
        int((diverged & ~counted).sum()),
        int((usable & ~finite & ~diverged).sum()),
        n_diverged_counted=int((diverged & counted).sum()),
    )


def _counts(data: pd.DataFrame) -> tuple[ArmCount, ...]:
    finished = data["status"] == FINISHED
    flags = pd.DataFrame({"finished": finished, "diverged": finished & data["diverged"]})
    keys = [data[k] for k in ("task", "arch", "arm", "lr")]
    sums = flags.groupby(keys, sort=True).agg(n_runs=("finished", "size"), n_finished=("finished", "sum"),
                                              n_diverged=("diverged", "sum"))
    return tuple(
        ArmCount(task, arch, arm, float(lr), int(n), int(n_finished), int(n - n_finished), int(n_diverged))
        for (task, arch, arm, lr), n, n_finished, n_diverged in sums.itertuples(name=None)
    )


def _ordered(arms: Sequence[str]) -> list[str]:
    return S.arm_order(arms, last_prefix=VARIANT_PREFIX)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None or pd.isna(value):
        return False
    return bool(value)
