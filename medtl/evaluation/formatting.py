"""How evaluation writes one number or value in a table or a sentence (shared by results and renderers)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def missing(value: Any) -> bool:
    """Whether `value` is absent: None, pandas' NA or a float NaN."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 4) -> str:
    """A table cell: `digits` significant digits for floats, yes/no for booleans, "–" when missing."""
    if missing(value) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


PUBLISHED_NAMES = {"arm": "group"}
"""Column names of the published files that differ from the code's: summary.csv, lr_selection.csv,
set_aside.csv and the served summary name the arm `group`, as they always have (DESIGN.md's contract;
`comparisons.json` keeps `group_a`/`group_b` the same way)."""


def published(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its columns named as the published files name them (PUBLISHED_NAMES)."""
    return frame.rename(columns=PUBLISHED_NAMES)


def interval(low: Any, high: Any, note: Any = None, digits: int = 4) -> str:
    """An interval as `[low, high]`, or `[no interval: <why>]` when it has no bounds."""
    if missing(low) or missing(high):
        why = "" if missing(note) else str(note).replace(": no interval", "")
        return f"[no interval{': ' + why if why else ''}]"
    return f"[{num(float(low), digits)}, {num(float(high), digits)}]"
