"""What each report figure shows, computed once: the numbers behind every plot (`figures` specs), in the
report's order, and the emissions correlations the report quotes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from medtl.evaluation.figures import (
    Band,
    BoxFigure,
    CdFigure,
    Correlation,
    CurvesFigure,
    EmissionsFigure,
    Figure,
    FractionsFigure,
    RatingsFigure,
)
from medtl.evaluation.ranks import Ranks
from medtl.evaluation.reader_stats import RatingsResult
from medtl.evaluation.stats import primary_metric
from medtl.evaluation.summaries import KEYS, at_chosen, usable_runs
from medtl.training import schema as S

CURVE_EPOCHS = 10
EMISSIONS_AGAINST = ("epochs_to_convergence", "epochs_run")
"""The epoch counts the report correlates emissions with (the figure draws the first)."""


def safe_name(*parts: object) -> str:
    """A file-name-safe join of parts (letters, digits, `_`, `.`, `-`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(str(p) for p in parts))


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float | None, int]:
    """Pearson's r over the finite pairs, and their number; None when undefined (n<3 or constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None, n
    return float(np.corrcoef(x[ok], y[ok])[0, 1]), n


def correlations(runs: pd.DataFrame) -> tuple[Correlation, ...]:
    """Emissions against each of EMISSIONS_AGAINST over the usable runs."""
    ok = usable_runs(runs)
    return tuple(Correlation(col, "emissions_kg", *pearson(ok[col].to_numpy(float), ok["emissions_kg"].to_numpy(float)))
                 for col in EMISSIONS_AGAINST)


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Per arm and epoch: mean, sample std and number of runs of `value` (columns arm, step, value)."""
    if curves.empty:
        return pd.DataFrame(columns=["arm", "step", "mean", "std", "n"])
    finite = curves[np.isfinite(curves["value"].astype(float))]
    stats = finite.groupby(["arm", "step"])["value"].agg(["mean", "std", "count"]).reset_index()
    return stats.rename(columns={"count": "n"})


def _bands(stats: pd.DataFrame, arms: tuple[str, ...]) -> tuple[Band, ...]:
    out = []
    for arm in arms:
        s = stats[stats["arm"] == arm].sort_values("step")
        if s.empty:
            continue
        out.append(Band(arm, s["step"].to_numpy(), s["mean"].to_numpy(float), s["std"].fillna(0.0).to_numpy(float),
                        s["n"].to_numpy(), int(s["n"].max())))
    return tuple(out)


def study_figures(
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    chosen: pd.DataFrame,
    ranks: Ranks,
    emissions: Correlation,
) -> tuple[Figure, ...]:
    """The study's figures, in the report's order (reliability diagrams: `diagnostics`; ratings: `ratings_figure`).

    Per (task, arch): `curves_*` (first epochs, full data), `fractions_*` (reduced data, when any
    run used less than all training data) and `box_*` (test primary metric and epochs); then
    `emissions.png` and `cd_diagram.png` when the ranks define a CD.

    Args:
        runs: the runs the statistics count (selected; diverged ones dropped when excluded).
        histories: `collect(...).histories` (only `val_<primary>` up to CURVE_EPOCHS is drawn).
        chosen: the selected learning rates (task, arch, arm, data_fraction, lr).
        ranks: the arms' average ranks.
        emissions: the correlation the emissions figure shows.
    """
    ok = usable_runs(runs)
    at_lr = at_chosen(ok, chosen)  # each arm's runs at its selected learning rate, in run order
    hist = histories[histories["step"] <= CURVE_EPOCHS].merge(at_lr[["run_id", *KEYS]], on="run_id")
    cells = dict(iter(at_lr.groupby(["task", "arch"])))
    curves_of = dict(iter(hist.groupby(["task", "arch", "key"])))
    no_curves = hist.iloc[0:0]
    figures: list[Figure] = []
    for (task, arch), cell in ok.groupby(["task", "arch"]):
        metric, _ = primary_metric(task)
        arms = tuple(S.arm_order(cell["arm"].unique()))
        key = f"val_{metric}"
        curves = curves_of.get((task, arch, key), no_curves)[["arm", "step", "value", "data_fraction"]]
        # A study shorter than CURVE_EPOCHS (the demo's 5) gets an axis as long as its runs.
        shown = min(CURVE_EPOCHS, int(curves["step"].max())) if len(curves) else CURVE_EPOCHS
        title = f"{task} {arch}: {key}, first {shown} epochs (selected lr)"
        full = curve_stats(curves[curves["data_fraction"] == 1.0])
        figures.append(CurvesFigure(f"{safe_name('curves', task, arch)}.png", title, key, shown, arms, _bands(full, arms)))
        fractions = sorted(f for f in cell["data_fraction"].unique() if f < 1.0)
        if fractions:
            panels = tuple((float(f), _bands(curve_stats(curves[curves["data_fraction"] == f]), arms)) for f in fractions)
            figures.append(FractionsFigure(f"{safe_name('fractions', task, arch)}.png",
                                           f"{task} {arch}: reduced training data (selected lr)", key, arms, panels))
        top = cells.get((task, arch), at_lr.iloc[0:0])
        top = top[top["data_fraction"] == 1.0]
        box = tuple(
            (col, tuple((a, top.loc[top["arm"] == a, col].dropna().to_numpy(float)) for a in arms))
            for col in (f"test_{metric}", "epochs_to_convergence")
        )
        figures.append(BoxFigure(f"{safe_name('box', task, arch)}.png", f"{task} {arch} (selected lr)", box))
    series = tuple((str(t), ok.loc[ok["task"] == t, emissions.x].to_numpy(float), ok.loc[ok["task"] == t, emissions.y].to_numpy(float))
                   for t in sorted(ok["task"].dropna().unique()))
    figures.append(EmissionsFigure("emissions.png", emissions, series))
    if ranks.cd is not None:
        figures.append(CdFigure("cd_diagram.png", ranks.arms, ranks.average, ranks.n_cells, ranks.cd, ranks.cliques))
    return tuple(figures)


def ratings_figure(ratings: RatingsResult) -> RatingsFigure:
    """The reader-study figure (the paper's Figure 9) of summarised ratings."""
    return RatingsFigure("reader_ratings.png", tuple(ratings.summary["models"]), ratings.points)
