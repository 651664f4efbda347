"""Compute once, render only: the report's renderers import no statistics and call no aggregation.

Everything a report shows is in the frozen `analysis.Analysis`; `report`, `report_tables`,
`report_pages` and `plots` may select and format what it holds, never compute a number. Read from
the source, like tests/test_boundaries.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medtl.evaluation

EVALUATION = Path(medtl.evaluation.__file__).parent
RENDERERS = ("report.py", "report_tables.py", "report_pages.py", "plots.py", "drawing.py")
RENDER_HELPERS = {"medtl.evaluation.formatting", "medtl.evaluation.links", "medtl.atomic",
                  *(f"medtl.evaluation.{name.removesuffix('.py')}" for name in RENDERERS)}
NUMERIC_LIBRARIES = ("scipy", "sklearn", "statsmodels", "medtl.calibration")
AGGREGATIONS = {
    "groupby", "agg", "aggregate", "apply", "transform", "mean", "median", "std", "var", "sem", "quantile",
    "percentile", "nanmean", "nanstd", "nanmedian", "nanpercentile", "rank", "corr", "corrcoef", "cov",
    "merge", "pivot", "pivot_table", "unstack", "melt", "crosstab", "describe", "value_counts", "cumsum",
    "sum", "ptp", "bootstrap", "reliability_bins", "expected_calibration_error", "brier_score",
}


def violations(path: Path) -> list[str]:
    """What `path` does that a renderer may not: numeric libraries, functions from computing
    modules (only their types and constants may be imported), aggregating calls."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name.startswith(NUMERIC_LIBRARIES)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith(NUMERIC_LIBRARIES):
                found.append(f"imports {node.module}")
            elif node.module == "medtl.evaluation":  # a module: only the renderers and their helpers
                found += [f"imports medtl.evaluation.{a.name}" for a in node.names
                          if f"medtl.evaluation.{a.name}" not in RENDER_HELPERS]
            elif node.module.startswith("medtl.evaluation.") and node.module not in RENDER_HELPERS:
                found += [f"imports {node.module}.{a.name}" for a in node.names if a.name[:1].islower()]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in AGGREGATIONS:
            found.append(f"calls .{node.func.attr}()")
    return sorted(f"{path.name}: {v}" for v in found)


def test_the_reader_catches_computation(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from scipy import stats\nfrom medtl.evaluation.summaries import ArmResult, summarize\n"
        "from medtl.evaluation.formatting import num\nfrom medtl.evaluation import plots, stats\n"
        "def f(frame):\n    return frame.groupby('arm')['value'].mean(), num(1)\n"
    )
    assert violations(probe) == [
        "probe.py: calls .groupby()", "probe.py: calls .mean()", "probe.py: imports medtl.evaluation.stats",
        "probe.py: imports medtl.evaluation.summaries.summarize",
        "probe.py: imports scipy",
    ]


def test_renderers_compute_nothing():
    paths = [EVALUATION / name for name in RENDERERS]
    assert all(p.is_file() for p in paths)
    assert [v for p in paths for v in violations(p)] == []


ALLOWED_MEDTL = ("medtl.evaluation", "medtl.training.spec", "medtl.training.schema", "medtl.calibration",
                 "medtl.errors", "medtl.atomic", "medtl.redact")
"""What evaluation may import from medtl: itself, the pure spec and schema of training, the calibration
formulas the training recipe shares, and the small shared helpers (errors, atomic writes, URL masking)."""


def _medtl_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("medtl"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("medtl"):
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_evaluation_imports_only_the_pure_parts_of_medtl():
    paths = sorted(EVALUATION.glob("*.py"))
    assert len(paths) > 20
    offenders = sorted(
        f"{p.name}: {name}" for p in paths for name in _medtl_imports(p)
        if not name.startswith(ALLOWED_MEDTL)
    )
    assert offenders == []
