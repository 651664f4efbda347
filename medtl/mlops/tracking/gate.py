"""The promotion gate: whether a candidate may take an alias from its holder, and the evidence for the answer.

Pure (no MLflow): `decide` compares two sides — the candidate and the version holding the alias — on
their validation metric, direction-aware, within one protocol fingerprint. The default margin is the
seed-level interval of the candidate's grid point: a 95 % percentile bootstrap interval of the mean
validation metric over the seeds of the candidate's family (same cell, fingerprint, arm and learning
rate; `RESAMPLES` resamples drawn with seed `BOOTSTRAP_SEED`), whose half-width the candidate must
beat the holder by. Fewer than two seeds: the interval is unavailable (never zero width) and the gate
refuses, saying how to proceed (`--margin 0` for any improvement, or `--force --reason`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medtl.errors import UserError
from medtl.evaluation.uncertainty import LEVEL, RESAMPLES
from medtl.evaluation.uncertainty import SEED as BOOTSTRAP_SEED

MOVED, FORCED, REFUSED, KEPT = "moved", "forced", "refused", "kept"
"""What a promotion did: moved by the gate, moved by `--force`, refused by the gate, or kept (already held)."""


@dataclass(frozen=True)
class SeedInterval:
    """The percentile bootstrap interval of a mean over seeds; `low`/`high` None (with `reason`) when unavailable."""

    n: int
    mean: float
    low: float | None
    high: float | None
    level: float = LEVEL
    resamples: int = RESAMPLES
    seed: int = BOOTSTRAP_SEED
    reason: str = ""

    @property
    def available(self) -> bool:
        """Whether the interval exists (at least two finite values)."""
        return self.low is not None and self.high is not None

    @property
    def half_width(self) -> float | None:
        """(high − low) / 2, or None when unavailable."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def text(self) -> str:
        """`0.812 [0.79, 0.83] (95 % bootstrap over 5 seeds)`, or why there is none."""
        if not self.available:
            return f"interval unavailable: {self.reason}"
        return (f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] ({self.level:.0%} percentile bootstrap over "
                f"{self.n} seeds, {self.resamples} resamples, seed {self.seed})")


def seed_interval(values: Sequence[float]) -> SeedInterval:
    """The percentile bootstrap interval of the mean of `values` (one per seed); non-finite values dropped.

    The one bootstrap over seeds medtl has (`medtl.evaluation.uncertainty.mean_interval`: the report's
    intervals and the gate's margin are the same numbers); values are sorted first, so the interval does
    not depend on the order the store returned the runs in.

    Returns:
        SeedInterval; unavailable (low/high None, `reason` set) with fewer than two finite values.
    """
    from medtl.evaluation.uncertainty import mean_interval

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    mean = float(data.mean()) if len(data) else math.nan
    return from_interval(len(data), mean, mean_interval(data))


def from_interval(n: int, mean: float, interval: Any) -> SeedInterval:
    """A SeedInterval from evaluation's `Interval` (its bounds, level, resamples and seed, or why it has none)."""
    return SeedInterval(n, float(mean), interval.low, interval.high, interval.level, interval.resamples,
                        interval.seed, reason=interval.note or "")


@dataclass(frozen=True)
class Margin:
    """How much better a candidate must be: `auto` (the seed interval's half-width) or a fixed amount."""

    value: float | None = None

    @classmethod
    def parse(cls, text: str | float | None) -> Margin:
        """`auto` (or None) or a non-negative number in the metric's units; UserError otherwise."""
        if text is None or str(text).strip().lower() == "auto":
            return cls(None)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--margin must be 'auto' or a number >= 0 in the metric's units, got {text!r}")
        return cls(value)

    @property
    def rule(self) -> str:
        """The rule in words, as the history and --dry-run print it."""
        if self.value is None:
            return (f"auto: the half-width of the {LEVEL:.0%} percentile bootstrap interval of the candidate's "
                    "validation mean over its seeds")
        return f"fixed: {self.value:g}"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a registered version (or a run not yet registered) and its validation metric."""

    run_id: str
    metric: float
    fingerprint: str
    version: str | None = None

    def label(self) -> str:
        """`version 3` or `run <id> (not registered)`."""
        return f"version {self.version}" if self.version else f"run {self.run_id} (not registered)"


@dataclass(frozen=True)
class Decision:
    """The gate's answer for one alias: what happens and why, with every number it rests on."""

    action: str
    reason: str
    alias: str
    metric_name: str
    higher_is_better: bool
    candidate: Side
    holder: Side | None
    margin: Margin = field(default_factory=Margin)
    interval: SeedInterval | None = None
    forced_reason: str = ""
    gate: str = ""
    """For a forced move: what the gate alone would have answered."""

    @property
    def moves(self) -> bool:
        """Whether the alias moves to the candidate."""
        return self.action in (MOVED, FORCED)

    @property
    def holder_version(self) -> str | None:
        """The version holding the alias before the decision (None: no holder)."""
        return None if self.holder is None else self.holder.version

    @property
    def after(self) -> str | None:
        """The version holding the alias once the decision is carried out."""
        return self.candidate.version if self.moves else self.holder_version

    def evidence(self) -> dict[str, Any]:
        """The numbers behind the decision, JSON-ready (the history stores them)."""
        out: dict[str, Any] = {
            "metric": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "candidate": _side(self.candidate),
            "holder": None if self.holder is None else _side(self.holder),
            "margin_rule": self.margin.rule,
        }
        if self.holder is not None and math.isfinite(self.holder.metric) and math.isfinite(self.candidate.metric):
            out["improvement"] = _improvement(self.candidate.metric, self.holder.metric, self.higher_is_better)
        if self.interval is not None:
            out["seed_interval"] = {k: _finite(v) for k, v in asdict(self.interval).items()}
        margin = self.margin_value()
        if margin is not None:
            out["margin"] = margin
        if self.gate:
            out["gate_alone"] = self.gate
        return out

    def margin_value(self) -> float | None:
        """The margin the gate applied (fixed, or the interval's half-width), None when it had none."""
        if self.margin.value is not None:
            return self.margin.value
        return None if self.interval is None else self.interval.half_width


def _side(side: Side) -> dict[str, Any]:
    return {"version": side.version, "run_id": side.run_id, "value": _finite(side.metric), "fingerprint": side.fingerprint}


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _improvement(candidate: float, holder: float, higher_is_better: bool) -> float:
    return candidate - holder if higher_is_better else holder - candidate


def require_reason(force: bool, reason: str) -> None:
    """A forced promotion names why (the history records it).

    Raises:
        UserError: `force` without a `reason`.
    """
    if force and not reason.strip():
        raise UserError("--force needs --reason TEXT: the history records why the gate was overridden")


def decide(
    candidate: Side,
    holder: Side | None,
    *,
    alias: str,
    metric_name: str,
    higher_is_better: bool,
    family: Sequence[float],
    margin: Margin | None = None,
    force: bool = False,
    reason: str = "",
) -> Decision:
    """Whether `candidate` takes `alias` from `holder`.

    Kept when the candidate already holds it. Forced (with `reason`, required) regardless of the gate.
    Otherwise moved only if there is no holder, or the fingerprints agree and the candidate beats the
    holder's validation metric (direction-aware) by more than the margin: fixed, or by default the
    half-width of the seed interval of `family` (the candidate's grid point over seeds).

    Raises:
        UserError: `force` without a `reason`.
    """
    margin = margin or Margin()
    interval = seed_interval(family) if margin.value is None else None
    base = dict(alias=alias, metric_name=metric_name, higher_is_better=higher_is_better, candidate=candidate,
                holder=holder, margin=margin, interval=interval)
    if holder is not None and (holder.run_id == candidate.run_id or (candidate.version and holder.version == candidate.version)):
        return Decision(KEPT, f"{candidate.label()} (run {candidate.run_id}) already holds {alias}", **base)
    if force:
        require_reason(force, reason)
        gate = decide(candidate, holder, alias=alias, metric_name=metric_name, higher_is_better=higher_is_better,
                      family=family, margin=margin)
        return Decision(FORCED, f"forced: {reason.strip()}", **base, forced_reason=reason.strip(),
                        gate=f"{gate.action}: {gate.reason}")
    action, why = _gate(candidate, holder, metric_name, higher_is_better, margin, interval)
    return Decision(action, why, **base)


def _gate(
    candidate: Side, holder: Side | None, metric: str, higher: bool, margin: Margin, interval: SeedInterval | None
) -> tuple[str, str]:
    word = "higher" if higher else "lower"
    if holder is None:
        return MOVED, f"no version holds the alias yet; {candidate.label()} is the first ({metric} {candidate.metric:.4g})"
    if not math.isfinite(candidate.metric):
        return REFUSED, f"{candidate.label()} has no finite {metric}"
    if candidate.fingerprint != holder.fingerprint:
        return REFUSED, (f"{candidate.label()} has protocol fingerprint {candidate.fingerprint}, the holder "
                         f"{holder.label()} {holder.fingerprint}: not comparable (edited study or data); "
                         "--force --reason to replace it anyway")
    if not math.isfinite(holder.metric):
        return MOVED, f"the holder {holder.label()} has no finite {metric}; {candidate.label()} has {candidate.metric:.4g}"
    needed = margin.value if margin.value is not None else (interval.half_width if interval is not None else None)
    if needed is None:
        why = interval.reason if interval is not None else "no seeds"
        return REFUSED, (f"the seed interval of {candidate.label()} is unavailable ({why}), so an improvement cannot "
                         "be told from seed noise; --margin 0 accepts any improvement, --force --reason moves it anyway")
    gain = _improvement(candidate.metric, holder.metric, higher)
    numbers = (f"{metric} {candidate.metric:.4g} vs the holder {holder.label()}'s {holder.metric:.4g} "
               f"({word} is better)")
    rule = "fixed margin" if margin.value is not None else "half-width of the seed interval"
    if gain > needed:
        return MOVED, f"{numbers}: better by {gain:.4g}, more than the margin {needed:.4g} ({rule})"
    if gain > 0:
        return REFUSED, f"{numbers}: better by only {gain:.4g}, not more than the margin {needed:.4g} ({rule})"
    return REFUSED, f"{numbers}: not better"
