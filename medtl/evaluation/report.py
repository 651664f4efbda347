"""Study report: writes summary, comparisons, LaTeX, Markdown, HTML and plots atomically, from one Analysis.

Tables and their LaTeX form live in `report_tables`, Markdown / HTML rendering in `report_pages`,
figures in `plots`; everything here only renders the frozen `analysis.Analysis`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medtl.atomic import write_atomic
from medtl.evaluation.analysis import Analysis
from medtl.evaluation.drawing import Drawing, draw_all, for_figures
from medtl.evaluation.figures import RatingsFigure, ReliabilityFigure
from medtl.evaluation.formatting import num, published
from medtl.evaluation.links import run_url
from medtl.evaluation.reader_stats import RatingsResult
from medtl.evaluation.report_pages import RUN_ID_COLUMNS, Block, to_html, to_markdown
from medtl.evaluation.report_tables import (
    calibration_frame,
    comparisons_table,
    confusion_frame,
    latex_tables,
    results_frame,
    subgroup_frame,
)
from medtl.evaluation.selection import SET_ASIDE_COLUMNS
from medtl.evaluation.uncertainty import LEVEL, METHOD, RESAMPLES, SEED

__all__ = ["RUN_ID_COLUMNS", "render", "report_blocks"]


def render(
    analysis: Analysis,
    out: str | Path,
    *,
    figures: bool = True,
    ui_url: str | None = None,
    drawing: Drawing | None = None,
) -> dict[str, Path]:
    """Write every report file of an analysed study into `out` (created if missing).

    Files: summary.csv, comparisons.json / .csv and lr_selection.csv (the main mode),
    set_aside.csv (the runs left out as duplicates of a grid point, and why), tables.tex,
    calibration.csv (when predictions were read), report.md, a self-contained report.html (plots
    embedded) and plots/*.png; with ratings, reader_ratings.json. A second mode appears as a further section of report.md / report.html.
    The report opens with one verdict line per (task, arch).

    Args:
        analysis: the study's `Analysis`.
        out: the output folder.
        figures: draw the figures (False: tables and text only, much faster).
        ui_url: the MLflow UI's address; run ids in the report link to the run's page there.
        drawing: the drawing processes to use (default: started here when worthwhile).

    Returns:
        File name → path of everything written.
    """
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    main = analysis.main
    own = for_figures(analysis.figures) if figures and drawing is None else None
    drawing = drawing or own
    written: dict[str, Path] = {}

    def put(name: str, payload: bytes | str) -> None:
        write_atomic(out / name, payload)
        written[name] = out / name

    try:
        if figures and drawing is not None:
            drawing.submit(analysis.figures)  # drawn while the tables are written
        put("summary.csv", published(analysis.summary).to_csv(index=False))
        put("comparisons.json", json.dumps(main.records(), indent=1, allow_nan=False) + "\n")
        put("comparisons.csv", main.frame().to_csv(index=False))
        put("lr_selection.csv", published(analysis.lr_selection).to_csv(index=False))
        put("set_aside.csv", published(analysis.selection.set_aside.loc[:, list(SET_ASIDE_COLUMNS)]).to_csv(index=False))
        put("tables.tex", latex_tables(analysis))
        if analysis.diagnostics.read:
            put("calibration.csv", analysis.diagnostics.runs.to_csv(index=False))
        pngs = draw_all(analysis.figures, drawing) if figures else {}
    finally:
        if own is not None:
            own.close()
    for name, png in pngs.items():
        put(f"plots/{name}", png)
    for stale in (out / "plots").glob("*.png"):
        if stale.name not in pngs:
            stale.unlink()
    blocks = report_blocks(analysis, pngs)
    if analysis.ratings is not None:
        put("reader_ratings.json", json.dumps(analysis.ratings.summary, indent=1, default=str) + "\n")
    link = None
    if ui_url:
        experiment_id = analysis.experiment_id
        link = lambda run_id: run_url(ui_url, experiment_id, run_id)  # noqa: E731
    put("report.md", to_markdown(blocks, link))
    put("report.html", to_html(blocks, pngs, title=f"medtl study {analysis.study}", link=link))
    return written


# ---------------------------------------------------------------- content


def ratings_blocks(ratings: RatingsResult, figure: bool) -> list[Block]:
    """The reader-study section: ratings per arm and rater, Kruskal–Wallis and pairwise tests."""
    blocks: list[Block] = [
        ("h", 2, "Reader study: blinded Grad-CAM ratings"),
        ("p", "Scores 1 (irrelevant areas) to 5 (solely the relevant regions); raters blinded to the arm."),
    ]
    if figure:
        blocks.append(("img", "reader_ratings.png"))
    for model in ratings.summary.get("models", []):
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


def diagnostics_blocks(analysis: Analysis, figures: dict[str, bytes]) -> list[Block]:
    """Calibration of the classification arms (with reliability diagrams) and the failure analysis:
    confusion matrices and the primary metric per subgroup, at full training data."""
    d = analysis.diagnostics
    if not d.read:
        return [("h", 2, "Calibration and failure analysis"), *(("p", n) for n in d.notes)]
    blocks: list[Block] = [("h", 2, "Calibration (classification, full training data)")]
    if not d.calibration:
        blocks.append(("p", "No classification run at full training data."))
    else:
        blocks.append(("p", "ECE over 10 equal-mass bins and Brier score of each run's test predictions — the run's "
                            "own test_ece / test_brier when it logged them, else recomputed from its "
                            "predictions/test.csv — as mean ± sd [interval] over the seeds at each arm's selected "
                            "learning rate (per run: calibration.csv). Reliability diagram per cell: one curve per arm, its best run "
                            "(the one `medtl promote` picks), observed frequency per bin with its 95 % "
                            "Clopper–Pearson interval; one run, because the seeds predict the same test images."))
        for task in sorted({a.task for a in d.calibration}):
            blocks += [("h", 3, task), ("table", calibration_frame([a for a in d.calibration if a.task == task]))]
            blocks += [("img", f.name) for f in analysis.figures
                       if isinstance(f, ReliabilityFigure) and f.task == task and f.name in figures]
        if d.unknown:
            reasons = "; ".join(f"{why} ({n})" for why, n in d.unknown)
            blocks.append(("p", f"Calibration unknown for {sum(n for _, n in d.unknown)} run(s), named in the table "
                                f"above and, each with its reason, in calibration.csv: {reasons}."))
    blocks.append(("h", 2, "Failure analysis (full training data)"))
    if d.confusions:
        blocks.append(("h", 3, "Confusion matrices (counts summed over each arm's seeds at its selected lr)"))
        for task, arch in sorted({(m.task, m.arch) for m in d.confusions}):
            blocks += [("h", 4, f"{task} / {arch}"),
                       ("table", confusion_frame([m for m in d.confusions if (m.task, m.arch) == (task, arch)]))]
    if d.subgroups:
        blocks.append(("h", 3, "Primary metric per subgroup (each run on the subgroup's test samples; mean over seeds "
                               "[interval])"))
        for task in sorted({r.task for r in d.subgroups}):
            blocks += [("h", 4, task), ("table", subgroup_frame([r for r in d.subgroups if r.task == task]))]
    blocks += [("p", note) for note in d.notes]
    return blocks


def report_blocks(analysis: Analysis, figures: dict[str, bytes]) -> list[Block]:
    """The report's content as blocks: ("h", level, text), ("p", text), ("table", df), ("img", name).

    It leads with the answer: one verdict line per (task, arch) cell, then the detail. `figures`
    are the drawn figures (file name → PNG); the report shows those only.
    """
    main, counts, selection = analysis.main, analysis.counts, analysis.selection
    policy = ("diverged runs excluded (--exclude-diverged)" if main.exclude_diverged
              else "diverged runs counted at their best checkpoint")
    blocks: list[Block] = [
        ("h", 1, f"Study {analysis.study}"),
        ("h", 2, "Verdict"),
        *(("p", v.text) for v in analysis.verdicts),
        ("p", f"Tracking store {analysis.tracking_uri}, experiment medtl/{analysis.study} (id {analysis.experiment_id}); "
              f"generated {analysis.generated:%Y-%m-%d %H:%M:%S} UTC."),
        ("p", f"{counts.n_runs} fine-tuning runs counted, one per grid point: {counts.n_finished} finished "
              f"({counts.n_diverged} of them diverged), {counts.n_failed} failed or killed; "
              f"{counts.n_unknown_task} of an unknown task left out; "
              f"{counts.n_set_aside} duplicate run(s) of a grid point set aside (listed in set_aside.csv). "
              f"Statistics use finished runs, {policy}; mode {main.mode}"
              f"{', every learning rate' if main.per_lr else ', each arm at its best mean validation learning rate'}."),
    ]
    split = selection.protocols[selection.protocols["protocol"] != ""]
    if len(split):
        blocks.append(("p", "Cells with several protocols are reported separately, never pooled; the "
                            "architecture is labelled with the parameters that differ: "
                            + "; ".join(sorted(set(split["arch"]))) + "."))
    blocks += [("p", note) for note in selection.notes]
    blocks.append(("p", f"Every arm mean and every difference between two arms carries its {LEVEL:.0%} interval in "
                        f"brackets ({METHOD}, {RESAMPLES:,} resamples, seed {SEED}); an arm with fewer than 2 seeds "
                        "has none (\"no interval\"), never one of zero width. Tables: mean ± sample sd [interval]."))
    blocks.append(("h", 2, "Results on the test set"))
    for table in analysis.results:
        label = "" if table.data_fraction == 1.0 else f", {table.data_fraction:.0%} of the training data"
        blocks += [("h", 3, f"{table.task}{label}"), ("table", results_frame(table))]
    blocks += diagnostics_blocks(analysis, figures)
    for comparisons in analysis.comparisons:
        title = f"Comparisons ({comparisons.mode})" if comparisons is main else f"Comparisons in {comparisons.mode} mode (second analysis)"
        blocks.append(("h", 2, title))
        tables = comparisons.tables()
        if not tables:
            blocks.append(("p", "No comparisons: no runs of a known task."))
        for fraction, task, records in tables:
            label = "" if fraction == 1.0 else f", {fraction:.0%} of the training data"
            blocks += [("h", 3, f"{task}{label}"), ("table", comparisons_table(records))]
    sel = published(analysis.lr_selection)
    sel = sel.assign(lr=sel["lr"].map(num), mean_val=sel["mean_val"].map(num))
    blocks += [("h", 2, "Learning-rate selection (validation only)"), ("table", sel)]
    blocks.append(("h", 2, "Emissions"))
    for c in analysis.emissions:
        blocks.append(("p", f"Pearson r between {c.y} and {c.x}: {num(c.r, 3)} over {c.n} runs."))
    ranks = analysis.ranks
    blocks.append(("h", 2, "Average ranks of the arms"))
    if ranks.cd is None:
        blocks.append(("p", ranks.note or "undefined"))
    else:
        blocks.append(("p", f"Over {ranks.n_cells} (task, arch) cells, test primary metric, 1 = best; "
                            f"Nemenyi critical difference (α = 0.05) {ranks.cd:.3f}."))
        blocks.append(("table", pd.DataFrame({"arm": ranks.arms, "average rank": [num(a, 3) for a in ranks.average]})))
    study_figures = [f.name for f in analysis.figures
                     if f.name in figures and not isinstance(f, (RatingsFigure, ReliabilityFigure))]
    blocks.append(("h", 2, "Figures"))
    blocks += [("img", name) for name in study_figures]
    failed = analysis.failed
    blocks.append(("h", 2, f"Failed runs ({len(failed)})"))
    if len(failed):
        shown = published(failed.head(200))
        blocks.append(("table", shown.assign(failure_reason=shown["failure_reason"].fillna("").str.slice(0, 160))))
    if counts.n_set_aside:
        blocks.append(("h", 2, f"Runs set aside ({counts.n_set_aside})"))
        blocks.append(("p", "Each grid point (run_key) counts once: its latest FINISHED run, else its latest attempt."))
        aside = selection.set_aside
        shown = aside[["run_id", "task", "arch", "arm", "lr", "seed", "status", "kept_run_id"]].head(200)
        blocks.append(("table", published(shown)))
    if analysis.ratings is not None:
        drawn = any(isinstance(f, RatingsFigure) and f.name in figures for f in analysis.figures)
        blocks += ratings_blocks(analysis.ratings, drawn)
    return blocks
