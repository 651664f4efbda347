"""Report figures as PNG bytes (matplotlib's Agg canvas, no pyplot state): curves, boxes, CD diagram."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from medtl.evaluation.analysis import KEYS, Ranks, at_chosen, study_ranks, usable_runs
from medtl.evaluation.stats import primary_metric
from medtl.training.schema import arm_order

CURVE_EPOCHS = 10
DPI = 80
# Nemenyi critical values q_0.05 (studentized range / sqrt 2) for k = 2..10 groups (Demšar 2006).
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def safe_name(*parts: object) -> str:
    """A file-name-safe join of parts (letters, digits, `_`, `.`, `-`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(str(p) for p in parts))


def _figure(width: float, height: float, ncols: int = 1):  # noqa: ANN202 - matplotlib types
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
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


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Per arm and epoch: mean, sample std and number of runs of `value` (columns group, step, value)."""
    if curves.empty:
        return pd.DataFrame(columns=["group", "step", "mean", "std", "n"])
    finite = curves[np.isfinite(curves["value"].astype(float))]
    stats = finite.groupby(["group", "step"])["value"].agg(["mean", "std", "count"]).reset_index()
    return stats.rename(columns={"count": "n"})


def _mean_bands(
    ax, stats: pd.DataFrame, arms: Sequence[str], alpha: float, label: Callable[[str, pd.DataFrame], str]  # noqa: ANN001
) -> Iterator[pd.DataFrame]:
    """Per arm with rows in `stats` (curve_stats): its mean line and ±1 std band; yields the arm's rows."""
    for arm in arms:
        s = stats[stats["group"] == arm].sort_values("step")
        if s.empty:
            continue
        colour = _colour(arms, arm)
        step, mean = s["step"].to_numpy(), s["mean"].to_numpy(float)
        std = s["std"].fillna(0.0).to_numpy(float)
        ax.plot(step, mean, marker="o", ms=3, color=colour, label=label(arm, s))
        ax.fill_between(step, mean - std, mean + std, color=colour, alpha=alpha)
        yield s


def curves_png(
    curves: pd.DataFrame, arms: Sequence[str], title: str, ylabel: str, epochs: int = CURVE_EPOCHS
) -> bytes:
    """Validation curves per arm over the first epochs: mean line, ±1 std band, runs per epoch.

    Args:
        curves: columns group, step, value (one row a run's epoch).
        arms: arms in display order.
        title: figure title.
        ylabel: the metric's name.
        epochs: the length of the epoch axis (a study shorter than CURVE_EPOCHS gets its own length).
    """
    fig, (ax,) = _figure(6.0, 3.6)
    stats = curve_stats(curves)
    if stats.empty:
        ax.text(0.5, 0.5, "no per-epoch history", ha="center", va="center", transform=ax.transAxes)
    for s in _mean_bands(ax, stats, arms, 0.2, lambda arm, _: arm):
        counts = ",".join(str(int(n)) for n in s["n"])
        ax.plot([], [], " ", label=f"  n/epoch: {counts}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0.5, epochs + 0.5)
    if not stats.empty:
        ax.legend(fontsize=6, loc="best")
    return _png(fig)


def fractions_png(
    curves: pd.DataFrame, arms: Sequence[str], fractions: Sequence[float], title: str, ylabel: str
) -> bytes:
    """Reduced-data curves: one panel per training fraction, one mean ± std line per arm.

    Args:
        curves: columns data_fraction, group, step, value.
        arms: arms in display order.
        fractions: the fractions to draw, one panel each.
        title: figure title.
        ylabel: the metric's name.
    """
    fig, axes = _figure(3.2 * max(1, len(fractions)), 3.2, ncols=max(1, len(fractions)))
    for ax, fraction in zip(axes, fractions, strict=False):
        stats = curve_stats(curves[curves["data_fraction"] == fraction])
        for _ in _mean_bands(ax, stats, arms, 0.15, lambda arm, s: f"{arm} (n≤{s['n'].max()})"):
            pass
        ax.set_title(f"{fraction:.0%} of training data", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if not stats.empty:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def box_png(panels: Sequence[tuple[str, dict[str, np.ndarray]]], title: str) -> bytes:
    """Box plots per arm, one panel per metric, every run drawn as a point; empty arms labelled.

    Args:
        panels: (metric name, {arm: values}) per panel.
        title: figure title.
    """
    fig, axes = _figure(3.4 * max(1, len(panels)), 3.2, ncols=max(1, len(panels)))
    rng = np.random.default_rng(0)
    for ax, (metric, arms) in zip(axes, panels, strict=False):
        names = list(arms)
        data = [np.asarray(arms[a], float) for a in names]
        shown = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(shown, showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [f"{a}\nn={d.size}" for a, d in zip(names, data, strict=True)], fontsize=7)
        for i, d in enumerate(data, start=1):
            if d.size:
                ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=10, color=_COLOURS[(i - 1) % 8], zorder=3)
            else:
                ax.text(i, 0.5, "no runs", ha="center", transform=ax.get_xaxis_transform(), fontsize=7)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float | None, int]:
    """Pearson's r over the finite pairs, and their number; None when undefined (n<3 or constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None, n
    return float(np.corrcoef(x[ok], y[ok])[0, 1]), n


def emissions_png(frame: pd.DataFrame, x: str, y: str) -> bytes:
    """Scatter of emissions against epochs, coloured by task, with Pearson's r in the title.

    Args:
        frame: one row a run with columns task, `x` and `y`.
        x: the epochs column.
        y: the emissions column.
    """
    fig, (ax,) = _figure(5.0, 3.6)
    r, n = pearson(frame[x].to_numpy(float), frame[y].to_numpy(float))
    tasks = sorted(frame["task"].dropna().unique())
    for i, task in enumerate(tasks):
        rows = frame[frame["task"] == task]
        ax.scatter(rows[x], rows[y], s=10, color=_COLOURS[i % 8], label=task)
    if n == 0:
        ax.text(0.5, 0.5, "no emissions measured", ha="center", va="center", transform=ax.transAxes)
    r_text = "undefined" if r is None else f"{r:.3f}"
    ax.set_title(f"emissions vs {x}: Pearson r = {r_text} (n = {n})", fontsize=9)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if tasks and n:
        ax.legend(fontsize=6)
    return _png(fig)


def cd_png(ranks: Ranks) -> bytes:
    """A simple critical-difference diagram: arms on a rank axis, CD bar, non-different arms joined."""
    fig, (ax,) = _figure(6.0, 2.2 + 0.25 * len(ranks.arms))
    k = len(ranks.arms)
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(k + 1), 2.2)
    ax.axhline(0, color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.15], color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    order = sorted(zip(ranks.average, ranks.arms, strict=True))
    for i, (rank, arm) in enumerate(order):
        y = -(i + 1) * 0.8
        ax.plot([rank, rank], [0, y], color="gray", lw=0.8)
        ax.text(rank + 0.05, y, f"{arm} ({rank:.2f})", va="center", fontsize=8)
    if ranks.cd is not None:
        ax.plot([1, 1 + ranks.cd], [1.5, 1.5], color="black", lw=2)
        ax.text(1 + ranks.cd / 2, 1.7, f"CD = {ranks.cd:.2f}", ha="center", fontsize=8)
        level = -0.4
        for i in range(len(order)):
            j = max(j for j in range(i, len(order)) if order[j][0] - order[i][0] <= ranks.cd)
            if j > i and (i == 0 or order[j][0] - order[i - 1][0] > ranks.cd):
                ax.plot([order[i][0], order[j][0]], [level, level], color="black", lw=3)
                level -= 0.25
    ax.set_axis_off()
    ax.set_title(f"average rank over {ranks.n_cells} (task, arch) cells; 1 = best", fontsize=9)
    return _png(fig)


# ---------------------------------------------------------------- a study's figures


def study_figures(
    runs: pd.DataFrame, histories: pd.DataFrame, chosen: pd.DataFrame, workers: int | None = None
) -> dict[str, bytes]:
    """Every figure of a study report, file name → PNG bytes.

    Per (task, arch): `curves_*` (first epochs, full data), `fractions_*` (reduced data, when any
    run used less than all training data) and `box_*` (test primary metric and epochs); then
    `emissions.png` and, when defined, `cd_diagram.png`.

    Args:
        runs: `collect(...).runs`.
        histories: `collect(...).histories` (only `val_<primary>` up to CURVE_EPOCHS is drawn).
        chosen: the selected learning rates (task, arch, group, data_fraction, lr).
        workers: drawing processes (default: half the CPUs, at least 2 and at most 4, when there
            are 2+ CPUs, 8+ figures and this is the main thread of a platform that can fork; else 1, which
            draws in this process).
    """
    ok = usable_runs(runs)
    hist = histories[histories["step"] <= CURVE_EPOCHS].merge(ok[["run_id", *KEYS]], on="run_id")
    jobs: list[tuple[str, Callable[..., bytes], tuple[object, ...]]] = []
    for (task, arch), cell in ok.groupby(["task", "arch"]):
        metric, _ = primary_metric(task)
        arms = arm_order(cell["group"].unique())
        key = f"val_{metric}"
        curves = at_chosen(hist[(hist["task"] == task) & (hist["arch"] == arch) & (hist["key"] == key)], chosen)
        curves = curves[["group", "step", "value", "data_fraction"]]
        # A study shorter than CURVE_EPOCHS (the demo's 5) gets an axis as long as its runs.
        shown = min(CURVE_EPOCHS, int(curves["step"].max())) if len(curves) else CURVE_EPOCHS
        title = f"{task} {arch}: {key}, first {shown} epochs (selected lr)"
        jobs.append((safe_name("curves", task, arch), curves_png,
                     (curves[curves["data_fraction"] == 1.0], arms, title, key, shown)))
        fractions = sorted(f for f in cell["data_fraction"].unique() if f < 1.0)
        if fractions:
            jobs.append((safe_name("fractions", task, arch), fractions_png,
                         (curves, arms, fractions, f"{task} {arch}: reduced training data (selected lr)", key)))
        top = at_chosen(cell[cell["data_fraction"] == 1.0], chosen)
        panels = [
            (col, {a: top.loc[top["group"] == a, col].dropna().to_numpy(float) for a in arms})
            for col in (f"test_{metric}", "epochs_to_convergence")
        ]
        jobs.append((safe_name("box", task, arch), box_png, (panels, f"{task} {arch} (selected lr)")))
    jobs.append(("emissions", emissions_png, (ok[["task", "epochs_to_convergence", "emissions_kg"]],
                                              "epochs_to_convergence", "emissions_kg")))
    ranks = study_ranks(runs, chosen)
    if ranks.cd is not None:
        jobs.append(("cd_diagram", cd_png, (ranks,)))
    return dict(zip([f"{name}.png" for name, _, _ in jobs], _draw_all(jobs, workers), strict=True))


def _draw(job: tuple[str, Callable[..., bytes], tuple[object, ...]]) -> bytes:
    return job[1](*job[2])


def _draw_all(jobs: list[tuple[str, Callable[..., bytes], tuple[object, ...]]], workers: int | None) -> list[bytes]:
    """Draw the figures, in forked worker processes when there are many and it is safe to fork."""
    if workers is None:
        safe = threading.current_thread() is threading.main_thread() and "fork" in mp.get_all_start_methods()
        cpus = os.cpu_count() or 1
        workers = min(4, max(2, cpus // 2)) if safe and cpus >= 2 and len(jobs) >= 8 else 1
    if workers <= 1:
        return [_draw(job) for job in jobs]
    import matplotlib.figure  # noqa: F401 - once here, inherited by the forked workers
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(_draw, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


