"""Reader-study ratings of Grad-CAM heatmaps: per arm and rater (the paper's Figure 9) and their tests.

Pure: a DataFrame of ratings in (columns arm, rater, score; optionally task and arch, one summary
per (task, arch)), plain numbers out. Arms are compared on all raters' scores pooled:
Kruskal–Wallis across arms, then pairwise Mann–Whitney U, scipy's defaults called once per pair
(with 1–5 scores there are ties, so the normal approximation with tie and continuity correction),
Bonferroni-corrected by the number of pairs and capped at 1.
"""

from __future__ import annotations

import io
import math
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medtl.errors import UserError
from medtl.evaluation.stats import MAIN_ARMS

REQUIRED = ("arm", "rater", "score")
KRUSKAL_METHOD = "scipy.stats.kruskal (tie-corrected H, chi-squared approximation)"
MWU_METHOD = "scipy.stats.mannwhitneyu(x, y), defaults: two-sided, method='auto', one call per pair"


class RatingsError(UserError, ValueError):
    """A ratings table that cannot be summarised; the message names the expected columns."""


def _ordered(arms: Any) -> list[str]:
    return sorted(map(str, arms), key=lambda a: (MAIN_ARMS.index(a) if a in MAIN_ARMS else len(MAIN_ARMS), a))


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _describe(scores: pd.Series) -> dict[str, Any]:
    return {
        "n": int(scores.size),
        "mean": _num(scores.mean()),
        "median": _num(scores.median()),
        "std": _num(scores.std(ddof=1)) if scores.size > 1 else None,
    }


def _kruskal(groups: dict[str, np.ndarray]) -> dict[str, Any]:
    result: dict[str, Any] = {"test": "kruskal", "groups": list(groups), "method": KRUSKAL_METHOD, "note": None}
    if len(groups) < 2:
        return {**result, "statistic": None, "p": None, "note": "fewer than two arms"}
    if len(np.unique(np.concatenate(list(groups.values())))) < 2:
        return {**result, "statistic": None, "p": None, "note": "every score is identical: no test"}
    stat, p = stats.kruskal(*groups.values())
    return {**result, "statistic": _num(stat), "p": _num(p)}


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
            stat, p = _num(result.statistic), _num(result.pvalue)
        except ValueError as exc:
            stat, p, record["note"] = None, None, str(exc)
        record.update(
            statistic=stat,
            p_raw=p,
            p_adjusted=None if p is None else min(1.0, p * len(pairs)),
            mean_a=_num(x.mean()),
            mean_b=_num(y.mean()),
        )
        out.append(record)
    return out


def _model_summary(frame: pd.DataFrame, task: Any, arch: Any) -> dict[str, Any]:
    arms = _ordered(frame["arm"].unique())
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


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
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
    data = _prepare(frame)
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


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2g}"
    return str(value)


def render_ratings_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: per model, a table of ratings per arm and rater, then the tests."""
    lines = ["## Reader study: Grad-CAM heatmap ratings", ""]
    if not summary.get("models"):
        return "\n".join(lines + ["No ratings imported yet (`medtl reader-import`).", ""])
    lines += ["Scores 1 (entirely irrelevant areas) to 5 (solely the relevant regions); raters blinded to the arm.", ""]
    for model in summary["models"]:
        title = " ".join(str(x) for x in (model["task"], model["arch"]) if x is not None) or "all ratings"
        lines += [f"### {title}", "", "| arm | rater | n | mean | median | sd |", "|---|---|---:|---:|---:|---:|"]
        for row in model["per_arm_rater"]:
            lines.append(f"| {row['arm']} | {row['rater']} | {row['n']} | {_fmt(row['mean'])} | {_fmt(row['median'], 1)} | {_fmt(row['std'])} |")
        for row in model["per_arm"]:
            lines.append(f"| **{row['arm']}** | all | {row['n']} | {_fmt(row['mean'])} | {_fmt(row['median'], 1)} | {_fmt(row['std'])} |")
        kw = model["kruskal"]
        lines += ["", f"Kruskal–Wallis across arms (raters pooled): H = {_fmt(kw['statistic'])}, p = {_fmt(kw['p'], 4)}"
                  + (f" ({kw['note']})" if kw.get("note") else ""), ""]
        if model["pairwise"]:
            lines += ["| arm A | arm B | U | p | p (Bonferroni) |", "|---|---|---:|---:|---:|"]
            for p in model["pairwise"]:
                lines.append(
                    f"| {p['group_a']} | {p['group_b']} | {_fmt(p['statistic'], 1)} | {_fmt(p['p_raw'], 4)} | {_fmt(p['p_adjusted'], 4)} |"
                )
            lines += ["", f"Method: {MWU_METHOD}; Bonferroni over {model['pairwise'][0]['n_comparisons']} pair(s), capped at 1.", ""]
    return "\n".join(lines)


_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def ratings_figure(frame: pd.DataFrame) -> bytes:
    """PNG like the paper's Figure 9: per (task, arch) a panel of mean score per arm, one bar per rater
    (error bars: standard deviation), each rating drawn as a dot."""
    from matplotlib.figure import Figure

    summary = ratings_summary(frame)
    models = summary["models"] or [{"task": None, "arch": None, "arms": [], "raters": [], "per_arm_rater": []}]
    data = _prepare(frame)
    fig = Figure(figsize=(4.2 * len(models), 3.4))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, model in zip(axes, models):
        raters, arms = model["raters"], model["arms"]
        width = 0.8 / max(1, len(raters))
        for j, rater in enumerate(raters):
            rows = {r["arm"]: r for r in model["per_arm_rater"] if r["rater"] == rater}
            xs = np.arange(len(arms)) - 0.4 + width * (j + 0.5)
            means = [rows[a]["mean"] if a in rows else np.nan for a in arms]
            sds = [(rows[a]["std"] or 0.0) if a in rows else 0.0 for a in arms]
            colour = _COLOURS[j % len(_COLOURS)]
            ax.bar(xs, means, width * 0.9, yerr=sds, capsize=3, color=colour, alpha=0.75, label=rater)
            for x, arm in zip(xs, arms):
                sel = data[(data["arm"] == arm) & (data["rater"] == rater)]
                if model["task"] is not None:
                    sel = sel[sel["task"] == model["task"]]
                if model["arch"] is not None:
                    sel = sel[sel["arch"] == model["arch"]]
                jitter = rng.uniform(-width * 0.3, width * 0.3, len(sel))
                ax.scatter(x + jitter, sel["score"], s=6, color="black", alpha=0.4, zorder=3)
        ax.set_xticks(np.arange(len(arms)))
        ax.set_xticklabels(arms)
        ax.set_ylim(0, 5.5)
        ax.set_ylabel("rating (1-5)")
        title = " ".join(str(x) for x in (model["task"], model["arch"]) if x is not None)
        ax.set_title(title or "no ratings", fontsize=10)
        if raters:
            ax.legend(title="rater", fontsize=8, title_fontsize=8, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
