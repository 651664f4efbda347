"""The report's tables: cell formatting, results per task and comparisons, and their LaTeX form."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medtl.evaluation.analysis import Analysis, at_chosen, chosen_lrs, task_metrics
from medtl.training.schema import arm_order


def num(value: Any, digits: int = 4) -> str:
    if missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


def missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _pm(row: pd.Series) -> str:
    return "–" if not row["n"] else f"{num(row['mean'])} ± {num(row['std'])}"


def results_table(summary: pd.DataFrame, chosen: pd.DataFrame, task: str, fraction: float) -> pd.DataFrame:
    """One task's results at each arm's selected lr: rows arch × arm, mean ± std per metric."""
    rows = at_chosen(summary[(summary["task"] == task) & (summary["data_fraction"] == fraction)], chosen)
    out = []
    for (arch, group), cell in rows.groupby(["arch", "group"], sort=False):
        by = cell.set_index("metric")
        first = cell.iloc[0]
        entry = {"arch": arch, "arm": group, "lr": num(first["lr"]),
                 "runs (ok/all)": f"{int(by['n'].get('epochs_to_convergence', 0))}/{int(first['n_runs'])}",
                 "diverged": int(first["n_diverged"])}
        for metric in task_metrics(task)[:-2]:
            entry[metric.removeprefix("test_")] = _pm(by.loc[metric])
        entry["best run"] = num(first["best_run_id"])
        out.append(entry)
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    order = {a: i for i, a in enumerate(arm_order(frame["arm"].unique()))}
    return frame.sort_values(["arch", "arm"], key=lambda s: s.map(order) if s.name == "arm" else s, kind="stable")


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


def records_of(analysis: Analysis, task: str, fraction: float) -> list[dict[str, Any]]:
    return [r for r in analysis.records() if r["task"] == task and r["data_fraction"] == fraction]


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$", "–": "--"}


def tex(text: Any) -> str:
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
                    rf"\caption{{{tex(task)}{tex(label)}: test metrics, mean $\pm$ sample std over runs at each arm's selected learning rate.}}",
                    r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
                    " & ".join(tex(c) for c in cols) + r" \\", r"\midrule"]
            out += [" & ".join(tex(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
            out += [r"\bottomrule", r"\end{tabular}", ""]
            recs = [r for r in records_of(analysis, task, fraction) if r["test"] != "levene"]
            if recs:
                p = comparisons_table(recs)[["arch", "metric", "test", "arms", "p adj."]]
                out += [r"\begin{tabular}{lllll}", r"\toprule",
                        r"arch & metric & test & arms & p (adjusted) \\", r"\midrule"]
                out += [" & ".join(tex(v) for v in row) + r" \\" for row in p.itertuples(index=False)]
                out += [r"\bottomrule", r"\end{tabular}"]
            out += [r"\end{table}", ""]
    return "\n".join(out)
