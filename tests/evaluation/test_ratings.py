"""Reader-study ratings: known answers against direct scipy calls, the report's section, the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medtl.errors import UserError
from medtl.evaluation.figures import RatingsFigure
from medtl.evaluation.plots import ratings_png
from medtl.evaluation.reader_stats import analyse_ratings, ratings_summary
from medtl.evaluation.report import ratings_blocks
from medtl.evaluation.report_pages import to_markdown

SCORES = {
    ("domain", "r1"): [5, 4, 5, 4, 3, 5],
    ("domain", "r2"): [4, 4, 5, 3, 4, 5],
    ("imagenet", "r1"): [3, 4, 2, 3, 3, 4],
    ("imagenet", "r2"): [3, 2, 3, 4, 2, 3],
    ("random", "r1"): [1, 2, 2, 1, 3, 2],
    ("random", "r2"): [2, 1, 1, 2, 2, 3],
}


def _frame(task: str | None = "brain-tumor-mri") -> pd.DataFrame:
    rows = [
        {"arm": arm, "rater": rater, "score": s, "image": f"image-{i:02d}"}
        for (arm, rater), scores in SCORES.items()
        for i, s in enumerate(scores, 1)
    ]
    frame = pd.DataFrame(rows)
    if task:
        frame["task"], frame["arch"] = task, "resnet50"
    return frame


def test_per_arm_and_rater_figures_match_the_data():
    summary = ratings_summary(_frame())
    (model,) = summary["models"]
    assert summary["n"] == 36 and model["task"] == "brain-tumor-mri" and model["arch"] == "resnet50"
    assert model["arms"] == ["random", "imagenet", "domain"] and model["raters"] == ["r1", "r2"]
    cells = {(r["arm"], r["rater"]): r for r in model["per_arm_rater"]}
    for key, scores in SCORES.items():
        assert cells[key]["n"] == len(scores)
        assert cells[key]["mean"] == pytest.approx(np.mean(scores))
        assert cells[key]["median"] == pytest.approx(np.median(scores))
    pooled = {r["arm"]: r for r in model["per_arm"]}
    assert pooled["domain"]["mean"] == pytest.approx(np.mean(SCORES[("domain", "r1")] + SCORES[("domain", "r2")]))


def test_p_values_are_direct_scipy_calls_one_per_pair_bonferroni_capped():
    model = ratings_summary(_frame())["models"][0]
    pooled = {arm: np.array(SCORES[(arm, "r1")] + SCORES[(arm, "r2")], float) for arm in ("random", "imagenet", "domain")}
    h, p = stats.kruskal(*pooled.values())
    assert model["kruskal"]["statistic"] == pytest.approx(h) and model["kruskal"]["p"] == pytest.approx(p)
    pairs = {(r["group_a"], r["group_b"]): r for r in model["pairwise"]}
    assert set(pairs) == {("random", "imagenet"), ("random", "domain"), ("imagenet", "domain")}
    for (a, b), record in pairs.items():
        expected = stats.mannwhitneyu(pooled[a], pooled[b])
        assert record["statistic"] == pytest.approx(expected.statistic)
        assert record["p_raw"] == pytest.approx(expected.pvalue)
        assert record["p_adjusted"] == pytest.approx(min(1.0, 3 * expected.pvalue))
    # Identical arms: the raw p is large, and Bonferroni caps the adjusted one at exactly 1.
    same = pd.DataFrame({"arm": ["x"] * 4 + ["y"] * 4 + ["z"] * 4, "rater": "r", "score": [1, 2, 3, 4] * 3})
    capped = ratings_summary(same)["models"][0]["pairwise"]
    assert all(r["p_raw"] > 1 / 3 and r["p_adjusted"] == 1.0 for r in capped)


def test_without_task_columns_and_with_all_scores_equal():
    frame = pd.DataFrame({"arm": ["a", "b"] * 3, "rater": "r", "score": [3] * 6})
    (model,) = ratings_summary(frame)["models"]
    assert model["task"] is None and model["kruskal"]["p"] is None and model["kruskal"]["note"]
    assert "Kruskal–Wallis across arms: H = –, p = –" in to_markdown(ratings_blocks(analyse_ratings(frame), False))


def test_bad_tables_are_refused():
    with pytest.raises(UserError, match="expected arm, rater, score"):
        ratings_summary(pd.DataFrame({"arm": ["a"], "score": [3]}))
    with pytest.raises(UserError, match="not scores 1-5"):
        ratings_summary(pd.DataFrame({"arm": ["a", "b"], "rater": "r", "score": [3, 7]}))


def ratings_figure(frame: pd.DataFrame) -> bytes:
    rated = analyse_ratings(frame)
    return ratings_png(RatingsFigure("reader_ratings.png", tuple(rated.summary["models"]), rated.points))


def test_markdown_and_figure():
    rated = analyse_ratings(_frame())
    text = to_markdown(ratings_blocks(rated, True))
    assert "### brain-tumor-mri resnet50" in text and "| domain | r1 | 6 | 4.333 |" in text
    assert "![reader_ratings.png](plots/reader_ratings.png)" in text
    assert "| mannwhitneyu | random | imagenet | 12 | 12 | bonferroni | 3 |" in text
    (model,) = rated.summary["models"]
    assert [list(rated.points[0][(arm, "r1")]) for arm in model["arms"]] == [
        SCORES[(arm, "r1")] for arm in ("random", "imagenet", "domain")]
    png = ratings_figure(pd.concat([_frame(), _frame("grazpedwri-osteopenia")], ignore_index=True))
    assert png.startswith(b"\x89PNG") and len(png) > 2000
    assert ratings_png(RatingsFigure("reader_ratings.png", (), ())).startswith(b"\x89PNG")
