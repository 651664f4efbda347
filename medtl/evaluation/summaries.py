"""Per-arm summaries of a study's selected runs: summary.csv, the best run of each arm, the results tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtl.evaluation.selection import select_runs, validation_rank_key
from medtl.evaluation.stats import primary_metric
from medtl.evaluation.uncertainty import (
    LEVEL,
    METHOD,
    RESAMPLES,
    SEED,
    Interval,
    mean_intervals,
    unavailable,
)
from medtl.training import schema as S
from medtl.training.spec import TASKS, TEST_METRICS, Task

KEYS = ("task", "arch", "arm", "lr", "data_fraction")
EXTRA_SUMMARY = ("epochs_to_convergence", "emissions_kg", "energy_kwh", "duration_s")
INTERVAL_COLUMNS = ("ci_low", "ci_high", "ci_level", "ci_method", "ci_resamples", "ci_seed", "ci_note")
"""summary.csv's interval of each mean (`uncertainty`): bounds, level, method, resamples, seed, and why none."""
SUMMARY_COLUMNS = (
    *KEYS, "metric", "n", "mean", "std", "median", "min", "max",
    "n_runs", "n_failed", "n_diverged", "best_run_id", "best_val", *INTERVAL_COLUMNS,
)
CHEAP_ARM_SIZE = 8
CHOSEN_COLUMNS = ("task", "arch", "arm", "data_fraction", "lr")


def known_task_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose task medtl knows, with missing fractions read as full data (1.0)."""
    known = {t.value for t in Task}
    out = runs[runs["task"].isin(known)].copy()
    out["data_fraction"] = out["data_fraction"].fillna(1.0)
    return out


def usable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Known-task runs that FINISHED (the ones statistics use; a diverged run counts with its best
    checkpoint — the report drops diverged rows first when asked to exclude them)."""
    out = known_task_runs(runs)
    return out[out["status"] == "FINISHED"]


def at_chosen(frame: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Rows of `frame` at their arm's selected learning rate (chosen: CHOSEN_COLUMNS)."""
    keys = list(CHOSEN_COLUMNS)
    if chosen.empty:
        return frame.iloc[0:0]
    return frame.merge(chosen[keys].astype({"lr": float, "data_fraction": float}), on=keys)


def is_cheap(runs: pd.DataFrame) -> bool:
    """Whether a second analysis mode is cheap: no arm holds more than CHEAP_ARM_SIZE runs."""
    usable = known_task_runs(runs)
    if usable.empty:
        return True
    return int(usable.groupby(list(KEYS), dropna=False).size().max()) <= CHEAP_ARM_SIZE


def task_metrics(task: str) -> list[str]:
    """A task's summary metrics: its test metrics, then epochs, emissions, energy, duration."""
    return [f"test_{m}" for m in TEST_METRICS[TASKS[Task(task)].type]] + list(EXTRA_SUMMARY)


def summarize(runs: pd.DataFrame, exclude_diverged: bool = False) -> pd.DataFrame:
    """Per (task, arch, arm, lr, fraction) and metric: n, mean, sample std, median, min, max and the
    mean's 95 % interval over seeds (INTERVAL_COLUMNS; see `uncertainty`).

    Statistics use FINISHED runs with a finite value (diverged ones at their best checkpoint,
    unless `exclude_diverged`); `n_runs`, `n_failed` and `n_diverged` count every run. Runs not
    yet through `select_runs` are selected first (one per grid point, protocols split).
    `best_run_id` is the usable run with the best validation primary metric (direction-aware) and
    `best_val` that value.

    Args:
        runs: `collect(...).runs` or `Selection.runs`.
        exclude_diverged: leave diverged runs out of the statistics.

    Returns:
        The summary.csv table (SUMMARY_COLUMNS), sorted by its keys.
    """
    if "protocol" not in runs.columns:
        runs = select_runs(runs, allow_mixed_pretrained=True).runs
    data = known_task_runs(runs)
    if data.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    data["_usable"] = (data["status"] == "FINISHED") & ~(data["diverged"] & exclude_diverged)
    data["_div"] = (data["status"] == "FINISHED") & data["diverged"]
    cells, values = [], []
    for task, rows in data.groupby("task"):
        metrics = pd.DataFrame({"metric": task_metrics(str(task))})
        cells.append(rows[list(KEYS)].drop_duplicates().merge(metrics, how="cross"))
        long = rows[rows["_usable"]].melt(id_vars=list(KEYS), value_vars=metrics["metric"].tolist(), var_name="metric")
        values.append(long[np.isfinite(long["value"].astype(float))])
    long = pd.concat(values, ignore_index=True)
    long["value"] = long["value"].astype(float)
    stats = long.groupby([*KEYS, "metric"], dropna=False)["value"].agg(["count", "mean", "std", "median", "min", "max"])
    table = pd.concat(cells, ignore_index=True).merge(stats.reset_index(), on=[*KEYS, "metric"], how="left")
    table = table.rename(columns={"count": "n"})
    table["n"] = table["n"].fillna(0).astype(int)
    counts = data.groupby(list(KEYS), dropna=False).agg(
        n_runs=("run_id", "size"), n_failed=("failed", "sum"), n_diverged=("_div", "sum")
    )
    table = table.merge(counts.reset_index(), on=list(KEYS), how="left")
    table = table.merge(_best_runs(data), on=list(KEYS), how="left")
    table = table.merge(_intervals(long), on=[*KEYS, "metric"], how="left")
    table["ci_note"] = table["ci_note"].where(table["n"] > 0, unavailable([0]))
    for column, value in (("ci_level", LEVEL), ("ci_method", METHOD), ("ci_resamples", RESAMPLES), ("ci_seed", SEED)):
        table[column] = value
    return table.sort_values([*KEYS, "metric"], kind="stable").reset_index(drop=True).loc[:, list(SUMMARY_COLUMNS)]


def _intervals(long: pd.DataFrame) -> pd.DataFrame:
    """Per (KEYS, metric) of the long values: ci_low, ci_high, ci_note (one bootstrap per sample size)."""
    keys = [*KEYS, "metric"]
    if long.empty:
        return pd.DataFrame(columns=[*keys, "ci_low", "ci_high", "ci_note"])
    codes = long.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    samples = np.split(long["value"].to_numpy(float)[order], np.cumsum(np.bincount(codes))[:-1])
    found = mean_intervals(samples)
    first = long.loc[~long.duplicated(keys), keys].reset_index(drop=True)
    return first.assign(ci_low=[i.low for i in found], ci_high=[i.high for i in found],
                        ci_note=[i.note for i in found]).astype({"ci_low": float, "ci_high": float})


def _best_runs(data: pd.DataFrame) -> pd.DataFrame:
    """Per KEYS cell, the usable run first by `validation_rank_key` (ties: the earlier row) and its value."""
    usable = data[data["_usable"]]
    metric_of = {t: primary_metric(t) for t in usable["task"].unique()}
    val = np.full(len(usable), np.nan)
    for task, (metric, _) in metric_of.items():
        rows = (usable["task"] == task).to_numpy()
        val[rows] = usable.loc[rows, f"best_val_{metric}"].to_numpy(dtype=float)
    loss = usable["best_val_loss"].to_numpy(dtype=float) if "best_val_loss" in usable else np.full(len(val), np.inf)
    loss = np.where(np.isnan(loss), np.inf, loss)
    ok = np.isfinite(val)
    ranked = usable.loc[ok, [*KEYS, "run_id"]].assign(best_val=val[ok])
    ranked[["_k1", "_k2", "_k3"]] = [
        validation_rank_key(v, lo, t, metric_of[task][1])
        for v, lo, t, task in zip(val[ok], loss[ok], usable.loc[ok, "start_time"], ranked["task"], strict=True)
    ] if ok.any() else np.empty((0, 3))
    best = ranked.sort_values(["_k1", "_k2", "_k3"], kind="stable").groupby(list(KEYS), dropna=False, sort=False).head(1)
    return best.rename(columns={"run_id": "best_run_id"}).loc[:, [*KEYS, "best_run_id", "best_val"]]


# ---------------------------------------------------------------- the results tables


@dataclass(frozen=True)
class MetricResult:
    """One metric of one arm at its selected learning rate: runs counted, mean, sample std, the mean's interval."""

    metric: str
    n: int
    mean: float
    std: float
    ci: Interval


@dataclass(frozen=True)
class ArmResult:
    """One row of a results table: an arm of a (task, arch) cell at its selected learning rate."""

    arch: str
    arm: str
    lr: float
    n_counted: int
    n_runs: int
    n_diverged: int
    metrics: tuple[MetricResult, ...]
    best_run_id: str | None


@dataclass(frozen=True)
class ResultsTable:
    """One task's results at one training-data fraction: rows arch × arm, in display order."""

    task: str
    data_fraction: float
    rows: tuple[ArmResult, ...]


def interval_of(row: pd.Series) -> Interval:
    """The interval a summary row carries (INTERVAL_COLUMNS)."""
    low, high, note = row["ci_low"], row["ci_high"], row["ci_note"]
    return Interval(None if pd.isna(low) else float(low), None if pd.isna(high) else float(high),
                    float(row["ci_level"]), int(row["ci_resamples"]), int(row["ci_seed"]), str(row["ci_method"]),
                    None if pd.isna(note) else str(note))


def results_tables(summary: pd.DataFrame, at_lr: pd.DataFrame, fractions: tuple[float, ...]) -> tuple[ResultsTable, ...]:
    """Per fraction (in `fractions` order) and task (sorted), the arms at their selected lr.

    Args:
        summary: `summarize(...)`.
        at_lr: the summary's rows at each arm's selected learning rate (`at_chosen(summary, chosen)`).
        fractions: the analysed fractions, largest first.
    """
    out = []
    for fraction in fractions:
        for task in sorted(summary.loc[summary["data_fraction"] == fraction, "task"].unique()):
            rows = at_lr[(at_lr["task"] == task) & (at_lr["data_fraction"] == fraction)]
            out.append(ResultsTable(str(task), float(fraction), _arm_results(rows, str(task))))
    return tuple(out)


def _arm_results(rows: pd.DataFrame, task: str) -> tuple[ArmResult, ...]:
    found = []
    for (arch, arm), cell in rows.groupby(["arch", "arm"], sort=False):
        by = cell.set_index("metric")
        first = cell.iloc[0]
        metrics = tuple(
            MetricResult(m, int(by.at[m, "n"]), float(by.at[m, "mean"]), float(by.at[m, "std"]), interval_of(by.loc[m]))
            for m in task_metrics(task)[:-2]
        )
        best = first["best_run_id"]
        found.append(ArmResult(
            str(arch), str(arm), float(first["lr"]), int(by["n"].get("epochs_to_convergence", 0)),
            int(first["n_runs"]), int(first["n_diverged"]), metrics, None if pd.isna(best) else str(best),
        ))
    order = {a: i for i, a in enumerate(S.arm_order([r.arm for r in found]))}
    return tuple(sorted(found, key=lambda r: (r.arch, order[r.arm])))
