"""report: every file built from the synthetic store; numbers, degenerate cells, self-contained HTML."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from medtl.evaluation.analysis import analyse
from medtl.evaluation.collect import collect
from medtl.evaluation.comparisons import CELL_RECORD_KEYS
from medtl.evaluation.figure_data import CURVE_EPOCHS
from medtl.evaluation.figures import CdFigure
from medtl.evaluation.formatting import PUBLISHED_NAMES
from medtl.evaluation.plots import cd_png
from medtl.evaluation.ranks import Ranks, average_ranks
from medtl.evaluation.report import render
from medtl.evaluation.stats import RECORD_KEYS
from medtl.evaluation.stats_records import INTERVAL_KEYS
from medtl.evaluation.summaries import SUMMARY_COLUMNS, summarize

from .conftest import STUDY

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(synthetic_store, tmp_path_factory):
    data = collect(STUDY, synthetic_store.uri, primary_only=True, max_step=CURVE_EPOCHS)
    analysis = analyse(data, "paper", second_mode=True)
    out = tmp_path_factory.mktemp("report")
    written = render(analysis, out)
    return data, analysis.comparisons, out, written


def test_all_files_written_and_nothing_half_written(built):
    _, _, out, written = built
    for name in ("summary.csv", "comparisons.json", "comparisons.csv", "lr_selection.csv",
                 "tables.tex", "report.md", "report.html", "plots/emissions.png", "plots/cd_diagram.png",
                 "plots/curves_demo-binary_resnet18.png", "plots/box_demo-regression_resnet18.png",
                 "plots/fractions_demo-binary_resnet18.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert len(pngs) == 4 * 2 + 3  # curves and box per cell, one fractions plot, emissions, cd
    assert all((out / "plots" / p).read_bytes().startswith(PNG) for p in pngs)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    assert set(written) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def test_comparisons_json_has_the_contract_fields(built):
    _, analyses, out, _ = built
    records = json.loads((out / "comparisons.json").read_text())
    assert records == json.loads(json.dumps(analyses[0].records()))
    assert {"task", "arch", "metric", "test", "group_a", "group_b", "n_a", "n_b", "statistic", "p_raw",
            "p_adjusted", "correction", "method", "omnibus_significant", "effect_size",
            "effect_size_name", "data_fraction"} <= set(records[0])
    tests = {r["test"] for r in records}
    assert tests == {"levene", "kruskal", "mannwhitneyu", "ttest"}
    assert {r["data_fraction"] for r in records} == {1.0, 0.25}
    csv = pd.read_csv(out / "comparisons.csv")
    # the published keys first, unchanged; the intervals after them
    assert list(csv.columns) == [*RECORD_KEYS, *CELL_RECORD_KEYS, *INTERVAL_KEYS] and len(csv) == len(records)
    assert list(records[0]) == [*RECORD_KEYS, *CELL_RECORD_KEYS, *INTERVAL_KEYS]


def test_degenerate_cells_are_noted_not_crashed(built):
    _, analyses, _, _ = built
    records = analyses[0].records()
    constant = [r for r in records if r["task"] == "demo-regression" and r["arch"] == "resnet18"
                and r["metric"] == "epochs_to_convergence" and r["test"] == "mannwhitneyu"
                and {r["group_a"], r["group_b"]} == {"imagenet", "random"}]
    assert constant and constant[0]["p_raw"] is not None
    diverged = [r for r in records if r["task"] == "demo-regression" and r["arch"] == "mobilenet_v3_small"
                and r["test"] == "kruskal"]
    assert any("diverged" in (r["note"] or "") for r in diverged)


def test_summary_numbers(built):
    data, _, out, _ = built
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == [PUBLISHED_NAMES.get(c, c) for c in SUMMARY_COLUMNS]  # the arm stays `group`
    runs = data.runs
    ok = runs[(runs["status"] == "FINISHED") & ~runs["diverged"]]
    cell = ok[(ok["task"] == "demo-binary") & (ok["arch"] == "resnet18") & (ok["arm"] == "imagenet")
              & (ok["lr"] == 1e-3) & (ok["data_fraction"] == 1.0)]
    row = summary[(summary["task"] == "demo-binary") & (summary["arch"] == "resnet18")
                  & (summary["group"] == "imagenet") & (summary["lr"] == 1e-3)
                  & (summary["data_fraction"] == 1.0) & (summary["metric"] == "test_f1")].iloc[0]
    values = cell["test_f1"].to_numpy()
    assert row["n"] == len(values) == 3
    assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(values.std(ddof=1))
    assert row["median"] == pytest.approx(np.median(values)) and row["max"] == pytest.approx(values.max())
    assert row["best_run_id"] == cell.loc[cell["best_val_f1"].idxmax(), "run_id"]
    failed = summary[(summary["task"] == "demo-binary") & (summary["arch"] == "resnet18")
                     & (summary["group"] == "random") & (summary["lr"] == 1e-3)
                     & (summary["metric"] == "test_f1") & (summary["data_fraction"] == 1.0)].iloc[0]
    assert (failed["n"], failed["n_runs"], failed["n_failed"]) == (2, 3, 1)
    regression = summary[summary["task"] == "demo-regression"]
    assert set(regression["metric"]) == {"test_mae", "test_rmse", "epochs_to_convergence", "emissions_kg",
                                         "energy_kwh", "duration_s"}
    best = regression[(regression["arch"] == "resnet18") & (regression["group"] == "random")
                      & (regression["lr"] == 1e-4)].iloc[0]
    mae = ok[(ok["task"] == "demo-regression") & (ok["arch"] == "resnet18") & (ok["arm"] == "random")
             & (ok["lr"] == 1e-4)]
    assert best["best_run_id"] == mae.loc[mae["best_val_mae"].idxmin(), "run_id"]  # lower is better


def test_html_is_self_contained(built):
    _, _, out, _ = built
    page = (out / "report.html").read_text()
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) == len(list((out / "plots").iterdir()))
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in page and "https://" not in page
    assert "Comparisons in recommended mode" in page and "Failed runs (2)" in page
    md = (out / "report.md").read_text()
    assert "](plots/cd_diagram.png)" in md and "## Average ranks of the arms" in md
    assert re.findall(r"^## Comparisons.*$", md, flags=re.M) == [
        "## Comparisons (paper)", "## Comparisons in recommended mode (second analysis)"]


def test_latex_tables_per_task(built):
    _, _, out, _ = built
    tex = (out / "tables.tex").read_text()
    assert tex.count(r"\begin{table}") == 3  # two tasks at full data, one reduced-data table
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 6
    assert r"mobilenet\_v3\_small" in tex and r"$\pm$" in tex and "mannwhitneyu" in tex


def test_tiny_study_with_one_run_renders(synthetic_store, tmp_path):
    data = collect("other", synthetic_store.uri, primary_only=True, max_step=CURVE_EPOCHS)
    analysis = analyse(data, "paper")
    render(analysis, tmp_path / "o")
    assert any("only one arm" in (r["note"] or "") for r in analysis.main.records())
    assert "critical-difference diagram needs" in (tmp_path / "o" / "report.md").read_text()
    assert not (tmp_path / "o" / "plots" / "cd_diagram.png").exists()


def test_empty_runs_table(tmp_path, synthetic_store):
    data = collect(STUDY, synthetic_store.uri, primary_only=True, max_step=1)
    empty = type(data)(data.study, data.tracking_uri, data.experiment_id, data.runs.iloc[0:0], data.histories.iloc[0:0])
    render(analyse(empty), tmp_path / "e", figures=False)
    assert summarize(empty.runs).empty
    assert json.loads((tmp_path / "e" / "comparisons.json").read_text()) == []


def test_average_ranks_and_cd():
    means = pd.DataFrame({"a": [0.9, 0.8, 10.0], "b": [0.5, 0.4, 12.0]})
    ranks = average_ranks(means, pd.Series([True, True, False]))
    assert ranks.average == (1.0, 2.0)
    assert ranks.cd == pytest.approx(1.960 * math.sqrt(2 * 3 / (6 * 3)))
    assert ranks.cliques == ((1.0, 2.0),)  # ranks 1 and 2 lie within the CD (1.13): one bar joins them
    figure = CdFigure("cd_diagram.png", ranks.arms, ranks.average, ranks.n_cells, ranks.cd, ranks.cliques)
    assert cd_png(figure).startswith(PNG)
    short = average_ranks(means.iloc[:1], pd.Series([True]))
    assert short.cd is None and "2+ complete cells" in (short.note or "")
    assert isinstance(short, Ranks)


def test_excluded_diverged_runs_leave_every_number_computed_once(synthetic_store):
    """One computation per number: with --exclude-diverged the emissions sentence, the emissions figure
    and the ranks all count the same runs (the diverged ones left out)."""
    from medtl.evaluation.figures import EmissionsFigure

    data = collect(STUDY, synthetic_store.uri, primary_only=True, max_step=CURVE_EPOCHS)
    excluded = analyse(data, "paper", exclude_diverged=True)
    counted = analyse(data, "paper")
    (figure,) = [f for f in excluded.figures if isinstance(f, EmissionsFigure)]
    assert figure.correlation == excluded.emissions[0]
    finished = data.runs[(data.runs["status"] == "FINISHED") & data.runs["emissions_kg"].notna()]
    assert counted.emissions[0].n == len(finished)
    assert excluded.emissions[0].n == len(finished) - len(synthetic_store.diverged)
