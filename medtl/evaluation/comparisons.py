"""One analysis mode's arm comparisons over a study's selected runs, one ComparisonSet per data fraction."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from medtl.evaluation.selection import Selection, select_runs
from medtl.evaluation.stats import RECORD_KEYS, ComparisonSet, compare
from medtl.evaluation.summaries import KEYS, known_task_runs

CELL_RECORD_KEYS = ("data_fraction", "fingerprint", "protocol", "n_duplicates_set_aside", "diverged_runs")
"""Keys comparisons.json adds to each stats record: the cell's fraction and protocol, how many
duplicate runs of the cell were set aside, and whether diverged runs were `counted` or `excluded`."""

_STATS_COLUMNS = (*KEYS, "seed", "status", "diverged", "epochs_to_convergence")


@dataclass(frozen=True)
class Comparisons:
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

    @property
    def fractions(self) -> tuple[float, ...]:
        """The compared training-data fractions, largest first."""
        return tuple(f for f, _ in self.sets)

    def tables(self) -> list[tuple[float, str, list[dict[str, Any]]]]:
        """The records grouped for display: (fraction, task, records) per fraction, tasks sorted."""
        records = self._records
        out = []
        for fraction in self.fractions:
            for task in sorted({r["task"] for r in records if r["data_fraction"] == fraction}):
                out.append((fraction, task, [dict(r) for r in records
                                             if r["task"] == task and r["data_fraction"] == fraction]))
        return out

    def frame(self) -> pd.DataFrame:
        """The records as a DataFrame."""
        return pd.DataFrame(self.records(), columns=[*RECORD_KEYS, *CELL_RECORD_KEYS])

    def selection(self) -> pd.DataFrame:
        """The learning rate each arm is compared at, per fraction."""
        frames = [cs.selection_frame().assign(data_fraction=f) for f, cs in self.sets]
        return pd.concat(frames, ignore_index=True)

    def chosen_lrs(self) -> pd.DataFrame:
        """The selected learning rates (task, arch, arm, data_fraction, lr), selectable ones only."""
        sel = self.selection()
        return sel.loc[sel["lr"].notna(), ["task", "arch", "arm", "data_fraction", "lr"]]


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


def compare_arms(
    runs: pd.DataFrame,
    mode: str = "paper",
    per_lr: bool = False,
    *,
    exclude_diverged: bool = False,
    allow_mixed_pretrained: bool = False,
    selection: Selection | None = None,
) -> Comparisons:
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
        Comparisons with one ComparisonSet per fraction; runs of unknown tasks are counted, not used.

    Raises:
        StatsError: on an unknown mode.
        MixedPretrainedError: several pretrained versions in one domain arm, not allowed.
    """
    if selection is None:
        selection = select_runs(runs, exclude_diverged=exclude_diverged, allow_mixed_pretrained=allow_mixed_pretrained)
    runs = selection.runs
    usable = known_task_runs(runs)
    needed = [c for c in usable.columns if c in _STATS_COLUMNS or c.startswith(("test_", "best_val_"))]
    usable = usable[needed].astype({c: object for c in ("task", "arch", "arm", "status")})
    fractions = sorted(usable["data_fraction"].unique(), reverse=True) or [1.0]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on constant arms; noted per record
        sets = tuple(
            (float(f), compare(usable[usable["data_fraction"] == f], mode, per_lr, exclude_diverged=exclude_diverged))
            for f in fractions
        )
    return Comparisons(mode, per_lr, sets, len(runs) - len(usable), selection, exclude_diverged)
