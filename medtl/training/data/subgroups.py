"""Subgroup attributes of samples: sex, projection, modality — the values loaders give, and a user's CSV columns.

A loader attaches attributes to its records (`generic.Record.attributes`); `assemble` turns them into
`SampleSet.attributes`, and the predictions table carries them as `subgroup_<name>` columns, which
evaluation breaks the primary metric down by. A user's CSV names its own with `subgroup_<name>`
columns. A subgroup has few values: a column that looks like an identifier (a value a row, or the
patient ids again) is refused, so no identifier reaches a predictions artifact through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from medtl.training import schema as S
from medtl.training.data.base import ATTRIBUTE_NAME, UNKNOWN, DataError

MAX_VALUES = 50
"""The most distinct values a user's subgroup column may hold (more is an identifier, or no subgroup)."""

UNIQUE_ROWS = 10
"""From this many rows on, a column with a distinct value in every row is refused as an identifier."""


def sex_label(male: float) -> str:
    """`male` (1.0) or `female` (0.0): the sex subgroup from a 0/1 `male` input."""
    return "male" if male >= 0.5 else "female"


def text(value: object) -> str:
    """A cell as an attribute value: stripped text as in the file, `UNKNOWN` for an empty cell or NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return UNKNOWN
    return str(value).strip()


def texts(values: Iterable[object]) -> list[str]:
    """`text` of each cell of a column."""
    return [text(v) for v in values]


def check_subgroup(name: str, values: Sequence[str], where: str, ids: Sequence[str] | None = None) -> None:
    """Refuse a user's subgroup column that is no subgroup: a bad name, too many values, or an identifier.

    Args:
        name: the attribute's name (the column without `subgroup_`).
        values: its value in every row (`UNKNOWN` where empty).
        where: the file, for the message.
        ids: the rows' patient ids, if the file has them: a column equal to them is refused.

    Raises:
        DataError: the name is not lower-case letters, digits and `_`; the column has more than
            `MAX_VALUES` distinct values, a distinct value in each of `UNIQUE_ROWS` or more rows,
            or the patient ids again.
    """
    column = f"{S.SUBGROUP_PREFIX}{name}"
    if not ATTRIBUTE_NAME.fullmatch(name):
        raise DataError(f"{where}: column {column!r}: a subgroup name is lower-case letters, digits and _ (a letter first)")
    known = [v for v in values if v != UNKNOWN]
    distinct = len(set(known))
    if distinct > MAX_VALUES or (len(values) >= UNIQUE_ROWS and distinct == len(values)):
        raise DataError(
            f"{where}: column {column!r} has {distinct} distinct values in {len(values)} rows; a subgroup has "
            f"at most {MAX_VALUES} and repeats them (an identifier must not be a subgroup)"
        )
    if ids is not None and len(values) > 1 and list(values) == [str(i).strip() for i in ids]:
        raise DataError(f"{where}: column {column!r} repeats patient_id; a patient identifier must not be a subgroup")


def csv_subgroups(columns: Mapping[str, Sequence[object]], where: str) -> dict[str, list[str]]:
    """The `subgroup_<name>` columns of a user's CSV as attribute name → value a row, each checked.

    Args:
        columns: the CSV's columns (name → cells), e.g. a DataFrame.
        where: the file, for messages.

    Raises:
        DataError: see `check_subgroup`.
    """
    ids = columns.get("patient_id")
    out = {}
    for column in columns:
        if not str(column).startswith(S.SUBGROUP_PREFIX):
            continue
        name = str(column).removeprefix(S.SUBGROUP_PREFIX)
        values = texts(columns[column])
        check_subgroup(name, values, where, None if ids is None else list(ids))
        out[name] = values
    return out
