"""Study report: summary table, comparisons, Markdown / HTML / LaTeX and plots, written atomically."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtl.evaluation import plots
from medtl.evaluation.analysis import (
    Analysis,
    at_chosen,
    chosen_lrs,
    ratings_summary,
    study_ranks,
    summarize,
    task_metrics,
    usable_runs,
)
from medtl.evaluation.collect import StudyData
from medtl.evaluation.links import run_url
from medtl.evaluation.selection import (
    SET_ASIDE_COLUMNS,
    Selection,
    select_runs,
)
from medtl.evaluation.stats import primary_metric
from medtl.training.schema import arm_order

RUN_ID_COLUMNS = ("best run", "run_id", "kept_run_id")
"""Table columns whose cells are run ids (links to the MLflow UI when its address is known)."""
Block = tuple[Any, ...]


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        blocks.append(("p", f"Kruskal–Wallis across arms: H = {_num(kw.get('statistic'))}, p = {_num(kw.get('p'))}{note}"))
        if model.get("pairwise"):
            blocks.append(("table", pd.DataFrame(model["pairwise"])))
    return blocks


def _num(value: Any, digits: int = 4) -> str:
    if _missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


def _pm(row: pd.Series) -> str:
    return "–" if not row["n"] else f"{_num(row['mean'])} ± {_num(row['std'])}"


def results_table(summary: pd.DataFrame, chosen: pd.DataFrame, task: str, fraction: float) -> pd.DataFrame:
    """One task's results at each arm's selected lr: rows arch × arm, mean ± std per metric."""
    rows = at_chosen(summary[(summary["task"] == task) & (summary["data_fraction"] == fraction)], chosen)
    out = []
    for (arch, group), cell in rows.groupby(["arch", "group"], sort=False):
        by = cell.set_index("metric")
        first = cell.iloc[0]
        entry = {"arch": arch, "arm": group, "lr": _num(first["lr"]),
                 "runs (ok/all)": f"{int(by['n'].get('epochs_to_convergence', 0))}/{int(first['n_runs'])}",
                 "diverged": int(first["n_diverged"])}
        for metric in task_metrics(task)[:-2]:
            entry[metric.removeprefix("test_")] = _pm(by.loc[metric])
        entry["best run"] = _num(first["best_run_id"])
        out.append(entry)
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    order = {a: i for i, a in enumerate(arm_order(frame["arm"].unique()))}
    return frame.sort_values(["arch", "arm"], key=lambda s: s.map(order) if s.name == "arm" else s, kind="stable")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def comparisons_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Comparison records (comparisons.json dicts) formatted for reading."""
    rows = []
    for r in records:
        arms = "all arms" if _missing(r["group_b"]) else f"{r['group_a']} vs {r['group_b']}"
        lr = "" if _missing(r["lr_a"]) or r["lr_a"] != r["lr_b"] else f" @ lr {_num(r['lr_a'])}"
        effect = "" if _missing(r["effect_size"]) else f"{r['effect_size_name']} = {_num(r['effect_size'], 3)}"
        rows.append({
            "arch": r["arch"], "metric": r["metric"], "test": r["test"], "arms": arms + lr,
            "n": f"{r['n_a']}" if _missing(r["n_b"]) else f"{r['n_a']}/{r['n_b']}",
            "statistic": _num(r["statistic"]), "p raw": _num(r["p_raw"], 3),
            "p adj.": _num(r["p_adjusted"], 3), "omnibus sig.": _num(r["omnibus_significant"]),
            "effect": effect, "note": r["note"] or "",
        })
    return pd.DataFrame(rows)


def _records_of(analysis: Analysis, task: str, fraction: float) -> list[dict[str, Any]]:
    return [r for r in analysis.records() if r["task"] == task and r["data_fraction"] == fraction]


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
                           ("table", comparisons_table(_records_of(analysis, task, fraction)))]
    sel = main.selection()
    sel = sel.assign(lr=sel["lr"].map(_num), mean_val=sel["mean_val"].map(_num))
    blocks += [("h", 2, "Learning-rate selection (validation only)"), ("table", sel)]
    blocks.append(("h", 2, "Emissions"))
    ok = usable_runs(runs)
    for col in ("epochs_to_convergence", "epochs_run"):
        r, n = plots.pearson(ok[col].to_numpy(float), ok["emissions_kg"].to_numpy(float))
        blocks.append(("p", f"Pearson r between emissions_kg and {col}: {_num(r, 3)} over {n} runs."))
    ranks = study_ranks(runs, chosen)
    blocks.append(("h", 2, "Average ranks of the arms"))
    if ranks.cd is None:
        blocks.append(("p", ranks.note or "undefined"))
    else:
        blocks.append(("p", f"Over {ranks.n_cells} (task, arch) cells, test primary metric, 1 = best; "
                            f"Nemenyi critical difference (α = 0.05) {ranks.cd:.3f}."))
        blocks.append(("table", pd.DataFrame({"arm": ranks.arms, "average rank": [_num(a, 3) for a in ranks.average]})))
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


@dataclass(frozen=True)
class Verdict:
    """The answer for one (task, arch, fraction) cell: best arm on the primary metric and on epochs.

    `means` and `epochs` map each arm to its mean at its selected learning rate; `p_metric` and
    `p_epochs` map each other arm to the adjusted p of its pairwise test against the best arm.
    """

    task: str
    arch: str
    data_fraction: float
    metric: str
    higher_is_better: bool
    best: str | None
    means: dict[str, float]
    p_metric: dict[str, float | None]
    fastest: str | None
    epochs: dict[str, float]
    p_epochs: dict[str, float | None]
    alpha: float
    test: str

    @property
    def significant(self) -> bool:
        """Whether the best arm beats every other arm after correction."""
        ps = list(self.p_metric.values())
        return bool(ps) and all(p is not None and p < self.alpha for p in ps)

    @property
    def text(self) -> str:
        """One line: which arm is best on the metric and on epochs, and whether it is significant."""
        where = f"{self.task} / {self.arch}" + ("" if self.data_fraction == 1.0 else f" ({self.data_fraction:.0%} data)")
        if self.best is None:
            return f"{where}: no arm has a usable {self.metric} yet."
        tests = "Mann-Whitney U, Bonferroni" if self.test == "mannwhitneyu" else "permutation, Holm"
        return (f"{where}: {_lead(self.means, self.best)} on {self.metric} ({_means_text(self.means, self.best)})"
                f"{_sig_text(self.p_metric, self.alpha)}; fewest epochs to convergence: "
                f"{_lead(self.epochs, self.fastest, 'fastest')} ({_means_text(self.epochs, self.fastest)})"
                f"{_sig_text(self.p_epochs, self.alpha)} [{tests}].")


def _lead(means: dict[str, float], best: str | None, word: str = "best") -> str:
    """`domain is best`, or `tied: random, domain` when several arms share the best mean."""
    if best is None:
        return "no arm"
    tied = [a for a, m in means.items() if m == means[best]]
    return f"tied: {', '.join(tied)}" if len(tied) > 1 else (f"{best} is best" if word == "best" else best)


def _means_text(means: dict[str, float], first: str | None) -> str:
    order = [first, *[a for a in means if a != first]]
    return ", ".join(f"{a} {_num(means[a], 3)}" for a in order if a in means)


def _sig_text(ps: dict[str, float | None], alpha: float) -> str:
    if not ps:
        return ", no other arm to compare"
    untested = [a for a, p in ps.items() if p is None]
    ps = {a: p for a, p in ps.items() if p is not None}
    if not ps:
        return f", untested vs {', '.join(untested)} (test undefined)"
    sig = {a: p for a, p in ps.items() if p < alpha}
    rest = {a: p for a, p in ps.items() if a not in sig}
    listed = lambda arms: ", ".join(f"{a} {_num(p, 2)}" for a, p in arms.items())  # noqa: E731
    if untested:
        rest = {**rest, **{a: None for a in untested}}
    if not rest:
        return f", significant vs every other arm (p adj. {listed(sig)})"
    if not sig:
        return f", not significant (p adj. {listed(rest)})"
    return f", significant vs {', '.join(sig)} (p adj. {listed(sig)}), not vs {', '.join(rest)} (p adj. {listed(rest)})"


def verdicts(summary: pd.DataFrame, analysis: Analysis) -> list[Verdict]:
    """One Verdict per (task, arch, fraction) of the analysis, main arms at their selected lr.

    Arm means come from the summary (what the tables show); the p values are the analysis's
    pairwise tests (Mann–Whitney U with Bonferroni in paper mode, permutation with Holm in
    recommended mode) of the best arm against each other main arm.
    """
    chosen = chosen_lrs(analysis)
    rows = at_chosen(summary, chosen) if not summary.empty else summary
    records = analysis.records()
    pair_test = "mannwhitneyu" if analysis.mode == "paper" else "permutation"
    out = []
    for fraction, cs in analysis.sets:
        for task, arch in sorted({(r.task, r.arch) for r in cs.records}):
            metric, higher = primary_metric(task)
            cell = rows[(rows["task"] == task) & (rows["arch"] == arch) & (rows["data_fraction"] == fraction)
                        & rows["group"].isin(["random", "imagenet", "domain"])]
            means = _arm_means(cell, f"test_{metric}")
            epochs = _arm_means(cell, "epochs_to_convergence")
            best = _pick(means, higher)
            fastest = _pick(epochs, False)
            recs = [r for r in records if r["task"] == task and r["arch"] == arch and r["data_fraction"] == fraction
                    and r["test"] == pair_test]
            lrs = chosen[(chosen["task"] == task) & (chosen["arch"] == arch) & (chosen["data_fraction"] == fraction)]
            lr_of = dict(zip(lrs["group"], lrs["lr"].astype(float), strict=True)) if analysis.per_lr else {}
            out.append(Verdict(task, arch, float(fraction), metric, higher, best, means,
                               _pvalues(recs, f"test_{metric}", best, means, lr_of.get(best)),
                               fastest, epochs, _pvalues(recs, "epochs_to_convergence", fastest, epochs, lr_of.get(fastest)),
                               cs.alpha, pair_test))
    return out


def _arm_means(cell: pd.DataFrame, metric: str) -> dict[str, float]:
    values = cell[(cell["metric"] == metric) & (cell["n"] > 0)]
    means = {str(g): float(m) for g, m in zip(values["group"], values["mean"], strict=True) if math.isfinite(m)}
    return {a: means[a] for a in arm_order(list(means))}


def _pick(means: dict[str, float], higher: bool) -> str | None:
    if not means:
        return None
    return (max if higher else min)(means, key=lambda a: means[a])


def _pvalues(
    records: list[dict[str, Any]], metric: str, best: str | None, means: dict[str, float], lr: float | None
) -> dict[str, float | None]:
    """Adjusted p of best vs each other arm; `lr` (per-lr analyses) picks the best arm's selected lr."""
    out: dict[str, float | None] = {}
    for arm in means:
        if arm == best:
            continue
        hit = [r for r in records if r["metric"] == metric and {r["group_a"], r["group_b"]} == {best, arm}
               and (lr is None or r["lr_a"] == lr)]
        out[arm] = hit[0]["p_adjusted"] if hit else None
    return out


def to_markdown(blocks: Sequence[Block], link: Callable[[str], str] | None = None) -> str:
    """Render blocks as Markdown; figures link to plots/<name>, run ids to `link(run_id)` if given."""
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "img":
            lines += [f"![{block[1]}](plots/{block[1]})", ""]
        elif kind == "table":
            frame: pd.DataFrame = block[1]
            if frame.empty:
                lines += ["(none)", ""]
                continue
            cell = lambda v: _num(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            runs = [c in RUN_ID_COLUMNS for c in frame.columns]

            def shown(v: Any, is_run: bool, cell: Callable[[Any], str] = cell) -> str:
                text = cell(v)
                return f"[{text}]({link(text)})" if link and is_run and text != "–" else text

            lines.append("| " + " | ".join(map(str, frame.columns)) + " |")
            lines.append("|" + "---|" * len(frame.columns))
            lines += ["| " + " | ".join(shown(v, r) for v, r in zip(row, runs, strict=True)) + " |"
                      for row in frame.itertuples(index=False)]
            lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f3f3f3}"
    "img{max-width:100%;display:block;margin:1em 0}"
)


def to_html(
    blocks: Sequence[Block], figures: dict[str, bytes], title: str, link: Callable[[str], str] | None = None
) -> str:
    """Render blocks as one self-contained HTML page (figures as base64 PNG data URIs).

    Run ids in RUN_ID_COLUMNS link to `link(run_id)` (the MLflow UI) when given.
    """
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "img":
            data = base64.b64encode(figures[block[1]]).decode()
            parts.append(f"<img alt='{esc(block[1])}' src='data:image/png;base64,{data}'>")
        elif kind == "table":
            frame = block[1]
            if frame.empty:
                parts.append("<p>(none)</p>")
                continue
            head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
            runs = [c in RUN_ID_COLUMNS for c in frame.columns]

            def td(v: Any, is_run: bool) -> str:
                text = _num(v)
                if link and is_run and text != "–":
                    return f"<td><a href='{esc(link(text))}'>{esc(text)}</a></td>"
                return f"<td>{esc(text)}</td>"

            body = "".join(
                "<tr>" + "".join(td(v, r) for v, r in zip(row, runs, strict=True)) + "</tr>"
                for row in frame.itertuples(index=False)
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--"}


def _tex(text: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex_tables(summary: pd.DataFrame, analysis: Analysis) -> str:
    """Tables shaped like the paper's Tables 2–6: per task (and fraction), rows arch × arm with
    mean ± std of the test metrics and epochs at the selected lr, then the p values per arch."""
    chosen = chosen_lrs(analysis)
    out = ["% medtl evaluation tables; needs \\usepackage{booktabs}", ""]
    for fraction, _ in analysis.sets:
        for task in sorted(summary.loc[summary["data_fraction"] == fraction, "task"].unique()):
            table = results_table(summary, chosen, task, fraction).drop(columns=["best run"], errors="ignore")
            if table.empty:
                continue
            label = "" if fraction == 1.0 else f", {fraction:.0%} of the training data"
            cols = list(table.columns)
            out += [r"\begin{table}[ht]", r"\centering",
                    rf"\caption{{{_tex(task)}{_tex(label)}: test metrics, mean $\pm$ sample std over runs at each arm's selected learning rate.}}",
                    r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
                    " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
            out += [" & ".join(_tex(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
            out += [r"\bottomrule", r"\end{tabular}", ""]
            recs = [r for r in _records_of(analysis, task, fraction) if r["test"] != "levene"]
            if recs:
                p = comparisons_table(recs)[["arch", "metric", "test", "arms", "p adj."]]
                out += [r"\begin{tabular}{lllll}", r"\toprule",
                        r"arch & metric & test & arms & p (adjusted) \\", r"\midrule"]
                out += [" & ".join(_tex(v) for v in row) + r" \\" for row in p.itertuples(index=False)]
                out += [r"\bottomrule", r"\end{tabular}"]
            out += [r"\end{table}", ""]
    return "\n".join(out)


def finite(value: Any) -> float | None:
    """`value` as a float, or None when missing, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
