"""Average ranks of the arms over (task, arch) cells and the Nemenyi critical difference (Demšar 2006)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtl.evaluation.stats import primary_metric
from medtl.evaluation.summaries import at_chosen, usable_runs
from medtl.training import schema as S

# Nemenyi critical values q_0.05 (studentized range / sqrt 2) for k = 2..10 arms (Demšar 2006).
_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


@dataclass(frozen=True)
class Ranks:
    """Average ranks of the arms over the (task, arch) cells (1 = best) and the Nemenyi CD.

    `cliques` are the (lowest, highest) average ranks of each maximal run of arms closer than the
    CD, in rank order: the bars a critical-difference diagram draws.
    """

    arms: tuple[str, ...]
    average: tuple[float, ...]
    n_cells: int
    cd: float | None
    note: str | None = None
    cliques: tuple[tuple[float, float], ...] = ()


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
    average = tuple(float(ranks[a]) for a in arms)
    return Ranks(arms, average, n, cd, cliques=_cliques(sorted(average), cd))


def _cliques(order: list[float], cd: float) -> tuple[tuple[float, float], ...]:
    out = []
    for i in range(len(order)):
        j = max(j for j in range(i, len(order)) if order[j] - order[i] <= cd)
        if j > i and (i == 0 or order[j] - order[i - 1] > cd):
            out.append((order[i], order[j]))
    return tuple(out)


def study_ranks(runs: pd.DataFrame, chosen: pd.DataFrame) -> Ranks:
    """Average ranks of the main arms on the mean test primary metric over full-data cells."""
    ok = usable_runs(runs)
    at = at_chosen(ok[ok["data_fraction"] == 1.0], chosen)
    if at.empty:
        return average_ranks(pd.DataFrame(), pd.Series(dtype=bool))
    metric = at["task"].map(lambda t: f"test_{primary_metric(t)[0]}")
    values = [at.at[i, m] for i, m in metric.items()]
    means = at.assign(v=np.asarray(values, float)).groupby(["task", "arch", "arm"])["v"].mean()
    table = means.unstack("arm")
    table = table[[a for a in S.arm_order(table.columns) if a in S.MAIN_ARMS]]
    higher = pd.Series([primary_metric(t)[1] for t, _ in table.index], index=table.index)
    return average_ranks(table, higher)
