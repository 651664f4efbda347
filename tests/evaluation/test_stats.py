"""Known-answer tests for medtl.evaluation.stats and stats_exact."""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from medtl.errors import UserError
from medtl.evaluation import stats as st
from medtl.evaluation.stats_exact import (
    bonferroni,
    cliffs_delta,
    hodges_lehmann,
    holm,
    mann_whitney_null_pmf,
    permutation_test,
)
from medtl.evaluation.stats_records import INTERVAL_KEYS

SEPARATED = {
    "random": [1, 2, 3, 4, 5],
    "imagenet": [6, 7, 8, 9, 10],
    "domain": [11, 12, 13, 14, 15],
}


def runs(
    arms, task="covid19", arch="resnet18", lr=1e-3, metric="f1", val=None, epochs=None, **extra
):
    """One row per value: arms maps arm -> test metric values (val/epochs default to the same)."""
    rows = []
    for arm, values in arms.items():
        for i, v in enumerate(values):
            rows.append({
                "task": task, "arch": arch, "arm": arm, "lr": lr, "seed": i,
                "status": "FINISHED", "diverged": False,
                f"best_val_{metric}": v if val is None else val[arm][i],
                f"test_{metric}": v,
                "epochs_to_convergence": v if epochs is None else epochs[arm][i],
                **extra,
            })  # fmt: skip
    return pd.DataFrame(rows)


def pick(cs, test, metric="test_f1", a=None, b=None):
    out = [r for r in cs.records if r.test == test and r.metric == metric
           and (a is None or r.group_a == a) and (b is None or r.group_b == b)]  # fmt: skip
    return out


# ---------------------------------------------------------------- paper mode


def test_complete_separation_five_vs_five_gives_0_024():
    cs = st.compare(runs(SEPARATED), "paper")
    pairs = pick(cs, "mannwhitneyu")
    assert [(r.group_a, r.group_b) for r in pairs] == [
        ("random", "imagenet"), ("random", "domain"), ("imagenet", "domain")
    ]  # fmt: skip
    for r in pairs:
        assert r.p_raw == pytest.approx(2 / 252)  # 0.00794, exact two-sided
        assert r.p_adjusted == pytest.approx(6 / 252)  # 0.0238
        assert round(r.p_adjusted, 3) == 0.024
        assert r.method == "exact" and r.correction == "bonferroni" and r.n_comparisons == 3
        assert r.min_attainable_p == pytest.approx(2 / 252)
        assert r.effect_size == -1.0 and r.effect_size_name == "cliffs_delta"
        assert r.statistic == 0.0 and r.ties is False
    kw = pick(cs, "kruskal")[0]
    assert kw.p_raw == pytest.approx(sps.kruskal(*SEPARATED.values()).pvalue)
    assert kw.min_attainable_p == pytest.approx(kw.p_raw)  # complete separation is the extreme
    assert kw.omnibus_significant is True and all(r.omnibus_significant for r in pairs)
    lev = pick(cs, "levene")[0]
    assert lev.p_raw == pytest.approx(sps.levene(*SEPARATED.values()).pvalue)
    assert lev.group_a is None and lev.group_b is None and lev.n_a == 15


def test_ties_use_the_asymptotic_method_like_a_direct_call():
    arms = {"random": [0.5, 0.5, 0.6, 0.7, 0.7], "imagenet": [0.7, 0.8, 0.8, 0.9, 0.95]}
    r = pick(st.compare(runs(arms), "paper"), "mannwhitneyu")[0]
    direct = sps.mannwhitneyu(arms["random"], arms["imagenet"])
    asym = sps.mannwhitneyu(arms["random"], arms["imagenet"], method="asymptotic")
    exact = sps.mannwhitneyu(arms["random"], arms["imagenet"], method="exact")
    assert r.p_raw == pytest.approx(direct.pvalue) == pytest.approx(asym.pvalue)
    assert r.p_raw != pytest.approx(exact.pvalue)
    assert r.statistic == direct.statistic
    assert r.ties is True and r.method == "asymptotic (tie+continuity corrected)"
    assert r.p_adjusted == r.p_raw  # one pair: Bonferroni x1
    assert r.omnibus_significant is (pick(st.compare(runs(arms)), "kruskal")[0].p_raw < 0.05)


def test_each_pair_is_its_own_call_never_batched(monkeypatch):
    arms = {"random": [1, 2, 3, 4, 5], "imagenet": [6, 7, 8, 9, 10], "domain": [6, 6, 7, 7, 8]}
    x, y, z = (np.array(v, float) for v in arms.values())
    batched = sps.mannwhitneyu(
        np.stack([x, x]), np.stack([y, z]), axis=1
    )  # a tie anywhere → all asymptotic
    single = sps.mannwhitneyu(x, y)
    assert single.pvalue == pytest.approx(2 / 252)
    assert batched.pvalue[0] != pytest.approx(single.pvalue)

    calls = []
    real = sps.mannwhitneyu

    def spy(a, b, *args, **kwargs):
        calls.append((np.ndim(a), np.ndim(b), kwargs))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(sps, "mannwhitneyu", spy)
    cs = st.compare(runs(arms, epochs={g: [1, 2, 3, 4, 5] for g in arms}), "paper")
    pairs = {(r.group_a, r.group_b): r for r in pick(cs, "mannwhitneyu")}
    assert pairs["random", "imagenet"].p_raw == pytest.approx(single.pvalue)
    assert pairs["random", "imagenet"].method == "exact"
    assert pairs["random", "domain"].p_raw == pytest.approx(real(x, z).pvalue)
    assert pairs["random", "domain"].method.startswith("asymptotic")  # ties inside 'domain'
    assert pairs["imagenet", "domain"].p_raw == pytest.approx(real(y, z).pvalue)
    assert all(na == 1 and nb == 1 for na, nb, _ in calls)
    assert sum(1 for *_, kw in calls if not kw) == 6  # one scipy-default call per pair and metric


def test_bonferroni_caps_at_one():
    arms = {
        "random": [1, 3, 5, 7, 9],
        "imagenet": [2, 4, 6, 8, 10],
        "domain": [1.5, 3.5, 5.5, 7.5, 9.5],
    }
    pairs = pick(st.compare(runs(arms)), "mannwhitneyu")
    assert all(r.p_raw > 1 / 3 for r in pairs)
    assert all(r.p_adjusted == 1.0 for r in pairs)
    assert bonferroni([0.5, 0.2, None]) == [1.0, pytest.approx(0.6), None]
    assert bonferroni([0.01], n=3) == [pytest.approx(0.03)]


def test_single_vs_multi_modality_ttest_per_learning_rate():
    a, b = [0.80, 0.82, 0.85, 0.79, 0.81], [0.70, 0.75, 0.72, 0.71, 0.74]
    df = pd.concat([runs({"domain": a, "domain-CR": b}, lr=lr) for lr in (1e-3, 1e-4)])
    tt = pick(st.compare(df, "paper"), "ttest")
    assert [(r.lr_a, r.group_a, r.group_b) for r in tt] == [
        (1e-4, "domain", "domain-CR"), (1e-3, "domain", "domain-CR")
    ]  # fmt: skip
    ref = sps.ttest_ind(a, b, equal_var=True)
    assert tt[0].p_raw == pytest.approx(ref.pvalue) and tt[0].statistic == pytest.approx(
        ref.statistic
    )
    assert tt[0].correction == "none" and tt[0].p_adjusted == tt[0].p_raw
    assert tt[0].effect_size_name == "cohens_d" and tt[0].effect_size > 0


# ---------------------------------------------------------------- corrections, effect sizes


def test_holm_known_vector():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.01, None]) == [pytest.approx(0.02), None]
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_cliffs_delta_hand_cases():
    assert cliffs_delta([4, 5, 6], [1, 2, 3]) == 1.0
    assert cliffs_delta([1, 2, 3], [4, 5, 6]) == -1.0
    assert cliffs_delta([2, 2, 2], [2, 2, 2]) == 0.0
    assert cliffs_delta([1, 2, 3], [0, 2]) == pytest.approx(0.5)  # (4 wins - 1 loss) / 6


def brute_force_u_cdf(n_a, n_b):
    counts = np.zeros(n_a * n_b + 1)
    for chosen in combinations(range(n_a + n_b), n_a):
        ranks = np.array(chosen) + 1
        counts[int(ranks.sum() - n_a * (n_a + 1) / 2)] += 1
    return np.cumsum(counts) / counts.sum()


def test_mann_whitney_null_matches_enumeration():
    for n_a, n_b in [(3, 4), (5, 5), (2, 6), (1, 3)]:
        assert np.cumsum(mann_whitney_null_pmf(n_a, n_b)) == pytest.approx(
            brute_force_u_cdf(n_a, n_b)
        )


def test_hodges_lehmann_shift_and_exact_interval_by_brute_force():
    a = np.array([1.1, 2.3, 3.7, 4.2, 5.9])
    b = np.array([0.0, 0.5, 1.0, 1.6, 2.2])
    hl = hodges_lehmann(a, b)
    diffs = sorted(ai - bj for ai in a for bj in b)
    cdf = brute_force_u_cdf(5, 5)
    k = max(k for k in range(1, 13) if 2 * cdf[k - 1] <= 0.05)
    assert k == 3 and hl.k == 3
    assert hl.shift == pytest.approx(np.median(diffs))
    assert (hl.ci_low, hl.ci_high) == pytest.approx((diffs[k - 1], diffs[-k]))
    assert hl.ci_level == pytest.approx(1 - 2 * 4 / 252)  # P(U<=2) = (1+1+2)/252: 0.968, not 0.95
    # Inversion: a shift lies strictly inside the interval iff the exact test of (a - shift, b)
    # does not reject at 1 - ci_level.
    mids = [(lo + hi) / 2 for lo, hi in zip(diffs, diffs[1:], strict=False) if hi > lo]
    for theta in [diffs[0] - 1, *mids, diffs[-1] + 1]:
        p = sps.mannwhitneyu(a - theta, b, method="exact").pvalue
        inside = hl.ci_low < theta < hl.ci_high
        assert inside == (p > 1 - hl.ci_level + 1e-12), theta


def test_hodges_lehmann_reports_the_lower_level_when_95_is_unreachable():
    hl = hodges_lehmann([1, 2, 3], [4, 5, 7])
    assert hl.k == 1 and hl.ci_level == pytest.approx(0.9)  # 1 - 2/20
    assert (hl.ci_low, hl.ci_high) == (-6.0, -1.0)
    assert hl.shift == -3.0


# ---------------------------------------------------------------- permutation (recommended)


def test_permutation_exact_three_vs_three_equals_enumeration():
    a, b = [0.71, 0.74, 0.80], [0.70, 0.69, 0.74]
    pooled = np.array(a + b)
    observed = abs(np.mean(a) - np.mean(b))
    hits = 0
    for idx in combinations(range(6), 3):
        rest = [i for i in range(6) if i not in idx]
        hits += abs(pooled[list(idx)].mean() - pooled[rest].mean()) >= observed - 1e-12
    res = permutation_test(a, b)
    assert res.p == pytest.approx(hits / 20) and res.n_splits == 20
    assert res.method == "permutation exact (20 splits)"
    assert res.min_attainable_p == pytest.approx(0.1)
    assert res.statistic == pytest.approx(np.mean(a) - np.mean(b))


def test_permutation_monte_carlo_is_seeded_and_recorded():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.5]
    exact = permutation_test(a, b)
    mc = permutation_test(a, b, max_exact=100, n_resamples=20_000, seed=3)
    assert mc.method == "permutation Monte Carlo (20000 resamples, seed 3)"
    assert mc.p == permutation_test(a, b, max_exact=100, n_resamples=20_000, seed=3).p
    assert mc.p == pytest.approx(exact.p, abs=0.01)


def test_recommended_mode_holm_and_effect_sizes():
    cs = st.compare(runs(SEPARATED), "recommended")
    perms = pick(cs, "permutation")
    assert len(perms) == 3 and {r.correction for r in perms} == {"holm"}
    raw = [r.p_raw for r in perms]
    assert raw == pytest.approx([2 / 252] * 3)
    assert [r.p_adjusted for r in perms] == pytest.approx(holm(raw))
    first = perms[0]
    assert first.method == "permutation exact (252 splits)"
    assert first.statistic == pytest.approx(-5.0) and first.effect_size == -1.0
    assert first.hl_shift == pytest.approx(-5.0) and first.ci_level == pytest.approx(1 - 8 / 252)
    assert first.ci_low < first.hl_shift < first.ci_high
    assert first.omnibus_significant is None


def test_recommended_mode_compares_single_modality_variants_with_domain():
    df = runs(
        {"random": [1, 2, 3], "domain": [4, 5, 6], "domain-MR": [1, 2, 4], "domain-CT": [4, 5, 6]}
    )
    var = [
        r
        for r in pick(st.compare(df, "recommended"), "permutation")
        if r.group_b.startswith("domain-")
    ]
    assert [(r.group_a, r.group_b) for r in var] == [
        ("domain", "domain-CT"),
        ("domain", "domain-MR"),
    ]
    assert var[0].p_raw == 1.0 and var[0].effect_size == 0.0 and var[0].hl_shift == 0.0
    assert var[1].p_raw == pytest.approx(0.2)  # splits with |diff| >= 8/3: 4 of 20
    assert [r.p_adjusted for r in var] == pytest.approx(holm([1.0, 0.2]))
    assert {r.n_comparisons for r in var} == {2} and "level 0.900" in var[1].note


# ---------------------------------------------------------------- degenerate cells


def test_constant_and_identical_groups_give_notes_not_crashes():
    constant = runs({"random": [0.5] * 5, "imagenet": [0.5] * 5, "domain": [0.7] * 5})
    cs = st.compare(constant, "paper")
    lev, kw = pick(cs, "levene")[0], pick(cs, "kruskal")[0]
    assert lev.p_raw is None and "constant" in lev.note
    assert kw.p_raw is not None  # different constants: ranks still differ
    pair = pick(cs, "mannwhitneyu", a="random", b="imagenet")[0]
    assert pair.p_raw is None and pair.p_adjusted is None
    assert pair.note == "all values identical: test undefined" and pair.effect_size == 0.0

    identical = runs({g: [0.5] * 5 for g in SEPARATED})
    for mode in st.MODES:
        for rec in st.compare(identical, mode).records:
            assert rec.p_raw is None and "identical" in rec.note
    assert pick(st.compare(identical), "kruskal")[0].omnibus_significant is None


def test_small_arms_single_arm_and_nan_metrics():
    df = runs({"random": [0.1], "imagenet": [0.5, 0.6, 0.7], "domain": [0.6, 0.7, 0.9]})
    cs = st.compare(df)
    pair = pick(cs, "mannwhitneyu", a="random", b="imagenet")[0]
    assert pair.p_raw is None and "fewer than 2 runs in arm 'random' (n=1)" in pair.note
    kw = pick(cs, "kruskal")[0]
    assert kw.p_raw is not None and kw.n_a == 6 and "left out" in kw.note

    one = st.compare(runs({"imagenet": [0.5, 0.6]}))
    assert [r.test for r in one.records if r.metric == "test_f1"] == ["levene", "kruskal"]
    assert all(r.p_raw is None and "only one arm 'imagenet'" in r.note for r in one.records)
    assert (
        st.compare(runs({"imagenet": [0.5, 0.6]}), "recommended")
        .records[0]
        .note.startswith("only one arm")
    )

    nan = runs({"random": [0.1, 0.2, 0.3], "imagenet": [0.5, 0.6, 0.7]})
    nan.loc[0, "test_f1"] = np.nan
    r = pick(st.compare(nan), "mannwhitneyu")[0]
    assert r.n_a == 2 and "1 NaN-metric run(s) excluded" in r.note


def test_records_are_json_safe_with_exactly_the_documented_keys():
    df = pd.concat([runs(SEPARATED), runs({"domain-CR": [1, 2, 3, 4, 5]})])
    df["test_f1"] = df["test_f1"].astype(float)
    df.loc[df["arm"] == "random", "test_f1"] = 0.5
    for mode in st.MODES:
        cs = st.compare(df, mode)
        records = cs.to_records()
        assert records and all(tuple(r) == (*st.RECORD_KEYS, *INTERVAL_KEYS) for r in records)
        json.dumps(records, allow_nan=False)
        assert list(cs.to_frame().columns) == [*st.RECORD_KEYS, *INTERVAL_KEYS]
        pairs = [r for r in records if r["group_b"] is not None and r["n_a"] >= 2 and r["n_b"] >= 2]
        assert pairs and all(r["diff_ci_low"] <= r["mean_diff"] <= r["diff_ci_high"] for r in pairs)
        omnibus = [r for r in records if r["test"] in ("levene", "kruskal")]
        assert all(r["mean_diff"] is None and r["diff_ci_low"] is None for r in omnibus)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.records[0].p_raw = 0.0


# ---------------------------------------------------------------- selection, exclusions, errors


def test_lr_selection_uses_validation_not_test_and_respects_direction():
    val_good = {"imagenet": [0.9, 0.9, 0.9]}
    hi_val = runs({"imagenet": [0.1, 0.1, 0.1]}, lr=1e-3, val=val_good)  # great val, bad test
    lo_val = runs({"imagenet": [0.9, 0.9, 0.9]}, lr=1e-4, val={"imagenet": [0.2, 0.2, 0.2]})
    sel = st.select_learning_rates(pd.concat([hi_val, lo_val]))
    assert sel.loc[0, "lr"] == 1e-3 and sel.loc[0, "metric"] == "best_val_f1"
    assert sel.loc[0, "mean_val"] == pytest.approx(0.9)

    mae = pd.concat([
        runs({"random": [5, 5]}, task="rsna-boneage", arch="inception_v3", metric="mae", lr=lr,
             val={"random": [v, v]})
        for lr, v in ((1e-2, 20.0), (1e-3, 8.0), (1e-4, 12.0))
    ])  # fmt: skip
    sel = st.select_learning_rates(mae)
    assert sel.loc[0, "lr"] == 1e-3 and sel.loc[0, "metric"] == "best_val_mae"
    with pytest.raises(ValueError, match="validation"):
        st.select_learning_rates(mae, by="test")

    records = st.compare(pd.concat([hi_val, lo_val]), per_lr=False).records
    assert all(r.lr_a in (None, 1e-3) for r in records)


def test_failed_and_diverged_runs_are_counted_and_excluded():
    df = runs({"random": [1, 2, 3, 4, 5, 100, 200], "imagenet": [6, 7, 8, 9, 10]})
    df.loc[5, "status"] = "FAILED"
    df.loc[6, "diverged"] = True
    cs = st.compare(df, exclude_diverged=True)
    r = pick(cs, "mannwhitneyu")[0]
    assert r.n_a == 5 and r.p_raw == pytest.approx(2 / 252)
    assert r.note == "arm 'random': 1 failed, 1 diverged run(s) excluded"
    # By default the diverged run counts with its best checkpoint's value (200): 6 vs 5, U = 5;
    # P(U <= 5) = (1 + 1 + 2 + 3 + 5 + 7) / C(11, 5) = 19 / 462, two-sided p = 38 / 462.
    counted = pick(st.compare(df), "mannwhitneyu")[0]
    assert (counted.n_a, counted.n_b, counted.statistic) == (6, 5, 5.0)
    assert counted.p_raw == pytest.approx(38 / 462)
    assert counted.note == "arm 'random': 1 failed run(s) excluded; arm 'random': 1 diverged run(s) counted at their best checkpoint"
    as_text = st.compare(df.assign(diverged=df["diverged"].astype(str)), exclude_diverged=True)  # MLflow tags are text
    assert pick(as_text, "mannwhitneyu")[0] == r
    counts = cs.counts_frame().set_index("arm")
    assert counts.loc["random", ["n_runs", "n_finished", "n_failed", "n_diverged"]].tolist() == [
        7,
        6,
        1,
        1,
    ]
    all_bad = df.assign(status="FAILED")
    sel = st.select_learning_rates(all_bad)
    assert sel["lr"].isna().all() and (sel["n_runs"] == 0).all()
    rec = pick(st.compare(all_bad), "mannwhitneyu")[0]
    assert rec.p_raw is None and "no learning rate selectable" in rec.note


def test_per_lr_compares_at_every_learning_rate():
    df = pd.concat([runs(SEPARATED, lr=lr) for lr in (1e-3, 1e-4)])
    cs = st.compare(df, per_lr=True)
    pairs = pick(cs, "mannwhitneyu")
    assert sorted({r.lr_a for r in pairs}) == [1e-4, 1e-3] and len(pairs) == 6
    assert all(r.lr_a == r.lr_b for r in cs.records) and cs.per_lr


def test_bad_input_raises_typed_errors():
    with pytest.raises(ValueError, match="paper, recommended"):
        st.compare(runs(SEPARATED), mode="bayes")
    with pytest.raises(UserError, match="epochs_to_convergence"):
        st.compare(runs(SEPARATED).drop(columns="epochs_to_convergence"))
    with pytest.raises(UserError, match="task"):
        st.compare(runs(SEPARATED, task="mnist"))
    assert st.primary_metric("rsna-boneage") == ("mae", False)


def test_a_runs_table_made_before_the_glossary_names_the_arm_group():
    """Callers that built their table with a `group` column get the same records; the selection names
    the arm `arm` (lr_selection.csv publishes it as `group`, tested with the report)."""
    now = st.compare(runs(SEPARATED)).to_records()
    assert st.compare(runs(SEPARATED).rename(columns={"arm": "group"})).to_records() == now
    chosen = st.select_learning_rates(runs(SEPARATED))
    assert list(chosen.columns) == ["task", "arch", "arm", "lr", "metric", "mean_val", "n_runs"]
