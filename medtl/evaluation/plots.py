"""Report figures drawn as PNG bytes (matplotlib's Agg canvas, no pyplot state) from `figures` specs.

Drawing only: every number comes from the frozen specs (curves, boxes, emissions, the CD diagram,
reader ratings) that `figure_data` computed; the only randomness is the seeded horizontal jitter of dots.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medtl.evaluation.figures import (
    Band,
    BoxFigure,
    CdFigure,
    CurvesFigure,
    EmissionsFigure,
    Figure,
    FractionsFigure,
    RatingsFigure,
    ReliabilityFigure,
)

DPI = 80
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _figure(width: float, height: float, ncols: int = 1):  # noqa: ANN202 - matplotlib types
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height))
    fig.subplots_adjust(left=0.1 / max(1, ncols) + 0.04, right=0.98, bottom=0.2, top=0.84, wspace=0.3)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig) -> bytes:  # noqa: ANN001
    _pin_titles(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _pin_titles(fig) -> None:  # noqa: ANN001
    """Pin each axes title at the top of its axes, where automatic placement puts it when no y offset
    text (e.g. `1e-6`) and no top ticks sit there; that placement costs a second tick layout per draw."""
    for ax in fig.axes:
        title = ax.get_title()
        if not title or ax.xaxis.get_ticks_position() != "bottom" or ax.xaxis.get_label_position() != "bottom":
            continue
        formatter = ax.yaxis.get_major_formatter()
        formatter.set_locs(ax.yaxis.get_majorticklocs())
        if not formatter.get_offset():
            ax.set_title(title, fontsize=ax.title.get_fontsize(), y=1.0)


def _colour(arms: Sequence[str], arm: str) -> str:
    return _COLOURS[list(arms).index(arm) % len(_COLOURS)]


def _mean_bands(ax, bands: Sequence[Band], arms: Sequence[str], alpha: float, label: Callable[[Band], str]) -> None:  # noqa: ANN001
    """Each band's mean line and ±1 std band, coloured by the arm's place in `arms`."""
    for band in bands:
        colour = _colour(arms, band.arm)
        ax.plot(band.steps, band.mean, marker="o", ms=3, color=colour, label=label(band))
        ax.fill_between(band.steps, band.mean - band.std, band.mean + band.std, color=colour, alpha=alpha)


def curves_png(figure: CurvesFigure) -> bytes:
    """Validation curves per arm over the first epochs: mean line, ±1 std band, runs per epoch."""
    fig, (ax,) = _figure(6.0, 3.6)
    if not figure.bands:
        ax.text(0.5, 0.5, "no per-epoch history", ha="center", va="center", transform=ax.transAxes)
    for band in figure.bands:
        _mean_bands(ax, [band], figure.arms, 0.2, lambda b: b.arm)
        counts = ",".join(str(int(n)) for n in band.n)
        ax.plot([], [], " ", label=f"  n/epoch: {counts}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(figure.ylabel)
    ax.set_title(figure.title, fontsize=9)
    ax.set_xlim(0.5, figure.epochs + 0.5)
    if figure.bands:
        ax.legend(fontsize=6, loc="best")
    return _png(fig)


def fractions_png(figure: FractionsFigure) -> bytes:
    """Reduced-data curves: one panel per training fraction, one mean ± std line per arm."""
    fig, axes = _figure(3.2 * max(1, len(figure.panels)), 3.2, ncols=max(1, len(figure.panels)))
    for ax, (fraction, bands) in zip(axes, figure.panels, strict=False):
        _mean_bands(ax, bands, figure.arms, 0.15, lambda b: f"{b.arm} (n≤{b.n_max})")
        ax.set_title(f"{fraction:.0%} of training data", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(figure.ylabel)
        if bands:
            ax.legend(fontsize=6)
    fig.suptitle(figure.title, fontsize=9)
    return _png(fig)


def box_png(figure: BoxFigure) -> bytes:
    """Box plots per arm, one panel per metric, every run drawn as a point; empty arms labelled."""
    fig, axes = _figure(3.4 * max(1, len(figure.panels)), 3.2, ncols=max(1, len(figure.panels)))
    rng = np.random.default_rng(0)
    for ax, (metric, arms) in zip(axes, figure.panels, strict=False):
        names = [a for a, _ in arms]
        data = [np.asarray(values, float) for _, values in arms]
        shown = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(shown, showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [f"{a}\nn={d.size}" for a, d in zip(names, data, strict=True)], fontsize=7)
        for i, d in enumerate(data, start=1):
            if d.size:
                ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=10, color=_COLOURS[(i - 1) % 8], zorder=3)
            else:
                ax.text(i, 0.5, "no runs", ha="center", transform=ax.get_xaxis_transform(), fontsize=7)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(figure.title, fontsize=9)
    return _png(fig)


def emissions_png(figure: EmissionsFigure) -> bytes:
    """Scatter of emissions against epochs, coloured by task, with Pearson's r in the title."""
    fig, (ax,) = _figure(5.0, 3.6)
    c = figure.correlation
    for i, (task, x, y) in enumerate(figure.series):
        ax.scatter(x, y, s=10, color=_COLOURS[i % 8], label=task)
    if c.n == 0:
        ax.text(0.5, 0.5, "no emissions measured", ha="center", va="center", transform=ax.transAxes)
    r_text = "undefined" if c.r is None else f"{c.r:.3f}"
    ax.set_title(f"emissions vs {c.x}: Pearson r = {r_text} (n = {c.n})", fontsize=9)
    ax.set_xlabel(c.x)
    ax.set_ylabel(c.y)
    if figure.series and c.n:
        ax.legend(fontsize=6)
    return _png(fig)


def cd_png(figure: CdFigure) -> bytes:
    """A simple critical-difference diagram: arms on a rank axis, CD bar, non-different arms joined."""
    ranks = figure
    fig, (ax,) = _figure(6.0, 2.2 + 0.25 * len(ranks.arms))
    k = len(ranks.arms)
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(k + 1), 2.2)
    ax.axhline(0, color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.15], color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    for i, (rank, arm) in enumerate(sorted(zip(ranks.average, ranks.arms, strict=True))):
        y = -(i + 1) * 0.8
        ax.plot([rank, rank], [0, y], color="gray", lw=0.8)
        ax.text(rank + 0.05, y, f"{arm} ({rank:.2f})", va="center", fontsize=8)
    if ranks.cd is not None:
        ax.plot([1, 1 + ranks.cd], [1.5, 1.5], color="black", lw=2)
        ax.text(1 + ranks.cd / 2, 1.7, f"CD = {ranks.cd:.2f}", ha="center", fontsize=8)
        level = -0.4
        for low, high in ranks.cliques:
            ax.plot([low, high], [level, level], color="black", lw=3)
            level -= 0.25
    ax.set_axis_off()
    ax.set_title(f"average rank over {ranks.n_cells} (task, arch) cells; 1 = best", fontsize=9)
    return _png(fig)


def ratings_png(figure: RatingsFigure) -> bytes:
    """Like the paper's Figure 9: per (task, arch) a panel of mean score per arm, one bar per rater
    (error bars: standard deviation), each rating drawn as a dot."""
    from matplotlib.figure import Figure as MplFigure

    models = figure.models or ({"task": None, "arch": None, "arms": [], "raters": [], "per_arm_rater": []},)
    points = figure.points or ({},)
    fig = MplFigure(figsize=(4.2 * len(models), 3.4))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, model, scores in zip(axes, models, points, strict=False):
        raters, arms = model["raters"], model["arms"]
        width = 0.8 / max(1, len(raters))
        for j, rater in enumerate(raters):
            rows = {r["arm"]: r for r in model["per_arm_rater"] if r["rater"] == rater}
            xs = np.arange(len(arms)) - 0.4 + width * (j + 0.5)
            means = [rows[a]["mean"] if a in rows else np.nan for a in arms]
            sds = [(rows[a]["std"] or 0.0) if a in rows else 0.0 for a in arms]
            colour = _COLOURS[j % 6]
            ax.bar(xs, means, width * 0.9, yerr=sds, capsize=3, color=colour, alpha=0.75, label=rater)
            for x, arm in zip(xs, arms, strict=True):
                dots = scores[(arm, rater)]
                jitter = rng.uniform(-width * 0.3, width * 0.3, len(dots))
                ax.scatter(x + jitter, dots, s=6, color="black", alpha=0.4, zorder=3)
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


def reliability_png(figure: ReliabilityFigure) -> bytes:
    """A cell's reliability diagram: per arm, observed frequency against confidence in each equal-mass bin
    with its 95 % Clopper–Pearson interval, all arms on one axes; the diagonal is perfect calibration."""
    fig, (ax,) = _figure(5.6, 3.9)
    arms = [p.arm for p in figure.panels]
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
    for panel in figure.panels:
        colour = _colour(arms, panel.arm)
        if panel.note:
            ax.plot([], [], " ", label=f"{panel.label}: {panel.note}")
            continue
        ax.errorbar(panel.confidence, panel.observed, yerr=[panel.observed - panel.low, panel.high - panel.observed],
                    fmt="o-", ms=3, lw=1, capsize=2, color=colour, label=panel.label)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(figure.xlabel)
    ax.set_ylabel(figure.ylabel)
    ax.set_title(figure.title, fontsize=9)
    ax.legend(fontsize=6, loc="upper left", title="bars: 95 % Clopper–Pearson", title_fontsize=6)
    return _png(fig)


_DRAW: dict[type, Callable[[Any], bytes]] = {
    CurvesFigure: curves_png, FractionsFigure: fractions_png, BoxFigure: box_png,
    EmissionsFigure: emissions_png, CdFigure: cd_png, RatingsFigure: ratings_png, ReliabilityFigure: reliability_png,
}


def draw(figure: Figure) -> bytes:
    """One figure as PNG bytes."""
    return _DRAW[type(figure)](figure)
