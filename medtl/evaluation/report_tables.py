"""The report's tables: results per task and comparisons formatted for reading, and their LaTeX form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from medtl.evaluation.formatting import missing, num
from medtl.evaluation.summaries import MetricResult, ResultsTable

if TYPE_CHECKING:
    from medtl.evaluation.analysis import Analysis


def _pm(metric: MetricResult) -> str:
    return "–" if not metric.n else f"{num(metric.mean)} ± {num(metric.std)}"


def results_frame(table: ResultsTable) -> pd.DataFrame:
    """One task's results at each arm's selected lr: rows arch × arm, mean ± std per metric."""
    rows = []
    for r in table.rows:
        entry = {"arch": r.arch, "arm": r.arm, "lr": num(r.lr), "runs (ok/all)": f"{r.n_counted}/{r.n_runs}",
                 "diverged": r.n_diverged}
        for metric in r.metrics:
            entry[metric.metric.removeprefix("test_")] = _pm(metric)
        entry["best run"] = num(r.best_run_id)
        rows.append(entry)
    return pd.DataFrame(rows)


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
            "effect": effect, "note": r["note"] or "",
        })
    return pd.DataFrame(rows)


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
                rf"\caption{{{tex(task)}{tex(label)}: test metrics, mean $\pm$ sample std over runs at each arm's selected learning rate.}}",
                r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
                " & ".join(tex(c) for c in cols) + r" \\", r"\midrule"]
        out += [" & ".join(tex(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
        out += [r"\bottomrule", r"\end{tabular}", ""]
        recs = [r for r in records.get((fraction, task), []) if r["test"] != "levene"]
        if recs:
            p = comparisons_table(recs)[["arch", "metric", "test", "arms", "p adj."]]
            out += [r"\begin{tabular}{lllll}", r"\toprule",
                    r"arch & metric & test & arms & p (adjusted) \\", r"\midrule"]
            out += [" & ".join(tex(v) for v in row) + r" \\" for row in p.itertuples(index=False)]
            out += [r"\bottomrule", r"\end{tabular}"]
        out += [r"\end{table}", ""]
    return "\n".join(out)
