"""Reader-study ratings of Grad-CAM heatmaps rendered: per arm and rater (the paper's Figure 9) and their tests.

Rendering only: the numbers come from `analysis.ratings_summary` (a DataFrame of ratings in:
columns arm, rater, score; optionally task and arch, one summary per (task, arch)). There, arms
are compared on all raters' scores pooled:
Kruskal–Wallis across arms, then pairwise Mann–Whitney U, scipy's defaults called once per pair
(with 1–5 scores there are ties, so the normal approximation with tie and continuity correction),
Bonferroni-corrected by the number of pairs and capped at 1.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from medtl.evaluation.analysis import MWU_METHOD, prepare_ratings, ratings_summary


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
    data = prepare_ratings(frame)
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
