"""Environment knobs: one reader, one message per kind of mistake."""

import pytest

from medtl import knobs as knobs_module
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


@pytest.mark.parametrize(
    ("variable", "read", "text", "message"),
    [
        ("MEDTL_TORCH_THREADS", lambda: knobs_module.torch_threads(), "two", "MEDTL_TORCH_THREADS must be a whole number, got 'two'"),
        ("MEDTL_TORCH_THREADS", lambda: knobs_module.torch_threads(), "0", "MEDTL_TORCH_THREADS must be a whole number >= 1, got 0"),
        ("MEDTL_CHECKPOINT_UPLOAD_EVERY", lambda: knobs_module.checkpoint_upload_every(1), "1.5", "MEDTL_CHECKPOINT_UPLOAD_EVERY must be a whole number, got '1.5'"),
        ("MEDTL_CHECKPOINT_UPLOAD_EVERY", lambda: knobs_module.checkpoint_upload_every(1), "-1", "MEDTL_CHECKPOINT_UPLOAD_EVERY must be a whole number >= 0, got -1"),
        ("MEDTL_INFRA_PATIENCE_S", lambda: knobs_module.infra_patience_s(), "0", "MEDTL_INFRA_PATIENCE_S must be a positive number of seconds, got 0"),
        ("MEDTL_HEARTBEAT_S", lambda: knobs_module.knobs(), "x", "MEDTL_HEARTBEAT_S must be a whole number, got 'x'"),
        ("MEDTL_PROMOTION_WAIT_S", lambda: knobs_module.promotion_wait_s(), "soon", "MEDTL_PROMOTION_WAIT_S must be a number of seconds >= 0, got 'soon'"),
    ],
)
def test_every_numeric_knob_is_read_here_with_one_line(monkeypatch, variable, read, text, message):
    """The knobs that once reached a bare int() (a traceback on a typo) now fail with one line."""
    monkeypatch.setenv(variable, text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read()
    assert "\n" not in str(info.value)


def test_unset_training_knobs_leave_the_defaults(monkeypatch):
    monkeypatch.delenv("MEDTL_TORCH_THREADS", raising=False)
    monkeypatch.delenv("MEDTL_CHECKPOINT_UPLOAD_EVERY", raising=False)
    assert knobs_module.torch_threads() is None
    assert knobs_module.checkpoint_upload_every(1) == 1
    monkeypatch.setenv("MEDTL_TORCH_THREADS", "3")
    monkeypatch.setenv("MEDTL_CHECKPOINT_UPLOAD_EVERY", "0")
    assert knobs_module.torch_threads() == 3
    assert knobs_module.checkpoint_upload_every(1) == 0


def test_one_infrastructure_budget_reads_the_older_name_when_the_new_one_is_unset(monkeypatch):
    monkeypatch.delenv("MEDTL_INFRA_PATIENCE_S", raising=False)
    monkeypatch.delenv("MEDTL_TRACKING_RETRY_S", raising=False)
    assert knobs_module.infra_patience_s() == knobs_module.INFRA_PATIENCE_DEFAULT_S
    monkeypatch.setenv("MEDTL_TRACKING_RETRY_S", "42")
    assert knobs_module.infra_patience_s() == 42
    assert knobs_module.knobs().infra_patience_s == 42  # the queue and the tracking client share it
    monkeypatch.setenv("MEDTL_INFRA_PATIENCE_S", "7")
    assert knobs_module.infra_patience_s() == 7
