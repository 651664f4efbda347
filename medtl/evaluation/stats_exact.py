"""Per-pair tests on arrays (Mann–Whitney, t, exact permutation), Hodges–Lehmann CI, effect sizes.

The pair tests (`mwu_pair`, `ttest_pair`, `permutation_pair`) take `(name_a, a, name_b, b)`: each
arm's label (used in notes) and its values; they return comparison-record fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from types import ModuleType
from typing import Any

import numpy as np

MAX_EXACT_SPLITS = 200_000
DEFAULT_RESAMPLES = 100_000
_CHUNK = 10_000


def scipy_stats() -> ModuleType:
    """`scipy.stats`, loaded at the first test: `medtl evaluate` reads the store and hands its figures to
    the drawing processes before it pays for this import (~0.4 s)."""
    import scipy.stats

    return scipy.stats


@dataclass(frozen=True)
class PermutationResult:
    """Two-sided permutation test of the difference in means (a minus b)."""

    statistic: float
    p: float
    method: str
    n_splits: int
    min_attainable_p: float


@dataclass(frozen=True)
class HodgesLehmann:
    """Hodges–Lehmann shift (median of a_i - b_j) and its exact distribution-free interval.

    `ci_level` is the confidence actually achieved by the chosen order statistics; `k` is the
    1-based rank of the lower bound among the sorted pairwise differences.
    """

    shift: float
    ci_low: float
    ci_high: float
    ci_level: float
    k: int


def mann_whitney_null_pmf(n_a: int, n_b: int) -> np.ndarray:
    """Exact null distribution of the Mann–Whitney U statistic for samples without ties.

    Args:
        n_a: size of the first sample (at least 1).
        n_b: size of the second sample (at least 1).

    Returns:
        Array `pmf` of length n_a*n_b + 1 with pmf[u] = P(U = u) under H0.

    Raises:
        ValueError: if either size is below 1.
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"sample sizes must be at least 1, got {n_a} and {n_b}")
    max_u = n_a * n_b
    # ways[j, u]: ways to place j of the a-items among the smallest i items with U-contribution u.
    ways = np.zeros((n_a + 1, max_u + 1))
    ways[0, 0] = 1.0
    for i in range(n_a + n_b):
        for j in range(min(i, n_a - 1), -1, -1):
            below = i - j  # b-items already placed below this a-item
            if below > n_b:
                continue
            ways[j + 1, below:] += ways[j, : max_u + 1 - below]
    return ways[n_a] / math.comb(n_a + n_b, n_a)


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """Cliff's delta: P(a > b) - P(a < b) over all pairs; +1 when every a exceeds every b.

    Args:
        a: first sample (non-empty).
        b: second sample (non-empty).

    Returns:
        A value in [-1, 1].
    """
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size == 0 or y.size == 0:
        raise ValueError("Cliff's delta needs two non-empty samples")
    return float(np.sign(x[:, None] - y[None, :]).mean())


def hodges_lehmann(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> HodgesLehmann:
    """Hodges–Lehmann shift of a over b with its exact confidence interval.

    The interval is [d_(k), d_(D+1-k)] over the D sorted pairwise differences, k the largest rank
    whose exact coverage 1 - 2*P(U <= k-1) (Mann–Whitney null) is at least `level`. When even k=1
    falls short (tiny samples), k=1 is used and the lower achieved level is reported.

    Args:
        a: first sample (non-empty).
        b: second sample (non-empty).
        level: wanted confidence, in (0, 1).

    Returns:
        HodgesLehmann with the shift, bounds, achieved level and k.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size == 0 or y.size == 0:
        raise ValueError("Hodges–Lehmann needs two non-empty samples")
    diffs = np.sort((x[:, None] - y[None, :]).ravel())
    cdf = np.cumsum(mann_whitney_null_pmf(x.size, y.size))
    half = (diffs.size + 1) // 2
    ok = np.nonzero(2 * cdf[:half] <= (1 - level) + 1e-12)[0]
    k = int(ok[-1]) + 1 if ok.size else 1
    return HodgesLehmann(
        shift=float(np.median(diffs)),
        ci_low=float(diffs[k - 1]),
        ci_high=float(diffs[diffs.size - k]),
        ci_level=float(1 - 2 * cdf[k - 1]),
        k=k,
    )


def permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    max_exact: int = MAX_EXACT_SPLITS,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PermutationResult:
    """Two-sided permutation test of mean(a) - mean(b), exact when the splits are few.

    Enumerates all C(n_a+n_b, n_a) splits when that is at most `max_exact`, counting those whose
    absolute difference reaches the observed one (ties counted with a small float tolerance);
    otherwise draws `n_resamples` seeded random splits and reports (count+1)/(n_resamples+1).

    Args:
        a: first sample (at least 1 value).
        b: second sample (at least 1 value).
        max_exact: largest number of splits enumerated exactly.
        n_resamples: Monte Carlo resamples when enumeration is too large.
        seed: seed of the Monte Carlo generator.

    Returns:
        PermutationResult with the observed difference, p, the method used and the smallest
        p-value the method can give at these sizes.
    """
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size == 0 or y.size == 0:
        raise ValueError("permutation test needs two non-empty samples")
    pooled = np.concatenate([x, y])
    n_a, n_b, total = x.size, y.size, float(pooled.sum())
    observed = float(x.mean() - y.mean())
    tol = 1e-9 * max(1.0, float(np.abs(pooled).max()))
    n_splits = math.comb(n_a + n_b, n_a)
    if n_splits <= max_exact:
        idx = np.fromiter(
            (i for combo in combinations(range(pooled.size), n_a) for i in combo),
            dtype=np.intp,
            count=n_splits * n_a,
        ).reshape(n_splits, n_a)
        sums = pooled[idx].sum(axis=1)
        diffs = sums / n_a - (total - sums) / n_b
        count = int(np.count_nonzero(np.abs(diffs) >= abs(observed) - tol))
        return PermutationResult(
            statistic=observed,
            p=count / n_splits,
            method=f"permutation exact ({n_splits} splits)",
            n_splits=n_splits,
            min_attainable_p=(2 if n_a == n_b else 1) / n_splits,
        )
    rng = np.random.default_rng(seed)
    count, done = 0, 0
    while done < n_resamples:
        size = min(_CHUNK, n_resamples - done)
        shuffled = rng.permuted(np.broadcast_to(pooled, (size, pooled.size)), axis=1)
        sums = shuffled[:, :n_a].sum(axis=1)
        diffs = sums / n_a - (total - sums) / n_b
        count += int(np.count_nonzero(np.abs(diffs) >= abs(observed) - tol))
        done += size
    return PermutationResult(
        statistic=observed,
        p=(count + 1) / (n_resamples + 1),
        method=f"permutation Monte Carlo ({n_resamples} resamples, seed {seed})",
        n_splits=n_splits,
        min_attainable_p=1 / (n_resamples + 1),
    )


def bonferroni(p_values: Sequence[float | None], n: int | None = None) -> list[float | None]:
    """Bonferroni: each p times the family size (default: the number of p-values), capped at 1.

    Args:
        p_values: raw p-values; None (undefined) stays None.
        n: family size; defaults to len(p_values).

    Returns:
        Adjusted p-values in the input order.
    """
    m = len(p_values) if n is None else n
    return [None if p is None else min(1.0, p * m) for p in p_values]


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction; undefined (None) p-values count as 1 in the family.

    Args:
        p_values: raw p-values in any order.

    Returns:
        Adjusted p-values in the input order, e.g. [0.01, 0.04, 0.03] -> [0.03, 0.06, 0.06].
    """
    m = len(p_values)
    effective = [1.0 if p is None else float(p) for p in p_values]
    order = sorted(range(m), key=lambda i: effective[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * effective[i]))
        adjusted[i] = running
    return [None if p is None else adjusted[i] for i, p in enumerate(p_values)]


def mwu_pair(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> dict[str, Any]:
    """One pair through its own default `scipy.stats.mannwhitneyu(a, b)` call, as record fields.

    Never batched: scipy's method="auto" picks exact or asymptotic from the ties of all samples in
    a call, so a batched call would change the method of tie-free pairs.

    Returns:
        statistic (U of a), p_raw, method actually used, min_attainable_p, ties and effect sizes;
        p_raw is None with a note when the test is undefined.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = pair_effects(a, b)
    reason = pair_problem(name_a, a, name_b, b)
    if reason:
        return {**out, "note": join_notes([reason, out.get("note")])}
    ties = out["ties"]
    stats = scipy_stats()
    res = stats.mannwhitneyu(a, b)
    if not (a.size > 8 and b.size > 8) and not ties:  # scipy's method="auto" rule
        method, min_p = "exact", min(1.0, 2 / math.comb(a.size + b.size, a.size))
    else:
        method = (
            "asymptotic (tie+continuity corrected)" if ties else "asymptotic (continuity corrected)"
        )
        split = np.arange(a.size + b.size)
        min_p = float(
            stats.mannwhitneyu(split[: a.size], split[a.size :], method="asymptotic").pvalue
        )
    return {**out, **scipy_fields(res), "method": method, "min_attainable_p": min_p}


def ttest_pair(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> dict[str, Any]:
    """Student's t-test (equal variances) of one pair with Cohen's d, as record fields.

    Returns:
        statistic, p_raw, method, min_attainable_p, ties, effect_size (Cohen's d, pooled SD);
        p_raw is None with a note when the test is undefined (both arms constant, too few runs).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    out: dict[str, Any] = {
        "ties": has_ties(np.concatenate([a, b])),
        "method": "Student t (equal variances)",
    }
    reason = pair_problem(name_a, a, name_b, b)
    if reason is None and np.ptp(a) == 0 and np.ptp(b) == 0:
        reason = "both arms constant: t-test undefined"
    if reason:
        return {**out, "note": reason}
    pooled_var = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (
        a.size + b.size - 2
    )
    d = (a.mean() - b.mean()) / math.sqrt(pooled_var) if pooled_var > 0 else None
    result = scipy_fields(scipy_stats().ttest_ind(a, b, equal_var=True))
    return {
        **out,
        **result,
        "min_attainable_p": 0.0,
        "effect_size": d,
        "effect_size_name": "cohens_d",
    }


def permutation_pair(
    name_a: str, a: np.ndarray, name_b: str, b: np.ndarray, **options: int
) -> dict[str, Any]:
    """Permutation test of one pair of arms with its effect sizes, as comparison-record fields.

    Args:
        **options: `seed`, `max_exact`, `n_resamples` passed to `permutation_test`.

    Returns:
        Record fields: statistic, p_raw, method, min_attainable_p, ties, effect sizes, interval and
        a note; p_raw is absent (undefined) when an arm has fewer than 2 values or all are equal.
    """
    out = pair_effects(a, b)
    reason = pair_problem(name_a, a, name_b, b)
    if reason:
        return {**out, "note": join_notes([reason, out.get("note")])}
    res = permutation_test(a, b, **options)
    return {
        **out,
        "statistic": res.statistic,
        "p_raw": res.p,
        "method": res.method,
        "min_attainable_p": res.min_attainable_p,
    }


def pair_effects(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Cliff's delta and the Hodges–Lehmann shift with its exact 95% interval, as record fields.

    Args:
        a: first arm's values.
        b: second arm's values.

    Returns:
        ties, effect_size_name and, when both arms have values, effect_size, hl_shift, ci_low,
        ci_high, ci_level (and a note when 95% is not attainable at these sizes).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    out: dict[str, Any] = {
        "ties": has_ties(np.concatenate([a, b])),
        "effect_size_name": "cliffs_delta",
    }
    if a.size and b.size:
        hl = hodges_lehmann(a, b)
        out.update(
            effect_size=cliffs_delta(a, b),
            hl_shift=hl.shift,
            ci_low=hl.ci_low,
            ci_high=hl.ci_high,
            ci_level=hl.ci_level,
        )
        if hl.ci_level < 0.95:
            out["note"] = (
                f"95% interval not attainable at n={a.size}+{b.size}: level {hl.ci_level:.3f}"
            )
    return out


def pair_problem(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> str | None:
    """Why a two-sample test is undefined (an arm under 2 values, all values equal), or None."""
    for name, values in ((name_a, a), (name_b, b)):
        if np.size(values) < 2:
            return too_few(name, np.size(values))
    if np.ptp(np.concatenate([a, b])) == 0:
        return "all values identical: test undefined"
    return None


def too_few(name: str, n: int) -> str:
    """The note for an arm with fewer than two usable runs."""
    return f"fewer than 2 runs in arm '{name}' (n={n})"


def has_ties(values: np.ndarray) -> bool:
    """Whether any value occurs more than once."""
    return bool(np.unique(values).size < np.size(values))


def join_notes(parts: Sequence[str | None]) -> str | None:
    """Join the non-empty notes with '; ' (duplicates once), or None when there are none."""
    kept = [p for p in parts if p]
    return "; ".join(dict.fromkeys(kept)) if kept else None


def kruskal_min_p(sizes: Sequence[int]) -> float:
    """Smallest Kruskal–Wallis p-value at these sample sizes: complete separation, no ties."""
    edges = np.cumsum([0, *sizes])
    blocks = [np.arange(lo, hi, dtype=float) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return float(scipy_stats().kruskal(*blocks).pvalue)


def scipy_fields(res: Any) -> dict[str, Any]:
    """statistic and p_raw of a scipy result, or an undefined result when either is not finite."""
    statistic, p = float(res.statistic), float(res.pvalue)
    if not (math.isfinite(statistic) and math.isfinite(p)):
        return undefined("test undefined for these values (non-finite statistic)")
    return {"statistic": statistic, "p_raw": p}


def undefined(note: str) -> dict[str, Any]:
    """Record fields of a test that cannot be computed: no statistic, no p, the reason."""
    return {"statistic": None, "p_raw": None, "note": note}
