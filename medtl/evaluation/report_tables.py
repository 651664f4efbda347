"""The report's tables: results per task and comparisons formatted for reading, and their LaTeX form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from medtl.evaluation.diagnostics import ArmCalibration, Confusion, SubgroupResult
from medtl.evaluation.formatting import interval, missing, num
from medtl.evaluation.summaries import MetricResult, ResultsTable

if TYPE_CHECKING:
    from medtl.evaluation.analysis import Analysis


def _pm(metric: MetricResult) -> str:
    """`mean ± sd [95 % interval]` over the arm's seeds."""
    if not metric.n:
        return "–"
    return f"{num(metric.mean)} ± {num(metric.std)} {interval(metric.ci.low, metric.ci.high, metric.ci.note, 3)}"


def results_frame(table: ResultsTable) -> pd.DataFrame:
    """One task's results at each arm's selected lr: rows arch × arm, mean ± std [95 % interval] per metric."""
    rows = []
    for r in table.rows:
        entry = {"arch": r.arch, "arm": r.arm, "lr": num(r.lr), "runs (ok/all)": f"{r.n_counted}/{r.n_runs}",
                 "diverged": r.n_diverged}
        for metric in r.metrics:
            entry[metric.metric.removeprefix("test_")] = _pm(metric)
        entry["best run"] = num(r.best_run_id)
        rows.append(entry)
    return pd.DataFrame(rows)


def _mean_sd_ci(mean: float | None, std: float | None, ci: Any, digits: int = 3) -> str:
    if mean is None:
        return "unknown"
    return f"{num(mean, digits)} ± {num(std, digits)} {interval(ci.low, ci.high, ci.note, digits)}"


def _listed(run_ids: Sequence[str], shown: int = 3) -> str:
    more = len(run_ids) - shown
    return ", ".join(r[:8] for r in run_ids[:shown]) + (f" and {more} more" if more > 0 else "")


def calibration_frame(arms: Sequence[ArmCalibration]) -> pd.DataFrame:
    """One task's calibration: rows arch × arm, ECE and Brier mean ± sd [95 % interval] over seeds."""
    return pd.DataFrame([{
        "arch": a.arch, "arm": a.arm, "lr": num(a.lr), "runs (known/all)": f"{a.n_known}/{a.n_runs}",
        "ECE": _mean_sd_ci(a.ece, a.ece_std, a.ece_ci), "Brier": _mean_sd_ci(a.brier, a.brier_std, a.brier_ci),
        "source": f"{a.n_from_metrics} logged, {a.n_recomputed} recomputed",
        "calibration unknown": _listed(a.unknown) or "–",
    } for a in arms])


def confusion_frame(matrices: Sequence[Confusion]) -> pd.DataFrame:
    """One cell's confusion matrices: rows arm × true class, columns the predicted classes (counts over seeds)."""
    rows = []
    for m in matrices:
        for i, true in enumerate(m.classes):
            rows.append({"arm": m.arm, "seeds": m.n_runs, "true class": true,
                         **{f"predicted {c}": int(m.counts[i, j]) for j, c in enumerate(m.classes)},
                         "recall": num(m.recall[i], 3)})
    return pd.DataFrame(rows)


def subgroup_frame(results: Sequence[SubgroupResult]) -> pd.DataFrame:
    """Per-subgroup primary metric: rows arch × arm × subgroup, mean over seeds [95 % interval]."""
    return pd.DataFrame([{
        "arch": r.arch, "arm": r.arm, "subgroup": f"{r.variable} = {r.value}", "samples": r.n_samples,
        "seeds": r.n_runs, r.metric: f"{num(r.mean, 3)} {interval(r.ci.low, r.ci.high, r.ci.note, 3)}",
    } for r in results])


def comparisons_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Comparison records (comparisons.json dicts) formatted for reading."""
    rows = []
    for r in records:
        arms = "all arms" if missing(r["group_b"]) else f"{r['group_a']} vs {r['group_b']}"
        lr = "" if missing(r["lr_a"]) or r["lr_a"] != r["lr_b"] else f" @ lr {num(r['lr_a'])}"
        effect = "" if missing(r["effect_size"]) else f"{r['effect_size_name']} = {num(r['effect_size'], 3)}"
        rows.append({
            "arch": r["arch"], "metric": r["metric"], "test": r["test"], "arms": arms + lr,
            "n": f"{r['n_a']}" if missing(r["n_b"]) else f"{r['n_a']}/{r['n_b']}",
            "statistic": num(r["statistic"]), "p raw": num(r["p_raw"], 3),
            "p adj.": num(r["p_adjusted"], 3), "omnibus sig.": num(r["omnibus_significant"]),
            "effect": effect, "difference [95% CI]": _difference(r), "note": r["note"] or "",
        })
    return pd.DataFrame(rows)


def _difference(record: dict[str, Any]) -> str:
    """mean_a − mean_b with its interval; empty for omnibus tests."""
    if missing(record.get("group_b")):
        return ""
    diff = "–" if missing(record.get("mean_diff")) else num(record["mean_diff"], 3)
    return f"{diff} {interval(record.get('diff_ci_low'), record.get('diff_ci_high'), record.get('diff_ci_note'), 3)}"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--"}


def tex(text: Any) -> str:
    """`text` with LaTeX's special characters escaped."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex_tables(analysis: Analysis) -> str:
    """Tables shaped like the paper's Tables 2–6: per task (and fraction), rows arch × arm with
    mean ± std of the test metrics and epochs at the selected lr, then the p values per arch."""
    records = {(fraction, task): recs for fraction, task, recs in analysis.main.tables()}
    out = ["% medtl evaluation tables; needs \\usepackage{booktabs}", ""]
    for results in analysis.results:
        table = results_frame(results).drop(columns=["best run"], errors="ignore")
        if table.empty:
            continue
        task, fraction = results.task, results.data_fraction
        label = "" if fraction == 1.0 else f", {fraction:.0%} of the training data"
        cols = list(table.columns)
        out += [r"\begin{table}[ht]", r"\centering",
                rf"\caption{{{tex(task)}{tex(label)}: test metrics, mean $\pm$ sample std [95\% percentile bootstrap interval over seeds] at each arm's selected learning rate.}}",
                r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
                " & ".join(tex(c) for c in cols) + r" \\", r"\midrule"]
        out += [" & ".join(tex(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
        out += [r"\bottomrule", r"\end{tabular}", ""]
        recs = [r for r in records.get((fraction, task), []) if r["test"] != "levene"]
        if recs:
            p = comparisons_table(recs)[["arch", "metric", "test", "arms", "p adj.", "difference [95% CI]"]]
            out += [r"\begin{tabular}{llllll}", r"\toprule",
                    r"arch & metric & test & arms & p (adjusted) & difference [95\% CI] \\", r"\midrule"]
            out += [" & ".join(tex(v) for v in row) + r" \\" for row in p.itertuples(index=False)]
            out += [r"\bottomrule", r"\end{tabular}"]
        out += [r"\end{table}", ""]
    return "\n".join(out)
