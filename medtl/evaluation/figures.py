"""The report's figures as data: frozen specs of numpy arrays and plain values, one class per kind of plot.

`figure_data` computes them from a study, `plots` draws them; this module imports neither pandas nor
matplotlib, so a drawing process receives specs without loading the analysis's libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Band:
    """One arm's mean ± sample std (NaN std read as 0) per epoch, and the runs behind each epoch."""

    arm: str
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray
    n_max: int


@dataclass(frozen=True)
class CurvesFigure:
    """Validation curves per arm over the first epochs at full data (`bands` empty: no history)."""

    name: str
    title: str
    ylabel: str
    epochs: int
    arms: tuple[str, ...]
    bands: tuple[Band, ...]


@dataclass(frozen=True)
class FractionsFigure:
    """Reduced-data curves: one panel per training fraction below 1, one band per arm."""

    name: str
    title: str
    ylabel: str
    arms: tuple[str, ...]
    panels: tuple[tuple[float, tuple[Band, ...]], ...]


@dataclass(frozen=True)
class BoxFigure:
    """Per metric, each arm's values at its selected learning rate (one panel per metric)."""

    name: str
    title: str
    panels: tuple[tuple[str, tuple[tuple[str, np.ndarray], ...]], ...]


@dataclass(frozen=True)
class Correlation:
    """Pearson's r between emissions and an epoch count over the finite pairs (r None: undefined)."""

    x: str
    y: str
    r: float | None
    n: int


@dataclass(frozen=True)
class EmissionsFigure:
    """Emissions against epochs, one series per task, with their correlation."""

    name: str
    correlation: Correlation
    series: tuple[tuple[str, np.ndarray, np.ndarray], ...]


@dataclass(frozen=True)
class CdFigure:
    """The critical-difference diagram: each arm's average rank, the CD and the joined runs of arms."""

    name: str
    arms: tuple[str, ...]
    average: tuple[float, ...]
    n_cells: int
    cd: float | None
    cliques: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class RatingsFigure:
    """The reader-study ratings per model, arm and rater (summary statistics and every score)."""

    name: str
    models: tuple[dict[str, Any], ...]
    points: tuple[dict[tuple[str, str], np.ndarray], ...]




@dataclass(frozen=True)
class ReliabilityPanel:
    """One arm's reliability curve: its best run's equal-mass bins with Clopper–Pearson intervals.

    The arrays hold one value per bin (mean confidence, observed rate, its interval, samples);
    empty with `note` saying why when the run's predictions are missing.
    """

    arm: str
    label: str
    confidence: np.ndarray
    observed: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray
    note: str | None = None


@dataclass(frozen=True)
class ReliabilityFigure:
    """The reliability diagram of a (task, arch) cell: one curve (a `ReliabilityPanel`) per arm."""

    name: str
    task: str
    arch: str
    title: str
    xlabel: str
    ylabel: str
    panels: tuple[ReliabilityPanel, ...]


Figure = CurvesFigure | FractionsFigure | BoxFigure | EmissionsFigure | CdFigure | RatingsFigure | ReliabilityFigure
