"""Study report: writes summary, comparisons, LaTeX, Markdown, HTML and plots atomically, from blocks.

Tables and their LaTeX form live in `report_tables`, Markdown / HTML rendering in `report_pages`,
the verdict lines in `verdicts`; everything here only renders frozen results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medtl.atomic import write_atomic
from medtl.evaluation import plots
from medtl.evaluation.analysis import (
    Analysis,
    chosen_lrs,
    ratings_summary,
    study_ranks,
    summarize,
    usable_runs,
)
from medtl.evaluation.collect import StudyData
from medtl.evaluation.links import run_url
from medtl.evaluation.report_pages import RUN_ID_COLUMNS, Block, to_html, to_markdown
from medtl.evaluation.report_tables import (
    comparisons_table,
    latex_tables,
    num,
    records_of,
    results_table,
)
from medtl.evaluation.selection import SET_ASIDE_COLUMNS, Selection, select_runs
from medtl.evaluation.verdicts import verdicts

__all__ = ["RUN_ID_COLUMNS", "render", "report_blocks"]


def render(
    data: StudyData,
    analyses: Sequence[Analysis],
    out: str | Path,
    *,
    figures: bool = True,
    ratings: pd.DataFrame | None = None,
    ui_url: str | None = None,
) -> dict[str, Path]:
    """Write every report file of a study into `out` (created if missing).

    Files: summary.csv, comparisons.json / .csv and lr_selection.csv (the first analysis),
    set_aside.csv (the runs left out as duplicates of a grid point, and why), tables.tex,
    report.md, a self-contained report.html (plots embedded) and plots/*.png. Other analyses
    appear as further sections of report.md / report.html. The report opens with one verdict
    line per (task, arch).

    Args:
        data: the collected study.
        analyses: one or more Analysis; the first is the main one.
        out: the output folder.
        figures: draw the plots (False: tables and text only, much faster).
        ratings: imported reader-study ratings (`reader_ratings.collect_ratings`), if any: a section
            with ratings per arm and rater (the paper's Figure 9) and the arms compared.
        ui_url: the MLflow UI's address; run ids in the report link to the run's page there.

    Returns:
        File name → path of everything written.
    """
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    main = analyses[0]
    selection = main.chosen_runs or select_runs(data.runs, allow_mixed_pretrained=True)
    data = replace(data, runs=selection.runs)
    summary = summarize(data.runs, main.exclude_diverged)
    chosen = chosen_lrs(main)
    drawn = data.runs
    if main.exclude_diverged:
        drawn = drawn[~((drawn["status"] == "FINISHED") & drawn["diverged"])]
    pngs = plots.study_figures(drawn, data.histories, chosen) if figures else {}
    written: dict[str, Path] = {}

    def put(name: str, payload: bytes | str) -> None:
        write_atomic(out / name, payload)
        written[name] = out / name

    put("summary.csv", summary.to_csv(index=False))
    put("comparisons.json", json.dumps(main.records(), indent=1, allow_nan=False) + "\n")
    put("comparisons.csv", main.frame().to_csv(index=False))
    put("lr_selection.csv", main.selection().to_csv(index=False))
    put("set_aside.csv", selection.set_aside.loc[:, list(SET_ASIDE_COLUMNS)].to_csv(index=False))
    put("tables.tex", latex_tables(summary, main))
    for name, png in pngs.items():
        put(f"plots/{name}", png)
    for stale in (out / "plots").glob("*.png"):
        if stale.name not in pngs:
            stale.unlink()
    blocks = report_blocks(data, summary, analyses, pngs, selection)
    if ratings is not None and not ratings.empty:
        from medtl.evaluation.ratings import ratings_figure

        pngs["reader_ratings.png"] = ratings_figure(ratings) if figures else b""
        if figures:
            put("plots/reader_ratings.png", pngs["reader_ratings.png"])
        rating_summary = ratings_summary(ratings)
        put("reader_ratings.json", json.dumps(rating_summary, indent=1, default=str) + "\n")
        blocks = [*blocks, *ratings_blocks(rating_summary, figures)]
    link = None
    if ui_url:
        experiment_id = data.experiment_id
        link = lambda run_id: run_url(ui_url, experiment_id, run_id)  # noqa: E731
    put("report.md", to_markdown(blocks, link))
    put("report.html", to_html(blocks, pngs, title=f"medtl study {data.study}", link=link))
    return written


# ---------------------------------------------------------------- content


def ratings_blocks(summary: dict[str, Any], figure: bool) -> list[Block]:
    """The reader-study section: ratings per arm and rater, Kruskal–Wallis and pairwise tests."""
    blocks: list[Block] = [
        ("h", 2, "Reader study: blinded Grad-CAM ratings"),
        ("p", "Scores 1 (irrelevant areas) to 5 (solely the relevant regions); raters blinded to the arm."),
    ]
    if figure:
        blocks.append(("img", "reader_ratings.png"))
    for model in summary.get("models", []):
        title = " ".join(str(x) for x in (model.get("task"), model.get("arch")) if x is not None) or "all ratings"
        blocks.append(("h", 3, title))
        rows = [*model["per_arm_rater"], *({**r, "rater": "all"} for r in model["per_arm"])]
        blocks.append(("table", pd.DataFrame(rows)[["arm", "rater", "n", "mean", "median", "std"]]))
        kw = model["kruskal"]
        note = f" ({kw['note']})" if kw.get("note") else ""
        blocks.append(("p", f"Kruskal–Wallis across arms: H = {num(kw.get('statistic'))}, p = {num(kw.get('p'))}{note}"))
        if model.get("pairwise"):
            blocks.append(("table", pd.DataFrame(model["pairwise"])))
    return blocks


def report_blocks(
    data: StudyData,
    summary: pd.DataFrame,
    analyses: Sequence[Analysis],
    figures: dict[str, bytes],
    selection: Selection | None = None,
) -> list[Block]:
    """The report's content as blocks: ("h", level, text), ("p", text), ("table", df), ("img", name).

    It leads with the answer: one verdict line per (task, arch) cell, then the detail.
    """
    runs, main = data.runs, analyses[0]
    selection = selection or main.chosen_runs
    chosen = chosen_lrs(main)
    finished = int((runs["status"] == "FINISHED").sum())
    diverged = int(((runs["status"] == "FINISHED") & runs["diverged"]).sum())
    policy = ("diverged runs excluded (--exclude-diverged)" if main.exclude_diverged
              else "diverged runs counted at their best checkpoint")
    n_aside = 0 if selection is None else selection.n_duplicates
    blocks: list[Block] = [
        ("h", 1, f"Study {data.study}"),
        ("h", 2, "Verdict"),
        *(("p", v.text) for v in verdicts(summary, main)),
        ("p", f"Tracking store {data.tracking_uri}, experiment medtl/{data.study} (id {data.experiment_id}); "
              f"generated {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC."),
        ("p", f"{len(runs)} fine-tuning runs counted, one per grid point: {finished} finished ({diverged} of them "
              f"diverged), {len(runs) - finished} failed or killed; {main.skipped_runs} of an unknown task left out; "
              f"{n_aside} duplicate run(s) of a grid point set aside (listed in set_aside.csv). "
              f"Statistics use finished runs, {policy}; mode {main.mode}"
              f"{', every learning rate' if main.per_lr else ', each arm at its best mean validation learning rate'}."),
    ]
    if selection is not None:
        split = selection.protocols[selection.protocols["protocol"] != ""]
        if len(split):
            blocks.append(("p", "Cells with several protocols are reported separately, never pooled; the "
                                "architecture is labelled with the parameters that differ: "
                                + "; ".join(sorted(set(split["arch"]))) + "."))
        blocks += [("p", note) for note in selection.notes]
    blocks.append(("h", 2, "Results on the test set"))
    for fraction, _ in main.sets:
        for task in sorted(summary.loc[summary["data_fraction"] == fraction, "task"].unique()):
            label = "" if fraction == 1.0 else f", {fraction:.0%} of the training data"
            blocks += [("h", 3, f"{task}{label}"), ("table", results_table(summary, chosen, task, fraction))]
    for analysis in analyses:
        title = "Comparisons" if analysis is main else f"Comparisons in {analysis.mode} mode (second analysis)"
        blocks.append(("h", 2, f"{title} ({analysis.mode})"))
        records = analysis.records()
        if not records:
            blocks.append(("p", "No comparisons: no runs of a known task."))
        for fraction, _ in analysis.sets:
            for task in sorted({r["task"] for r in records if r["data_fraction"] == fraction}):
                label = "" if fraction == 1.0 else f", {fraction:.0%} of the training data"
                blocks += [("h", 3, f"{task}{label}"),
                           ("table", comparisons_table(records_of(analysis, task, fraction)))]
    sel = main.selection()
    sel = sel.assign(lr=sel["lr"].map(num), mean_val=sel["mean_val"].map(num))
    blocks += [("h", 2, "Learning-rate selection (validation only)"), ("table", sel)]
    blocks.append(("h", 2, "Emissions"))
    ok = usable_runs(runs)
    for col in ("epochs_to_convergence", "epochs_run"):
        r, n = plots.pearson(ok[col].to_numpy(float), ok["emissions_kg"].to_numpy(float))
        blocks.append(("p", f"Pearson r between emissions_kg and {col}: {num(r, 3)} over {n} runs."))
    ranks = study_ranks(runs, chosen)
    blocks.append(("h", 2, "Average ranks of the arms"))
    if ranks.cd is None:
        blocks.append(("p", ranks.note or "undefined"))
    else:
        blocks.append(("p", f"Over {ranks.n_cells} (task, arch) cells, test primary metric, 1 = best; "
                            f"Nemenyi critical difference (α = 0.05) {ranks.cd:.3f}."))
        blocks.append(("table", pd.DataFrame({"arm": ranks.arms, "average rank": [num(a, 3) for a in ranks.average]})))
    blocks.append(("h", 2, "Figures"))
    blocks += [("img", name) for name in figures]
    failed = runs[runs["failed"]]
    blocks.append(("h", 2, f"Failed runs ({len(failed)})"))
    if len(failed):
        shown = failed[["run_id", "task", "arch", "group", "lr", "seed", "status", "failure_reason"]].head(200)
        blocks.append(("table", shown.assign(failure_reason=shown["failure_reason"].fillna("").str.slice(0, 160))))
    if selection is not None and n_aside:
        blocks.append(("h", 2, f"Runs set aside ({n_aside})"))
        blocks.append(("p", "Each grid point (run_key) counts once: its latest FINISHED run, else its latest attempt."))
        aside = selection.set_aside
        blocks.append(("table", aside[["run_id", "task", "arch", "group", "lr", "seed", "status", "kept_run_id"]].head(200)))
    return blocks


def finite(value: Any) -> float | None:
    """`value` as a float, or None when missing, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
