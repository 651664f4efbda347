"""`make readme-figure`: put the demo's learning curves and headline table into the README.

Reads what `make sweep` wrote (`reports/<study>/`: summary.csv, comparisons.json, plots/), copies the
study's learning-curve plots — the report's own figures, drawn by `medtl evaluate` — to `docs/demo/`,
and rewrites the README's block between `<!-- demo-results:start -->` and `<!-- demo-results:end -->`
with those images and a table: per task and measure, each arm's mean ± std [95 % bootstrap interval over
seeds] at its selected learning rate, the difference domain − random with its interval, and the
Bonferroni-adjusted Mann–Whitney p of domain vs random (paper mode). Nothing is typed in by hand, so the
README shows what the last demo actually measured.

    python scripts/readme_figure.py [--report reports/demo] [--readme README.md] [--docs docs/demo]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

from medtl.atomic import write_atomic

START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"
ARMS = ("random", "imagenet", "domain")


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _value(row: object, column: str) -> float | None:
    value = getattr(row, column, None)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def headline_rows(report: Path) -> list[dict]:
    """Per (task, arch, measure): arm → (mean, std, n, ci_low, ci_high) at the selected lr, the difference
    domain − random with its interval, and domain-vs-random p values.

    Args:
        report: a `medtl evaluate` output folder.

    Raises:
        FileNotFoundError: the folder lacks summary.csv or comparisons.json.
    """
    import pandas as pd

    summary = pd.read_csv(report / "summary.csv").rename(columns={"group": "arm"})  # its published name
    records = json.loads((report / "comparisons.json").read_text())
    rows = []
    for rec in records:
        if rec.get("test") != "mannwhitneyu" or {rec.get("group_a"), rec.get("group_b")} != {"random", "domain"}:
            continue
        cell = summary[(summary["task"] == rec["task"]) & (summary["arch"] == rec["arch"]) & (summary["metric"] == rec["metric"])]
        arms = {}
        for arm, lr in ((rec["group_a"], rec.get("lr_a")), (rec["group_b"], rec.get("lr_b"))):
            sel = cell[cell["arm"] == arm]
            if lr is not None:
                sel = sel[(sel["lr"] - float(lr)).abs() < 1e-12]
            if len(sel):
                first = next(sel.itertuples(index=False))
                arms[arm] = (float(first.mean), float(first.std), int(first.n), _value(first, "ci_low"),
                             _value(first, "ci_high"))
        flip = -1.0 if rec["group_a"] == "random" else 1.0  # shown as domain − random
        diff = [None if rec.get(k) is None else flip * float(rec[k]) for k in ("mean_diff", "diff_ci_low", "diff_ci_high")]
        if flip < 0:
            diff[1], diff[2] = diff[2], diff[1]
        rows.append({"task": rec["task"], "arch": rec["arch"], "measure": rec["metric"], "arms": arms,
                     "difference": tuple(diff), "p_raw": rec.get("p_raw"), "p_adjusted": rec.get("p_adjusted")})
    return rows


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f" [{_num(low)}, {_num(high)}]"


def table(rows: list[dict]) -> str:
    """The headline rows as a Markdown table."""
    lines = ["| task | arch | measure | random | domain | domain − random | adjusted p (domain vs random) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for arm in ("random", "domain"):
            mean, std, n, low, high = row["arms"].get(arm, (math.nan, math.nan, 0, None, None))
            cells.append(f"{_num(mean)} ± {_num(std)}{_interval(low, high)} (n={n})")
        diff, low, high = row.get("difference", (None, None, None))
        shown = "–" if diff is None else f"{diff:+.3f}{_interval(low, high)}"
        p = row["p_adjusted"]
        lines.append(f"| {row['task']} | {row['arch']} | {row['measure']} | {cells[0]} | {cells[1]} | {shown} | "
                     f"{'–' if p is None else f'{p:.4f}'} |")
    return "\n".join(lines)


def curve_plots(report: Path) -> list[Path]:
    """The report's learning-curve figures: reduced-data curves where the study used them, else full-data ones."""
    plots = report / "plots"
    fractions = sorted(plots.glob("fractions_*.png"))
    return fractions or sorted(plots.glob("curves_*.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("reports/demo"), help="medtl evaluate output (default reports/demo)")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--docs", type=Path, default=Path("docs/demo"), help="where the figures go (default docs/demo)")
    args = parser.parse_args(argv)
    if not (args.report / "comparisons.json").is_file():
        print(f"readme-figure: no report in {args.report}; run `make sweep` first", file=sys.stderr)
        return 2
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"readme-figure: {args.readme} has no {START} ... {END} block to fill", file=sys.stderr)
        return 2
    rows = headline_rows(args.report)
    plots = curve_plots(args.report)
    args.docs.mkdir(parents=True, exist_ok=True)
    for old in args.docs.glob("*.png"):
        old.unlink()
    images = []
    for plot in plots:
        shutil.copyfile(plot, args.docs / plot.name)
        rel = os.path.relpath(args.docs / plot.name, args.readme.parent)
        images.append(f"![{plot.stem}]({rel})")
    block = "\n".join([
        START,
        "<!-- written by `make readme-figure` from reports/demo; do not edit by hand -->",
        *images,
        "",
        table(rows),
        "",
        "Mean ± sample std [95 % percentile bootstrap interval over seeds, 2,000 resamples] at each arm's "
        "selected learning rate; the difference of the means with its interval; p: two-sided Mann–Whitney U, "
        "Bonferroni over the arm pairs compared (paper mode). Test primary metric: higher is better; "
        "epochs to convergence (the epoch of the lowest validation loss): lower is faster.",
        END,
    ])
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    write_atomic(args.readme, head + block + tail)
    print(f"readme-figure: {len(images)} figure(s) in {args.docs}, {len(rows)} table row(s) in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
