"""Which runs a study's statistics count: one run per grid point, one protocol per cell, one pretrained version.

`select_runs` turns `collect(...).runs` into the runs the report analyses and a record of what it
set aside and why:

- duplicates: for each `run_key` the latest FINISHED run counts (or, when none finished, the latest
  attempt); older copies — a re-run of `medtl run --study`, a sweep re-run that left an older
  FINISHED copy, earlier failed attempts — are set aside and listed;
- protocols: a (task, arch, fraction) cell whose runs carry several protocol fingerprints
  (`RunSpec.fingerprint`: an edited study file, another image size, another data folder) is split
  into one cell per fingerprint, its `arch` labelled with the parameters that differ, e.g.
  `resnet18 [max_epochs=50]` — never pooled;
- pretrained versions: a domain arm whose runs trained from several registered versions
  (param `init_resolved`) is refused unless `allow_mixed_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from medtl.errors import UserError

CELL = ("task", "arch", "data_fraction")
PROTOCOL_COLUMNS = (
    "dataset", "max_epochs", "patience", "batch_size", "image_size", "normalization", "optimizer", "data_digest",
)
"""The protocol fields a run row carries besides the cell keys, in the order labels name them."""
SET_ASIDE_COLUMNS = ("run_id", "run_key", "task", "arch", "arm", "lr", "seed", "status", "reason", "kept_run_id")


class MixedPretrainedError(UserError):
    """A domain arm was trained from several registered pretrained versions."""


@dataclass(frozen=True)
class Selection:
    """The runs to analyse and what was set aside.

    `runs` has the collected columns plus `protocol` (the label of a split cell, "" otherwise)
    and `base_arch` (the architecture without the label); `set_aside` one row per run left out
    (SET_ASIDE_COLUMNS); `protocols` one row per analysed cell with its fingerprint.
    """

    runs: pd.DataFrame
    set_aside: pd.DataFrame
    protocols: pd.DataFrame
    exclude_diverged: bool = False
    notes: tuple[str, ...] = ()

    @property
    def n_duplicates(self) -> int:
        return len(self.set_aside)


def validation_rank_key(value: float, val_loss: float, start_time: object, higher_is_better: bool) -> tuple:
    """Sort key, best run first: the validation metric (direction-aware), then the lower validation
    loss, then the earlier run. The one rule for "best run" (report summaries, promotion, Grad-CAM).

    Args:
        value: the run's `best_val_<primary>`.
        val_loss: its `best_val_loss` (inf when missing).
        start_time: its start (any orderable value: ms since the epoch, a timestamp).
        higher_is_better: the metric's direction.
    """
    return (-value if higher_is_better else value, val_loss, start_time)


def select_runs(
    runs: pd.DataFrame, *, exclude_diverged: bool = False, allow_mixed_pretrained: bool = False
) -> Selection:
    """One run per grid point, cells split by protocol, pretrained versions checked.

    Args:
        runs: `collect(...).runs`.
        exclude_diverged: recorded for the report (the statistics apply it; see `stats.compare`).
        allow_mixed_pretrained: compare a domain arm built from several pretrained versions
            (noted in the report) instead of refusing.

    Returns:
        Selection.

    Raises:
        MixedPretrainedError: a domain arm of one cell holds runs from several pretrained
            versions and `allow_mixed_pretrained` is False.
    """
    frame = runs.copy()
    if "data_fraction" in frame:
        frame["data_fraction"] = frame["data_fraction"].fillna(1.0)
    for column in ("fingerprint", "init_resolved", "run_key", *PROTOCOL_COLUMNS):
        if column not in frame:
            frame[column] = pd.Series(pd.NA, index=frame.index, dtype="string")
    kept, set_aside = _one_per_point(frame)
    kept = _label_protocols(kept)
    labels = kept.set_index("run_id")["arch"]
    set_aside["arch"] = set_aside["kept_run_id"].map(labels).fillna(set_aside["arch"])
    notes = _check_pretrained(kept, allow_mixed_pretrained)
    protocols = (
        kept.dropna(subset=["fingerprint"])
        .groupby([*CELL, "protocol", "fingerprint"], dropna=False).size().rename("n_runs").reset_index()
    )
    out = set_aside.loc[:, [*SET_ASIDE_COLUMNS, "data_fraction"]].reset_index(drop=True)
    return Selection(kept.reset_index(drop=True), out, protocols, exclude_diverged, tuple(notes))


def _one_per_point(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep, per run_key, the latest FINISHED run (else the latest attempt); list the others."""
    order = frame.assign(
        _finished=frame["status"] == "FINISHED",
        _start=frame.get("start_time", 0),
        _end=frame.get("end_time", 0),
    ).sort_values(["_finished", "_start", "_end", "run_id"], na_position="first", kind="stable")
    keyed = order[order["run_key"].notna()]
    winners = keyed.groupby("run_key", sort=False).tail(1)
    kept_ids = set(winners["run_id"]) | set(order.loc[order["run_key"].isna(), "run_id"])
    kept = frame[frame["run_id"].isin(kept_ids)].copy()
    losers = keyed[~keyed["run_id"].isin(kept_ids)].copy()
    winner_of = winners.set_index("run_key")
    losers["kept_run_id"] = losers["run_key"].map(winner_of["run_id"])
    kept_status = losers["run_key"].map(winner_of["status"])
    losers["reason"] = [
        f"duplicate of grid point {key}: older {status} run; counted instead: {winner} ({wstatus})"
        for key, status, winner, wstatus in zip(losers["run_key"], losers["status"], losers["kept_run_id"],
                                                kept_status, strict=True)
    ]
    return kept, losers.drop(columns=["_finished", "_start", "_end"])


def _label_protocols(kept: pd.DataFrame) -> pd.DataFrame:
    """Split cells with several fingerprints: label `arch` with the differing parameters."""
    kept["base_arch"] = kept["arch"]
    kept["protocol"] = ""
    for _, cell in kept.groupby(list(CELL), dropna=False, sort=True):
        prints = cell["fingerprint"].dropna().unique()
        if len(prints) < 2:
            continue
        labels = _labels(cell, list(prints))
        for fp, label in labels.items():
            idx = cell.index[cell["fingerprint"] == fp]
            kept.loc[idx, "protocol"] = label
        unknown = cell.index[cell["fingerprint"].isna()]
        kept.loc[unknown, "protocol"] = "protocol unknown"
        idx = cell.index
        kept.loc[idx, "arch"] = [f"{a} [{p}]" for a, p in zip(kept.loc[idx, "base_arch"], kept.loc[idx, "protocol"],
                                                            strict=True)]
    return kept


def _labels(cell: pd.DataFrame, prints: list[str]) -> dict[str, str]:
    values = {fp: cell[cell["fingerprint"] == fp].iloc[0] for fp in prints}
    differing = [c for c in PROTOCOL_COLUMNS if len({_show(values[fp][c]) for fp in prints}) > 1]
    out = {}
    for fp in prints:
        parts = [f"{'data' if c == 'data_digest' else c}={_show(values[fp][c], c)}" for c in differing]
        out[fp] = ", ".join(parts) if parts else f"fingerprint={fp[:8]}"
    if len(set(out.values())) < len(out):  # the shown fields agree: only the hash tells them apart
        out = {fp: f"{label}, fingerprint={fp[:8]}" for fp, label in out.items()}
    return out


def _show(value: object, column: str = "") -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "?"
    text = str(value)
    return text[:8] if column == "data_digest" else text


def _check_pretrained(kept: pd.DataFrame, allow: bool) -> list[str]:
    notes = []
    domain = kept[kept["arm"].astype(str).str.startswith("domain") & kept["init_resolved"].notna()]
    for (task, arch, fraction, arm), rows in domain.groupby([*CELL, "arm"], sort=True):
        counts = rows["init_resolved"].value_counts().sort_index()
        if len(counts) < 2:
            continue
        listed = ", ".join(f"{v}: {n} run(s)" for v, n in counts.items())
        where = f"{task} {arch}" + ("" if fraction == 1.0 else f" at fraction {fraction:g}")
        if not allow:
            raise MixedPretrainedError(
                f"arm '{arm}' of {where} was trained from {len(counts)} pretrained versions ({listed}); "
                "re-run those points from one version (a sweep pins the champion once per study) "
                "or pass --allow-mixed-pretrained to compare them anyway"
            )
        notes.append(f"arm '{arm}' of {where} pools {len(counts)} pretrained versions ({listed}), as asked")
    return notes
