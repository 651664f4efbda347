"""One analysis mode's arm comparisons over a study's selected runs, one ComparisonSet per data fraction."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from medtl.evaluation.selection import Selection, select_runs
from medtl.evaluation.stats import compare, lr_choices
from medtl.evaluation.stats_records import (
    INTERVAL_KEYS,
    LR_COLUMNS,
    RECORD_KEYS,
    ComparisonSet,
    LrChoice,
)
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
        """comparisons.json: the stats records (RECORD_KEYS), CELL_RECORD_KEYS, then INTERVAL_KEYS."""
        return [dict(r) for r in self._records]

    @cached_property
    def _records(self) -> tuple[dict[str, Any], ...]:
        cells = _cell_info(self.chosen_runs)
        out = []
        for f, cs in self.sets:
            for r in cs.to_records():
                fingerprint, protocol, duplicates = cells.get((r["task"], r["arch"], f), (None, "", 0))
                out.append({
                    **{k: r[k] for k in RECORD_KEYS},
                    "data_fraction": f,
                    "fingerprint": fingerprint,
                    "protocol": protocol,
                    "n_duplicates_set_aside": duplicates,
                    "diverged_runs": "excluded" if self.exclude_diverged else "counted",
                    **{k: r[k] for k in INTERVAL_KEYS},
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
        return pd.DataFrame(self.records(), columns=[*RECORD_KEYS, *CELL_RECORD_KEYS, *INTERVAL_KEYS])

    def selection(self) -> pd.DataFrame:
        """The learning rate each arm is compared at, per fraction."""
        frames = [cs.selection_frame().assign(data_fraction=f) for f, cs in self.sets]
        return pd.concat(frames, ignore_index=True)


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


LrChoices = tuple[tuple[float, tuple[LrChoice, ...]], ...]
"""The learning-rate choices of each training-data fraction, largest fraction first."""


def _by_fraction(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[float, pd.DataFrame]]]:
    """The known-task runs with the columns the statistics use, and their split by fraction (largest first)."""
    usable = known_task_runs(runs)
    needed = [c for c in usable.columns if c in _STATS_COLUMNS or c.startswith(("test_", "best_val_"))]
    usable = usable[needed].astype({c: object for c in ("task", "arch", "arm", "status")})
    fractions = sorted(usable["data_fraction"].unique(), reverse=True) or [1.0]
    return usable, [(float(f), usable[usable["data_fraction"] == f]) for f in fractions]


def choose_learning_rates(selection: Selection, exclude_diverged: bool = False) -> LrChoices:
    """Each arm's learning rate per fraction (best mean validation primary metric; `stats.lr_choices`)."""
    _, parts = _by_fraction(selection.runs)
    return tuple((f, lr_choices(part, exclude_diverged=exclude_diverged)) for f, part in parts)


def chosen_frame(choices: LrChoices) -> pd.DataFrame:
    """The selectable learning rates as rows (task, arch, arm, data_fraction, lr), fractions in `choices` order."""
    frames = [pd.DataFrame([dataclasses.asdict(c) for c in cs], columns=list(LR_COLUMNS)).assign(data_fraction=f)
              for f, cs in choices]
    sel = pd.concat(frames, ignore_index=True)
    return sel.loc[sel["lr"].notna(), ["task", "arch", "arm", "data_fraction", "lr"]]


def compare_arms(
    runs: pd.DataFrame,
    mode: str = "paper",
    per_lr: bool = False,
    *,
    exclude_diverged: bool = False,
    allow_mixed_pretrained: bool = False,
    selection: Selection | None = None,
    choices: LrChoices | None = None,
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
        choices: `choose_learning_rates(selection, exclude_diverged)` when already made.

    Returns:
        Comparisons with one ComparisonSet per fraction; runs of unknown tasks are counted, not used.

    Raises:
        StatsError: on an unknown mode.
        MixedPretrainedError: several pretrained versions in one domain arm, not allowed.
    """
    if selection is None:
        selection = select_runs(runs, exclude_diverged=exclude_diverged, allow_mixed_pretrained=allow_mixed_pretrained)
    usable, parts = _by_fraction(selection.runs)
    chosen = dict(choices) if choices is not None else {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on constant arms; noted per record
        sets = tuple(
            (f, compare(part, mode, per_lr, exclude_diverged=exclude_diverged, choices=chosen.get(f)))
            for f, part in parts
        )
    return Comparisons(mode, per_lr, sets, len(selection.runs) - len(usable), selection, exclude_diverged)
