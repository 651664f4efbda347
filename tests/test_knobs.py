"""Environment knobs: one reader, one message per kind of mistake."""

import pytest

from medtl.errors import UserError
from medtl.knobs import env_number, env_seconds


def test_unset_or_blank_gives_the_default(monkeypatch):
    monkeypatch.delenv("MEDTL_X_S", raising=False)
    assert env_seconds("MEDTL_X_S", 7.5) == 7.5
    monkeypatch.setenv("MEDTL_X_S", "  ")
    assert env_number("MEDTL_X_S", 3, whole=True) == 3


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv("MEDTL_X_S", "12")
    assert env_number("MEDTL_X_S", 0, whole=True) == 12 and isinstance(env_number("MEDTL_X_S", 0, whole=True), int)
    assert env_seconds("MEDTL_X_S", 0) == 12.0
    assert env_seconds("MEDTL_X_S", 0, value="0.25") == 0.25


@pytest.mark.parametrize(
    ("reader", "text", "message"),
    [
        (lambda v: env_number("MEDTL_X", 1, whole=True, value=v), "0.5", "MEDTL_X must be a whole number, got '0.5'"),
        (lambda v: env_number("MEDTL_X", 1, value=v), "abc", "MEDTL_X must be a number, got 'abc'"),
        (lambda v: env_number("MEDTL_X", 1, value=v), "inf", "MEDTL_X must be a finite number"),
        (lambda v: env_seconds("MEDTL_X", 1, value=v), "-2", "MEDTL_X must be a number of seconds >= 0, got '-2'"),
        (lambda v: env_seconds("MEDTL_X", 1, value=v), "nan", "MEDTL_X must be a number of seconds >= 0"),
    ],
)
def test_bad_values_are_one_line_user_errors(reader, text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        reader(text)
    assert "\n" not in str(info.value)
