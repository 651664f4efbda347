"""`lrs: {from_study: NAME}` resolved once: the finished study's selected learning rates, read from the tracking store."""

from __future__ import annotations

from pathlib import Path

from medtl.errors import UserError
from medtl.mlops.sweeps.study import LrSelection, Study, StudyError, load_study, lr_sources


def select_from_study(study: str, tracking_uri: str | None, path: Path) -> LrSelection:
    """The learning rate per (task, arch, arm) that a finished study's validation selected, at full data.

    The runs go through the evaluation's selection first (one run per grid point; a cell with several
    protocols is not used), then `stats.select_learning_rates`. The result names the protocol
    fingerprints of the runs it was selected from.

    Raises:
        StudyError: the study is not in the tracking store (the known ones listed), or unreadable.
    """
    from medtl.evaluation.collect import collect
    from medtl.evaluation.selection import select_runs
    from medtl.evaluation.stats import select_learning_rates

    try:
        runs = select_runs(collect(study, tracking_uri).runs, allow_mixed_pretrained=True).runs
    except UserError as exc:
        raise StudyError(f"{path}: lrs.from_study {study!r}: {exc}") from None
    full = runs[(runs["data_fraction"] == 1.0) & (runs["protocol"] == "")]
    if full.empty:
        return LrSelection(study, ())
    chosen = select_learning_rates(full)
    lrs = {(r["task"], r["arch"], r["arm"]): float(r["lr"]) for r in chosen.to_dict("records") if r["lr"] == r["lr"] and r["lr"] is not None}
    fingerprints = tuple(sorted(str(f) for f in full["fingerprint"].dropna().unique()))
    return LrSelection(study, fingerprints, lrs)


def resolve_study(path: str | Path, tracking_uri: str | None = None) -> Study:
    """Load a study file, reading the learning rates of each `from_study` source once.

    A file without `from_study` reads no tracking store.

    Raises:
        StudyError: an invalid file, an unknown source study, or a cell it selected no rate for.
    """
    path = Path(path)
    selections = {name: select_from_study(name, tracking_uri, path) for name in lr_sources(path)}
    return load_study(path, selections=selections)
