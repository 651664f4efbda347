"""The promotion gate on known answers: seed intervals, margins, direction, fingerprints, force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtl.errors import UserError
from medtl.mlops.tracking.gate import (
    FORCED,
    KEPT,
    MOVED,
    REFUSED,
    Margin,
    Side,
    decide,
    seed_interval,
)


def test_seed_interval_of_two_seeds_spans_them():
    # Resampling 2 seeds gives means a, (a+b)/2, b with probabilities 1/4, 1/2, 1/4: with 2000 resamples
    # the 2.5th percentile is a and the 97.5th b (each end holds ~500 draws, far more than 50).
    iv = seed_interval([0.70, 0.80])
    assert iv.available and iv.n == 2 and iv.mean == pytest.approx(0.75)
    assert (iv.low, iv.high) == pytest.approx((0.70, 0.80)) and iv.half_width == pytest.approx(0.05)
    assert (iv.level, iv.resamples, iv.seed) == (0.95, 2000, 0)


def test_seed_interval_follows_the_stated_resampling():
    values = np.array([0.61, 0.74, 0.69, 0.80, 0.72])
    draws = np.random.default_rng(0).integers(0, 5, size=(2000, 5))  # the documented recipe, by hand
    low, high = np.percentile(np.sort(values)[draws].mean(axis=1), [2.5, 97.5])
    iv = seed_interval(values.tolist())
    assert (iv.low, iv.high) == pytest.approx((low, high))
    assert seed_interval(values[::-1].tolist()) == iv  # fixed seed, sorted first: the store's order does not matter


@pytest.mark.parametrize("values", [[], [0.8], [0.8, math.nan]])
def test_fewer_than_two_seeds_have_no_interval_never_zero_width(values):
    iv = seed_interval(values)
    assert not iv.available and iv.half_width is None
    assert iv.reason in ("no run with a value", "fewer than 2 seeds (n=1): no interval")
    assert "unavailable" in iv.text()


def _sides(candidate: float, holder: float, fp_c: str = "fp", fp_h: str = "fp") -> tuple[Side, Side]:
    return Side("run-c", candidate, fp_c), Side("run-h", holder, fp_h, version="1")


def _decide(candidate: Side, holder: Side | None, family, higher=True, **kw):
    return decide(candidate, holder, alias="champion", metric_name="best_val_f1" if higher else "best_val_mae",
                  higher_is_better=higher, family=family, **kw)


def test_a_refusal_carries_the_numbers_it_rests_on():
    family = [0.70, 0.80]  # half-width 0.05
    refused = _decide(*_sides(0.78, 0.74), family)
    assert refused.action == REFUSED and not refused.moves and "better by only 0.04" in refused.reason
    evidence = refused.evidence()
    assert evidence["margin"] == pytest.approx(0.05) and evidence["improvement"] == pytest.approx(0.04)
    assert evidence["candidate"]["value"] == 0.78 and evidence["holder"] == {
        "version": "1", "run_id": "run-h", "value": 0.74, "fingerprint": "fp"}
    assert evidence["seed_interval"]["n"] == 2 and evidence["seed_interval"]["resamples"] == 2000
    assert "half-width" in evidence["margin_rule"]


def test_gate_arithmetic_is_strict_and_direction_aware():
    family = [0.70, 0.80]  # half-width 0.05
    assert _decide(*_sides(0.86, 0.80), family).action == MOVED  # +0.06 > 0.05
    assert _decide(*_sides(0.84, 0.80), family).action == REFUSED  # +0.04
    worse = _decide(*_sides(0.70, 0.80), family)
    assert worse.action == REFUSED and worse.reason.endswith("not better")
    # MAE: lower is better; the same numbers read the other way.
    mae_family = [10.0, 12.0]  # half-width 1.0
    assert _decide(*_sides(8.5, 10.0), mae_family, higher=False).action == MOVED
    assert _decide(*_sides(9.5, 10.0), mae_family, higher=False).action == REFUSED
    assert _decide(*_sides(11.5, 10.0), mae_family, higher=False).action == REFUSED


def test_fixed_margin_replaces_the_interval():
    c, h = _sides(0.81, 0.80)
    assert _decide(c, h, [0.5, 0.9], margin=Margin(0.0)).action == MOVED
    assert _decide(c, h, [0.5, 0.9], margin=Margin(0.02)).action == REFUSED
    assert Margin.parse("auto") == Margin() and Margin.parse("0.01") == Margin(0.01)
    with pytest.raises(UserError, match="--margin must be 'auto' or a number >= 0"):
        Margin.parse("-1")
    with pytest.raises(UserError, match="--margin must be"):
        Margin.parse("lots")


def test_without_an_interval_the_gate_refuses_and_says_how_to_proceed():
    decision = _decide(*_sides(0.95, 0.80), [0.95])
    assert decision.action == REFUSED and "seed interval" in decision.reason
    assert "--margin 0" in decision.reason and "--force --reason" in decision.reason


def test_a_different_protocol_is_never_compared():
    decision = _decide(*_sides(0.99, 0.50, fp_c="aaaa", fp_h="bbbb"), [0.98, 0.99])
    assert decision.action == REFUSED and "fingerprint aaaa" in decision.reason and "bbbb" in decision.reason


def test_first_champion_kept_holder_and_non_finite_metrics():
    c, h = _sides(0.9, 0.8)
    assert _decide(c, None, []).action == MOVED
    assert _decide(Side("run-h", 0.8, "fp", "1"), h, [0.8, 0.9]).action == KEPT
    assert _decide(Side("run-c", math.nan, "fp"), h, [0.8, 0.9]).action == REFUSED
    assert _decide(c, Side("run-h", math.nan, "fp", "1"), [0.8, 0.9]).action == MOVED


def test_force_needs_a_reason_and_records_what_the_gate_said():
    c, h = _sides(0.70, 0.80)
    with pytest.raises(UserError, match="--force needs --reason"):
        _decide(c, h, [0.7, 0.8], force=True, reason="  ")
    forced = _decide(c, h, [0.7, 0.8], force=True, reason="clinical review chose it")
    assert forced.action == FORCED and forced.moves and forced.forced_reason == "clinical review chose it"
    assert forced.evidence()["gate_alone"].startswith("refused: ")
