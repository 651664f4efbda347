"""Numeric settings read from the environment (`MEDTL_*_S` and friends), validated in one place."""

from __future__ import annotations

import math
import os

from medtl.errors import UserError


def env_number(name: str, default: float, *, whole: bool = False, value: str | None = None) -> float:
    """The number in `$name` (or `value` when given), `default` when unset or blank.

    Args:
        name: the environment variable, named in the error.
        default: the value when the variable is unset or blank.
        whole: require a whole number (returned as int).
        value: read this text instead of the environment.

    Raises:
        UserError: the text is not a (whole, finite) number.
    """
    raw = (os.environ.get(name, "") if value is None else value).strip()
    if not raw:
        return default
    try:
        number: float = int(raw) if whole else float(raw)
    except ValueError:
        raise UserError(f"{name} must be {'a whole number' if whole else 'a number'}, got {raw!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {raw!r}")
    return number


def env_seconds(name: str, default: float, *, value: str | None = None) -> float:
    """A non-negative number of seconds from `$name` (or `value`); see `env_number`.

    Raises:
        UserError: not a finite number of seconds >= 0.
    """
    raw = os.environ.get(name, "") if value is None else value
    try:
        seconds = env_number(name, default, value=value)
    except UserError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        raise UserError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return seconds
