"""The reader-study ratings compared: per arm and rater, Kruskal–Wallis across arms, Mann–Whitney pairs.

Arms are compared on all raters' scores pooled: Kruskal–Wallis across arms, then pairwise
Mann–Whitney U, scipy's defaults called once per pair (with 1–5 scores there are ties, so the normal
approximation with tie and continuity correction), Bonferroni-corrected by the number of pairs and
capped at 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from medtl.errors import UserError
from medtl.evaluation.stats_exact import scipy_stats
from medtl.training import schema as S

REQUIRED = ("arm", "rater", "score")
KRUSKAL_METHOD = "scipy.stats.kruskal (tie-corrected H, chi-squared approximation)"
MWU_METHOD = "scipy.stats.mannwhitneyu(x, y), defaults: two-sided, method='auto', one call per pair"


class RatingsError(UserError, ValueError):
    """A ratings table that cannot be summarised; the message names the expected columns."""


@dataclass(frozen=True)
class RatingsResult:
    """The ratings summary (reader_ratings.json) and, per model in its order, each (arm, rater)'s scores."""

    summary: dict[str, Any]
    points: tuple[dict[tuple[str, str], np.ndarray], ...]


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


def _kruskal(by_arm: dict[str, np.ndarray]) -> dict[str, Any]:
    result: dict[str, Any] = {"test": "kruskal", "groups": list(by_arm), "method": KRUSKAL_METHOD, "note": None}
    if len(by_arm) < 2:
        return {**result, "statistic": None, "p": None, "note": "fewer than two arms"}
    if len(np.unique(np.concatenate(list(by_arm.values())))) < 2:
        return {**result, "statistic": None, "p": None, "note": "every score is identical: no test"}
    stat, p = scipy_stats().kruskal(*by_arm.values())
    return {**result, "statistic": _finite(stat), "p": _finite(p)}


def _pairwise(by_arm: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    pairs = list(combinations(by_arm, 2))
    out = []
    for a, b in pairs:
        x, y = by_arm[a], by_arm[b]
        record: dict[str, Any] = {
            "test": "mannwhitneyu", "group_a": a, "group_b": b, "n_a": int(x.size), "n_b": int(y.size),
            "correction": "bonferroni", "n_comparisons": len(pairs), "method": MWU_METHOD, "note": None,
        }
        try:
            result = scipy_stats().mannwhitneyu(x, y)
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
    arms = S.arm_order(frame["arm"].unique())
    raters = sorted(frame["rater"].unique())
    per_arm_rater = [
        {"arm": arm, "rater": rater, **_describe(frame.loc[(frame["arm"] == arm) & (frame["rater"] == rater), "score"])}
        for arm in arms
        for rater in raters
        if ((frame["arm"] == arm) & (frame["rater"] == rater)).any()
    ]
    per_arm = [{"arm": arm, **_describe(frame.loc[frame["arm"] == arm, "score"])} for arm in arms]
    by_arm = {arm: frame.loc[frame["arm"] == arm, "score"].to_numpy(dtype=float) for arm in arms}
    return {
        "task": task,
        "arch": arch,
        "n": int(len(frame)),
        "arms": arms,
        "raters": raters,
        "per_arm_rater": per_arm_rater,
        "per_arm": per_arm,
        "kruskal": _kruskal(by_arm),
        "pairwise": _pairwise(by_arm),
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
    return analyse_ratings(frame).summary


def _models(data: pd.DataFrame) -> list[tuple[Any, Any, pd.DataFrame]]:
    """(task, arch, that model's ratings) for each (task, arch) in the ratings, sorted."""
    out = []
    if len(data):
        keys = data[["task", "arch"]].drop_duplicates().itertuples(index=False, name=None)
        for task, arch in sorted(keys, key=lambda k: (str(k[0]), str(k[1]))):
            mask = np.ones(len(data), bool)
            if task is not None:
                mask &= (data["task"] == task).to_numpy()
            if arch is not None:
                mask &= (data["arch"] == arch).to_numpy()
            out.append((task, arch, data[mask]))
    return out


def analyse_ratings(frame: pd.DataFrame) -> RatingsResult:
    """The ratings summary and the scores the figure draws as dots, per model, arm and rater.

    Raises:
        RatingsError: see `prepare_ratings`.
    """
    data = prepare_ratings(frame)
    models, points = [], []
    for task, arch, rows in _models(data):
        model = _model_summary(rows, task, arch)
        models.append(model)
        points.append({
            (arm, rater): rows.loc[(rows["arm"] == arm) & (rows["rater"] == rater), "score"].to_numpy()
            for rater in model["raters"] for arm in model["arms"]
        })
    return RatingsResult({"n": int(len(data)), "models": models}, tuple(points))
