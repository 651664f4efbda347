"""Evaluation's computations, apart from their rendering: summaries, best runs, arm comparisons
per fraction, average ranks and the reader-study ratings statistics.

Everything here returns plain frames, dicts or frozen dataclasses; `report`, `plots` and
`ratings` only turn them into tables, figures and documents. Arm comparisons themselves are
`stats.compare` (paper and recommended mode); run selection (one run per grid point, protocols
split, the best-run rule) is `selection`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medtl.errors import UserError
from medtl.evaluation.selection import Selection, select_runs, validation_rank_key
from medtl.evaluation.stats import RECORD_KEYS, ComparisonSet, compare, primary_metric
from medtl.training.schema import MAIN_ARMS, arm_order
from medtl.training.spec import TASKS, TEST_METRICS, Task

# ---------------------------------------------------------------- runs, summaries, best runs

KEYS = ("task", "arch", "group", "lr", "data_fraction")


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
    """Rows of `frame` at their arm's selected learning rate (chosen: task, arch, group, data_fraction, lr)."""
    keys = ["task", "arch", "group", "data_fraction", "lr"]
    if chosen.empty:
        return frame.iloc[0:0]
    return frame.merge(chosen[keys].astype({"lr": float, "data_fraction": float}), on=keys)


EXTRA_SUMMARY = ("epochs_to_convergence", "emissions_kg", "energy_kwh", "duration_s")


SUMMARY_COLUMNS = (
    *KEYS, "metric", "n", "mean", "std", "median", "min", "max",
    "n_runs", "n_failed", "n_diverged", "best_run_id", "best_val",
)


CHEAP_ARM_SIZE = 8


CELL_RECORD_KEYS = ("data_fraction", "fingerprint", "protocol", "n_duplicates_set_aside", "diverged_runs")
"""Keys comparisons.json adds to each stats record: the cell's fraction and protocol, how many
duplicate runs of the cell were set aside, and whether diverged runs were `counted` or `excluded`."""


_STATS_COLUMNS = (*KEYS, "seed", "status", "diverged", "epochs_to_convergence")


def _cell_info(sel: Selection | None) -> dict[tuple[str, str, float], tuple[str | None, str, int]]:
    """(task, arch label, fraction) → (fingerprint, protocol label, duplicates set aside)."""
    if sel is None:
        return {}
    duplicates = sel.set_aside.groupby(["task", "arch", "data_fraction"]).size().to_dict()
    out: dict[tuple[str, str, float], tuple[str | None, str, int]] = {}
    for row in sel.protocols.itertuples(index=False):
        key = (str(row.task), str(row.arch), float(row.data_fraction))
        out.setdefault(key, (str(row.fingerprint), str(row.protocol), int(duplicates.get(key, 0))))
    for key, n in duplicates.items():
        cell = (str(key[0]), str(key[1]), float(key[2]))
        if cell not in out:
            out[cell] = (None, "", int(n))
    return out


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
    """Per (task, arch, arm, lr, fraction) and metric: n, mean, sample std, median, min, max.

    Statistics use FINISHED runs with a finite value (diverged ones at their best checkpoint,
    unless `exclude_diverged`); `n_runs`, `n_failed` and `n_diverged` count every run. Runs not
    yet through `select_runs` are selected first (one per grid point, protocols split). `best_run_id` is the usable run with the best validation
    primary metric (direction-aware) and `best_val` that value.

    Args:
        runs: `collect(...).runs`.

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
    return table.sort_values([*KEYS, "metric"], kind="stable").reset_index(drop=True).loc[:, list(SUMMARY_COLUMNS)]


def _best_runs(data: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, group in data[data["_usable"]].groupby(list(KEYS), dropna=False):
        metric, higher = primary_metric(key[0])
        val = group[f"best_val_{metric}"].to_numpy(dtype=float)
        ok = np.isfinite(val)
        if not ok.any():
            continue
        loss = group["best_val_loss"].to_numpy(dtype=float) if "best_val_loss" in group else np.full(len(val), np.inf)
        loss = np.where(np.isnan(loss), np.inf, loss)
        ranked = [(validation_rank_key(v, lo, t, higher), i) for i, (v, lo, t, good)
                  in enumerate(zip(val, loss, group["start_time"], ok, strict=True)) if good]
        best = min(ranked, key=lambda pair: pair[0])[1]
        rows.append((*key, group["run_id"].iat[best], float(val[best])))
    return pd.DataFrame(rows, columns=[*KEYS, "best_run_id", "best_val"])


def chosen_lrs(analysis: Analysis) -> pd.DataFrame:
    """The selected learning rates (task, arch, group, data_fraction, lr), selectable ones only."""
    sel = analysis.selection()
    return sel.loc[sel["lr"].notna(), ["task", "arch", "group", "data_fraction", "lr"]]

# ---------------------------------------------------------------- arm comparisons

@dataclass(frozen=True)
class Analysis:
    """One mode's comparisons: one ComparisonSet per training-data fraction (largest first)."""

    mode: str
    per_lr: bool
    sets: tuple[tuple[float, ComparisonSet], ...]
    skipped_runs: int = 0
    chosen_runs: Selection | None = None
    exclude_diverged: bool = False

    def records(self) -> list[dict[str, Any]]:
        """comparisons.json: the stats records, each with CELL_RECORD_KEYS added."""
        return [dict(r) for r in self._records]

    @cached_property
    def _records(self) -> tuple[dict[str, Any], ...]:
        cells = _cell_info(self.chosen_runs)
        out = []
        for f, cs in self.sets:
            for r in cs.to_records():
                fingerprint, protocol, duplicates = cells.get((r["task"], r["arch"], f), (None, "", 0))
                out.append({
                    **r,
                    "data_fraction": f,
                    "fingerprint": fingerprint,
                    "protocol": protocol,
                    "n_duplicates_set_aside": duplicates,
                    "diverged_runs": "excluded" if self.exclude_diverged else "counted",
                })
        return tuple(out)

    def frame(self) -> pd.DataFrame:
        """The records as a DataFrame."""
        return pd.DataFrame(self.records(), columns=[*RECORD_KEYS, *CELL_RECORD_KEYS])

    def selection(self) -> pd.DataFrame:
        """The learning rate each arm is compared at, per fraction."""
        frames = [cs.selection_frame().assign(data_fraction=f) for f, cs in self.sets]
        return pd.concat(frames, ignore_index=True)


def analyse(
    runs: pd.DataFrame,
    mode: str = "paper",
    per_lr: bool = False,
    *,
    exclude_diverged: bool = False,
    allow_mixed_pretrained: bool = False,
    selection: Selection | None = None,
) -> Analysis:
    """Compare the arms in one mode, separately for each training-data fraction and protocol.

    The runs first go through `selection.select_runs`: one run per grid point (the latest
    FINISHED), cells with several protocol fingerprints split and labelled, a domain arm from
    several pretrained versions refused.

    Args:
        runs: `collect(...).runs`.
        mode: "paper" or "recommended" (see `stats.compare`).
        per_lr: compare at every learning rate instead of each arm's selected one.
        exclude_diverged: leave diverged runs out (default: counted at their best checkpoint).
        allow_mixed_pretrained: compare a domain arm built from several pretrained versions.
        selection: an existing selection of these runs (skips selecting again).

    Returns:
        Analysis with one ComparisonSet per fraction; runs of unknown tasks are counted, not used.

    Raises:
        StatsError: on an unknown mode.
        MixedPretrainedError: several pretrained versions in one domain arm, not allowed.
    """
    if selection is None:
        selection = select_runs(runs, exclude_diverged=exclude_diverged, allow_mixed_pretrained=allow_mixed_pretrained)
    runs = selection.runs
    usable = known_task_runs(runs)
    needed = [c for c in usable.columns if c in _STATS_COLUMNS or c.startswith(("test_", "best_val_"))]
    usable = usable[needed].astype({c: object for c in ("task", "arch", "group", "status")})
    fractions = sorted(usable["data_fraction"].unique(), reverse=True) or [1.0]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on constant groups; noted per record
        sets = tuple(
            (float(f), compare(usable[usable["data_fraction"] == f], mode, per_lr, exclude_diverged=exclude_diverged))
            for f in fractions
        )
    return Analysis(mode, per_lr, sets, len(runs) - len(usable), selection, exclude_diverged)

# ---------------------------------------------------------------- average ranks

_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


@dataclass(frozen=True)
class Ranks:
    """Average ranks of the arms over the (task, arch) cells (1 = best) and the Nemenyi CD."""

    arms: tuple[str, ...]
    average: tuple[float, ...]
    n_cells: int
    cd: float | None
    note: str | None = None


def average_ranks(means: pd.DataFrame, higher_is_better: pd.Series) -> Ranks:
    """Average ranks of the arms over complete cells, and the Nemenyi critical difference (α=0.05).

    Args:
        means: one row a (task, arch) cell, one column an arm: the arm's mean primary metric.
        higher_is_better: per row, whether larger values rank first.

    Returns:
        Ranks; `cd` None (with a note) when fewer than 2 arms or 2 complete cells.
    """
    complete = means.dropna(axis=0, how="any")
    arms = tuple(str(a) for a in complete.columns)
    if len(arms) < 2 or len(complete) < 2:
        note = f"critical-difference diagram needs 2+ arms over 2+ complete cells; have {len(arms)} arm(s), {len(complete)} cell(s)"
        return Ranks(arms, tuple(math.nan for _ in arms), len(complete), None, note)
    signed = complete.mul(np.where(higher_is_better.loc[complete.index], -1.0, 1.0), axis=0)
    ranks = signed.rank(axis=1, method="average").mean(axis=0)
    k, n = len(arms), len(complete)
    q = _Q05.get(k)
    if q is None:
        from scipy.stats import studentized_range

        q = float(studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2))
    cd = q * math.sqrt(k * (k + 1) / (6.0 * n))
    return Ranks(arms, tuple(float(ranks[a]) for a in arms), n, cd)


def study_ranks(runs: pd.DataFrame, chosen: pd.DataFrame) -> Ranks:
    """Average ranks of the main arms on the mean test primary metric over full-data cells."""
    ok = usable_runs(runs)
    at = at_chosen(ok[ok["data_fraction"] == 1.0], chosen)
    if at.empty:
        return average_ranks(pd.DataFrame(), pd.Series(dtype=bool))
    metric = at["task"].map(lambda t: f"test_{primary_metric(t)[0]}")
    values = [at.at[i, m] for i, m in metric.items()]
    means = at.assign(v=np.asarray(values, float)).groupby(["task", "arch", "group"])["v"].mean()
    table = means.unstack("group")
    table = table[[g for g in arm_order(table.columns) if g in MAIN_ARMS]]
    higher = pd.Series([primary_metric(t)[1] for t, _ in table.index], index=table.index)
    return average_ranks(table, higher)

# ---------------------------------------------------------------- reader-study ratings

REQUIRED = ("arm", "rater", "score")


KRUSKAL_METHOD = "scipy.stats.kruskal (tie-corrected H, chi-squared approximation)"


MWU_METHOD = "scipy.stats.mannwhitneyu(x, y), defaults: two-sided, method='auto', one call per pair"


class RatingsError(UserError, ValueError):
    """A ratings table that cannot be summarised; the message names the expected columns."""


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _describe(scores: pd.Series) -> dict[str, Any]:
    return {
        "n": int(scores.size),
        "mean": _finite(scores.mean()),
        "median": _finite(scores.median()),
        "std": _finite(scores.std(ddof=1)) if scores.size > 1 else None,
    }


def _kruskal(groups: dict[str, np.ndarray]) -> dict[str, Any]:
    result: dict[str, Any] = {"test": "kruskal", "groups": list(groups), "method": KRUSKAL_METHOD, "note": None}
    if len(groups) < 2:
        return {**result, "statistic": None, "p": None, "note": "fewer than two arms"}
    if len(np.unique(np.concatenate(list(groups.values())))) < 2:
        return {**result, "statistic": None, "p": None, "note": "every score is identical: no test"}
    stat, p = stats.kruskal(*groups.values())
    return {**result, "statistic": _finite(stat), "p": _finite(p)}


def _pairwise(groups: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    pairs = list(combinations(groups, 2))
    out = []
    for a, b in pairs:
        x, y = groups[a], groups[b]
        record: dict[str, Any] = {
            "test": "mannwhitneyu", "group_a": a, "group_b": b, "n_a": int(x.size), "n_b": int(y.size),
            "correction": "bonferroni", "n_comparisons": len(pairs), "method": MWU_METHOD, "note": None,
        }
        try:
            result = stats.mannwhitneyu(x, y)
            stat, p = _finite(result.statistic), _finite(result.pvalue)
        except ValueError as exc:
            stat, p, record["note"] = None, None, str(exc)
        record.update(
            statistic=stat,
            p_raw=p,
            p_adjusted=None if p is None else min(1.0, p * len(pairs)),
            mean_a=_finite(x.mean()),
            mean_b=_finite(y.mean()),
        )
        out.append(record)
    return out


def _model_summary(frame: pd.DataFrame, task: Any, arch: Any) -> dict[str, Any]:
    arms = arm_order(frame["arm"].unique())
    raters = sorted(frame["rater"].unique())
    per_arm_rater = [
        {"arm": arm, "rater": rater, **_describe(frame.loc[(frame["arm"] == arm) & (frame["rater"] == rater), "score"])}
        for arm in arms
        for rater in raters
        if ((frame["arm"] == arm) & (frame["rater"] == rater)).any()
    ]
    per_arm = [{"arm": arm, **_describe(frame.loc[frame["arm"] == arm, "score"])} for arm in arms]
    groups = {arm: frame.loc[frame["arm"] == arm, "score"].to_numpy(dtype=float) for arm in arms}
    return {
        "task": task,
        "arch": arch,
        "n": int(len(frame)),
        "arms": arms,
        "raters": raters,
        "per_arm_rater": per_arm_rater,
        "per_arm": per_arm,
        "kruskal": _kruskal(groups),
        "pairwise": _pairwise(groups),
    }


def prepare_ratings(frame: pd.DataFrame) -> pd.DataFrame:
    """The ratings checked (arm, rater, score present) and typed, ready to summarise or draw.

    Raises:
        RatingsError: a required column is missing or a score is not a whole number from 1 to 5.
    """
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise RatingsError(f"ratings lack column(s) {', '.join(missing)}; expected arm, rater, score (and task, arch)")
    data = frame.copy()
    data["score"] = pd.to_numeric(data["score"], errors="coerce")
    bad = data["score"].isna() | ~data["score"].between(1, 5)
    if bad.any():
        raise RatingsError(f"{int(bad.sum())} rating(s) are not scores 1-5 (rows {', '.join(map(str, data.index[bad][:8]))})")
    data["arm"] = data["arm"].astype(str)
    data["rater"] = data["rater"].astype(str)
    for col in ("task", "arch"):
        data[col] = data[col].astype(str) if col in data.columns else None
    return data


def ratings_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Ratings per arm and rater, and the arms compared, for each (task, arch) in `frame`.

    Args:
        frame: one row per rating with columns arm, rater, score (1-5) and optionally task, arch.

    Returns:
        `{"n": total ratings, "models": [...]}`; each model: task, arch, n, arms, raters,
        `per_arm_rater` and `per_arm` (n, mean, median, std), `kruskal` (statistic, p) and
        `pairwise` (Mann-Whitney U per pair: statistic, p_raw, p_adjusted (Bonferroni, capped at 1)).
    """
    data = prepare_ratings(frame)
    models = []
    if len(data):
        keys = data[["task", "arch"]].drop_duplicates().itertuples(index=False, name=None)
        for task, arch in sorted(keys, key=lambda k: (str(k[0]), str(k[1]))):
            mask = np.ones(len(data), bool)
            if task is not None:
                mask &= (data["task"] == task).to_numpy()
            if arch is not None:
                mask &= (data["arch"] == arch).to_numpy()
            models.append(_model_summary(data[mask], task, arch))
    return {"n": int(len(data)), "models": models}
