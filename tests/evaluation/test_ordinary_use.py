"""A store built the way ordinary use builds one: re-runs, an edited study file, a diverged run.

Every number is computed by hand from one run per grid point of one protocol (exact two-sided
Mann–Whitney U without ties: p = 2 P(U <= u) over the C(n_a + n_b, n_a) equally likely splits).
"""

from __future__ import annotations

import json
import math

import pytest

from medtl.evaluation.analysis import analyse
from medtl.evaluation.collect import collect
from medtl.evaluation.comparisons import compare_arms
from medtl.evaluation.figure_data import CURVE_EPOCHS
from medtl.evaluation.report import render
from medtl.evaluation.selection import MixedPretrainedError, select_runs
from medtl.mlops.cli import main
from medtl.training.spec import RunSpec

STUDY = "ordinary"
ARCH = "resnet18"
A = "resnet18 [max_epochs=4]"  # the study as first written
B = "resnet18 [max_epochs=50]"  # the study file edited to 50 epochs


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def tick(self) -> int:
        self.now += 1000
        return self.now


def _log(client, exp, clock, *, arm, seed, f1, max_epochs, status="FINISHED", diverged=False, version="",
         tag_fingerprint=False, epochs=3):
    from mlflow.entities import Metric, Param

    init = "domain" if arm == "domain" else arm
    spec = RunSpec(task="demo-binary", arch=ARCH, init=init, lr=1e-3, seed=seed, max_epochs=max_epochs,
                   patience=3, batch_size=8, image_size=32)
    params = {**spec.to_params(), "data_digest": "d1gest", "group": arm}  # the param before the glossary
    if version:
        params["init_resolved"] = version
    tags = {"medtl.stage": "finetune", "medtl.study": STUDY, "medtl.group": arm, "medtl.task": "demo-binary",
            "medtl.arch": ARCH, "medtl.run_key": spec.run_key}
    if tag_fingerprint:
        tags["medtl.fingerprint"] = spec.fingerprint("d1gest")
    start = clock.tick()
    rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
    metrics = {"best_val_f1": f1, "test_f1": f1, "epochs_to_convergence": epochs, "epochs_run": epochs + 1,
               "diverged": float(diverged), "emissions_kg": 1e-5, "duration_s": 1.0}
    client.log_batch(rid, metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()] if status == "FINISHED"
                     else [], params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(rid, status=status, end_time=clock.tick())
    return rid


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory):
    """Protocol A (max_epochs 4, no fingerprint tag: an old store) with re-runs and a diverged run;
    protocol B (max_epochs 50, tagged) from the edited study file."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("ordinary") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    exp = client.create_experiment(f"medtl/{STUDY}")
    clock = _Clock()
    aside = set()
    # First sweep of protocol A: older FINISHED copies that a re-run replaces (0.90 would flatter random).
    aside |= {_log(client, exp, clock, arm="random", seed=s, f1=0.90, max_epochs=4) for s in (0, 1)}
    aside.add(_log(client, exp, clock, arm="random", seed=2, f1=0.0, max_epochs=4, status="FAILED"))
    aside |= {_log(client, exp, clock, arm="domain", seed=s, f1=0.70 + 0.02 * s, max_epochs=4,
                   version="pretrained-resnet18/1") for s in range(5)}
    # The re-run (`medtl run --study`, a sweep after a crash): the copies that count.
    random_a = [0.50, 0.52, 0.54, 0.56, 0.58]
    domain_a = [0.71, 0.73, 0.75, 0.77, 0.55]  # seed 4 diverged; 0.55 is its best checkpoint's F1
    for s, v in enumerate(random_a):
        _log(client, exp, clock, arm="random", seed=s, f1=v, max_epochs=4)
    for s, v in enumerate(domain_a):
        _log(client, exp, clock, arm="domain", seed=s, f1=v, max_epochs=4, diverged=s == 4,
             version="pretrained-resnet18/1")
    # The edited study file: the same grid under max_epochs 50 — another protocol, never pooled with A.
    for s, v in enumerate([0.60, 0.62, 0.64, 0.66, 0.68]):
        _log(client, exp, clock, arm="random", seed=s, f1=v, max_epochs=50, tag_fingerprint=True)
    for s, v in enumerate([0.61, 0.63, 0.65, 0.67, 0.69]):
        _log(client, exp, clock, arm="domain", seed=s, f1=v, max_epochs=50, tag_fingerprint=True,
             version="pretrained-resnet18/1")
    return uri, aside


def _with_one_more_run(uri, path, **run):
    """A copy of the store at `path` with one more run, logged later than everything in it."""
    import shutil

    from mlflow.tracking import MlflowClient

    shutil.copy(uri.removeprefix("sqlite:///"), path)
    copy = f"sqlite:///{path}"
    client = MlflowClient(copy)
    exp = client.get_experiment_by_name(f"medtl/{STUDY}").experiment_id
    clock = _Clock()
    clock.now += 10**9
    _log(client, exp, clock, **run)
    return copy


def _pair(records, arch, metric="test_f1"):
    hits = [r for r in records if r["arch"] == arch and r["metric"] == metric and r["test"] == "mannwhitneyu"]
    assert len(hits) == 1, hits
    return hits[0]


def test_one_run_per_grid_point_one_protocol_per_cell(ordinary):
    uri, aside = ordinary
    data = collect(STUDY, uri)
    assert len(data.runs) == 28
    sel = select_runs(data.runs)
    assert set(sel.set_aside["run_id"]) == aside and sel.n_duplicates == 8
    assert set(sel.runs["arch"]) == {A, B}
    assert (sel.runs.groupby(["arch", "arm"]).size() == 5).all()
    # the fingerprint recomputed from params (protocol A, no tag) equals the one the runner would tag
    fp_a = RunSpec(task="demo-binary", arch=ARCH, max_epochs=4, patience=3, batch_size=8,
                   image_size=32).fingerprint("d1gest")
    assert set(sel.runs.loc[sel.runs["arch"] == A, "fingerprint"]) == {fp_a}


def test_hand_computed_n_and_p_values(ordinary):
    uri, _ = ordinary
    records = compare_arms(collect(STUDY, uri).runs, "paper").records()
    a = _pair(records, A)
    # A: random 0.50..0.58 vs domain {0.71, 0.73, 0.75, 0.77, 0.55}: U(random) = 2 (0.56 and 0.58
    # beat 0.55); P(U <= 2) = (1 + 1 + 2) / 252, p = 8 / 252 — not 0.0002 from n = 10 per arm.
    assert (a["n_a"], a["n_b"], a["statistic"]) == (5, 5, 2.0)
    assert a["p_raw"] == pytest.approx(8 / 252) and a["p_adjusted"] == pytest.approx(8 / 252)
    assert a["n_duplicates_set_aside"] == 8 and a["diverged_runs"] == "counted"
    assert "1 diverged run(s) counted at their best checkpoint" in a["note"]
    b = _pair(records, B)
    # B: interleaved, U(random) = 10; P(U <= 10) = 87 / 252 (partitions of 0..10 in a 5x5 box:
    # 1+1+2+3+5+7+9+11+14+16+18), p = 174 / 252.
    assert (b["n_a"], b["n_b"], b["statistic"]) == (5, 5, 10.0)
    assert b["p_raw"] == pytest.approx(174 / 252)
    assert b["n_duplicates_set_aside"] == 0 and b["protocol"] == "max_epochs=50" and a["protocol"] == "max_epochs=4"
    assert a["fingerprint"] != b["fingerprint"]


def test_exclude_diverged_reproduces_the_old_behaviour(ordinary):
    uri, _ = ordinary
    records = compare_arms(collect(STUDY, uri).runs, "paper", exclude_diverged=True).records()
    a = _pair(records, A)
    # domain without seed 4: 4 vs 5, complete separation, p = 2 / C(9, 4) = 2 / 126.
    assert (a["n_a"], a["n_b"]) == (5, 4) and a["p_raw"] == pytest.approx(2 / 126)
    assert a["diverged_runs"] == "excluded" and "1 diverged run(s) excluded" in a["note"]


def test_report_and_cli_say_what_was_set_aside(ordinary, tmp_path, capsys):
    uri, aside = ordinary
    out = tmp_path / "rep"
    assert main(["evaluate", "--study", STUDY, "--tracking-uri", uri, "--no-log", "--out", str(out),
                 "--ui-url", "http://127.0.0.1:5999"]) == 0
    printed = capsys.readouterr().out
    assert "one run per grid point (8 duplicate run(s) set aside)" in printed
    assert f"demo-binary / {A}: domain is best on f1" in printed and "p adj. random 0.032" in printed
    assert f"demo-binary / {B}: domain is best on f1" in printed and "not significant (p adj. random 0.69)" in printed
    listed = (out / "set_aside.csv").read_text().splitlines()
    assert len(listed) == 1 + 8 and {line.split(",")[0] for line in listed[1:]} == aside
    md = (out / "report.md").read_text()
    assert "8 duplicate run(s) of a grid point set aside" in md and "## Runs set aside (8)" in md
    assert "diverged runs counted at their best checkpoint" in md
    assert md.index("## Verdict") < md.index("## Results on the test set")
    assert "(http://127.0.0.1:5999/#/experiments/" in md
    records = json.loads((out / "comparisons.json").read_text())
    assert {r["n_duplicates_set_aside"] for r in records if r["arch"] == A} == {8}
    assert main(["evaluate", "--study", STUDY, "--tracking-uri", uri, "--no-log", "--out", str(out),
                 "--exclude-diverged"]) == 0
    assert "diverged runs excluded (--exclude-diverged)" in capsys.readouterr().out


def test_a_domain_arm_from_two_pretrained_versions_is_refused(ordinary, tmp_path, capsys):
    uri, _ = ordinary
    # later than everything: this re-run of seed 0 counts
    mixed = _with_one_more_run(uri, tmp_path / "mixed.db", arm="domain", seed=0, f1=0.72, max_epochs=50,
                               tag_fingerprint=True, version="pretrained-resnet18/2")
    out = tmp_path / "x"
    assert main(["evaluate", "--study", STUDY, "--tracking-uri", mixed, "--no-log", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 pretrained versions" in err and "--allow-mixed-pretrained" in err
    assert "pretrained-resnet18/1: 4 run(s), pretrained-resnet18/2: 1 run(s)" in err
    assert not out.exists()
    with pytest.raises(MixedPretrainedError):
        select_runs(collect(STUDY, mixed).runs)
    allowed = analyse(collect(STUDY, mixed, primary_only=True, max_step=CURVE_EPOCHS), "paper",
                      allow_mixed_pretrained=True)
    assert any("pools 2 pretrained versions" in n for n in allowed.selection.notes)
    render(allowed, tmp_path / "ok", figures=False)
    assert "pools 2 pretrained versions" in (tmp_path / "ok" / "report.md").read_text()


def test_clean_store_is_left_as_it_was(synthetic_store):
    """No duplicates, one protocol: nothing set aside, no labels, and with --exclude-diverged the
    records are exactly the per-fraction comparisons of the raw runs (the numbers before this change)."""
    from medtl.evaluation.stats import compare
    from medtl.evaluation.stats_records import INTERVAL_KEYS, RECORD_KEYS

    runs = collect("synth", synthetic_store.uri).runs
    sel = select_runs(runs)
    assert sel.n_duplicates == 0 and set(sel.runs["protocol"]) == {""} and len(sel.runs) == len(runs)
    for mode in ("paper", "recommended"):
        got = compare_arms(runs, mode, exclude_diverged=True).records()
        full = runs[runs["data_fraction"].fillna(1.0) == 1.0]
        want = compare(full, mode, exclude_diverged=True).to_records()
        assert [{k: r[k] for k in (*RECORD_KEYS, *INTERVAL_KEYS)} for r in got if r["data_fraction"] == 1.0] == want


def _by_hand(values, q, rows):
    """The q-th percentile (numpy's linear rule) of the means of `values` over the index rows, by hand."""
    means = sorted(sum(values[i] for i in row) / len(row) for row in rows.tolist())
    position = q / 100 * (len(means) - 1)
    below = int(position)
    return means[below] + (means[min(below + 1, len(means) - 1)] - means[below]) * (position - below)


def test_intervals_in_summary_comparisons_and_report_match_a_hand_computation(ordinary, tmp_path):
    """Protocol A's arms at full data: each mean's and the difference's 95 % percentile bootstrap (2,000
    resamples from seed 0, the documented draws), computed here by hand; a one-seed arm has none."""
    import numpy as np
    import pandas as pd

    from medtl.evaluation.uncertainty import RESAMPLES, SEED

    uri, _ = ordinary
    copy = _with_one_more_run(uri, tmp_path / "one-seed.db", arm="imagenet", seed=0, f1=0.66, max_epochs=4)
    out = tmp_path / "rep"
    assert main(["evaluate", "--study", STUDY, "--tracking-uri", copy, "--no-log", "--out", str(out)]) == 0

    random_a = [0.50, 0.52, 0.54, 0.56, 0.58]
    domain_a = sorted([0.71, 0.73, 0.75, 0.77, 0.55])  # each arm's values are resampled in sorted order
    rows = np.random.default_rng(SEED).integers(0, 5, size=(RESAMPLES, 5))
    summary = pd.read_csv(out / "summary.csv")
    f1 = summary[(summary["arch"] == A) & (summary["metric"] == "test_f1")].set_index("group")
    assert f1.at["random", "ci_low"] == pytest.approx(_by_hand(random_a, 2.5, rows), abs=1e-12)
    assert f1.at["random", "ci_high"] == pytest.approx(_by_hand(random_a, 97.5, rows), abs=1e-12)
    assert f1.at["domain", "ci_low"] == pytest.approx(_by_hand(domain_a, 2.5, rows), abs=1e-12)
    assert (f1.at["random", "ci_resamples"], f1.at["random", "ci_seed"]) == (RESAMPLES, SEED)
    assert f1.at["random", "ci_method"] == "percentile bootstrap over seeds"
    assert math.isnan(f1.at["imagenet", "ci_low"]) and f1.at["imagenet", "ci_note"] == "fewer than 2 seeds (n=1): no interval"

    rng = np.random.default_rng(SEED)
    first, second = rng.integers(0, 5, size=(RESAMPLES, 5)), rng.integers(0, 5, size=(RESAMPLES, 5))
    diffs = sorted(sum(random_a[i] for i in r) / 5 - sum(domain_a[j] for j in d) / 5
                   for r, d in zip(first.tolist(), second.tolist(), strict=True))
    position = 0.025 * (RESAMPLES - 1)
    low = diffs[int(position)] + (diffs[int(position) + 1] - diffs[int(position)]) * (position - int(position))
    records = json.loads((out / "comparisons.json").read_text())
    (pair,) = [r for r in records if r["arch"] == A and r["metric"] == "test_f1" and r["test"] == "mannwhitneyu"
               and (r["group_a"], r["group_b"]) == ("random", "domain")]
    assert pair["mean_diff"] == pytest.approx(np.mean(random_a) - np.mean(domain_a))
    assert pair["diff_ci_low"] == pytest.approx(low, abs=1e-12) and pair["diff_ci_high"] < 0
    assert pair["p_raw"] == pytest.approx(8 / 252)  # the paper's p-value is still there, beside the interval
    assert pair["p_adjusted"] == pytest.approx(min(1.0, 3 * 8 / 252))  # three pairs now: Bonferroni x 3
    lonely = [r for r in records if r["arch"] == A and r["test"] == "mannwhitneyu" and "imagenet" in (r["group_a"], r["group_b"])
              and r["metric"] == "test_f1"]
    assert lonely and all(r["diff_ci_low"] is None and r["diff_ci_note"] == "fewer than 2 seeds (n=1): no interval"
                          for r in lonely)
    md = (out / "report.md").read_text()
    assert f"[{_by_hand(random_a, 2.5, rows):.3g}, {_by_hand(random_a, 97.5, rows):.3g}]" in md
    assert "[no interval: fewer than 2 seeds (n=1)]" in md and "(percentile bootstrap over seeds, 2,000 resamples, seed 0)" in md
