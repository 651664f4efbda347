"""The HTTP service: same numbers as the report files, validated parameters, GET/HEAD only, caching."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import urllib.error
import urllib.request

import pandas as pd
import pytest

from medtl.evaluation.analysis import analyse_study
from medtl.evaluation.report import render
from medtl.evaluation.service import EvaluationService, make_server

from .conftest import STUDY


@pytest.fixture(scope="module")
def server(synthetic_store):
    srv = make_server(EvaluationService(synthetic_store.uri), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def files(synthetic_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    render(analyse_study(STUDY, synthetic_store.uri, "paper", second_mode=False), out, figures=False)  # numbers only
    return out


def call(url, method="GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url):
    status, headers, body = call(url)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_health_studies_openapi(server):
    assert get_json(f"{server}/health")[1]["status"] == "ok"
    assert get_json(f"{server}/studies") == (200, {"studies": ["other", "synth"]})
    status, spec = get_json(f"{server}/openapi.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    assert {"/studies", "/studies/{study}/summary", "/studies/{study}/comparisons",
            "/studies/{study}/report.html", "/health", "/openapi.json"} == set(spec["paths"])


def test_summary_matches_summary_csv(server, files):
    status, body = get_json(f"{server}/studies/{STUDY}/summary")
    assert status == 200
    served = pd.DataFrame(body["rows"])
    csv = pd.read_csv(files / "summary.csv")
    assert len(served) == len(csv)
    pd.testing.assert_frame_equal(
        served[list(csv.columns)].astype({"lr": float, "data_fraction": float}), csv,
        check_dtype=False, rtol=1e-12,
    )
    assert served["ci_low"].notna().any() and (served["ci_resamples"] == 2000).all()  # every mean's interval
    status, part = get_json(f"{server}/studies/{STUDY}/summary?task=demo-binary&arch=resnet18&metric=test_f1")
    assert status == 200 and part["rows"]
    assert {(r["task"], r["arch"], r["metric"]) for r in part["rows"]} == {("demo-binary", "resnet18", "test_f1")}


def test_comparisons_match_comparisons_json(server, files):
    status, body = get_json(f"{server}/studies/{STUDY}/comparisons")
    assert status == 200 and body["mode"] == "paper"
    assert body["records"] == json.loads((files / "comparisons.json").read_text())
    pairs = [r for r in body["records"] if r["test"] == "mannwhitneyu" and r["n_a"] >= 2 and r["n_b"] >= 2]
    assert pairs and all(r["diff_ci_low"] <= r["mean_diff"] <= r["diff_ci_high"] for r in pairs)
    status, some = get_json(f"{server}/studies/{STUDY}/comparisons?test=kruskal&metric=test_mae&mode=paper")
    assert status == 200 and {(r["test"], r["metric"]) for r in some["records"]} == {("kruskal", "test_mae")}
    status, rec = get_json(f"{server}/studies/{STUDY}/comparisons?mode=recommended&task=demo-binary")
    assert status == 200 and {r["test"] for r in rec["records"]} == {"permutation"}


def test_report_html(server):
    status, headers, body = call(f"{server}/studies/{STUDY}/report.html")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"Study synth" in body and b"data:image/png;base64," in body
    status, headers, head = call(f"{server}/studies/{STUDY}/report.html", method="HEAD")
    assert status == 200 and head == b"" and int(headers["Content-Length"]) == len(body)


def test_unknown_study_is_404_with_known_ones(server):
    status, body = get_json(f"{server}/studies/nope/summary")
    assert status == 404 and body["known"] == ["other", "synth"]


@pytest.mark.parametrize(
    "query",
    ["?foo=1", "?task=nope", "?task=../etc/passwd", "?metric=/etc/passwd", "?arch=resnet18&arch=vgg16",
     "?metric=test_f1;rm", "?mode=paper"],
)
def test_bad_summary_parameters_are_400(server, query):
    status, body = get_json(f"{server}/studies/{STUDY}/summary{query}")
    assert status == 400 and body["error"]


@pytest.mark.parametrize(
    "path",
    ["/studies/..%2F..%2Fetc%2Fpasswd/summary", "/studies/%2Fetc%2Fpasswd/summary",
     "/studies/../etc/passwd", "/studies/synth/../../etc/passwd", "/studies/synth/summary/x",
     "/studies?file=/etc/passwd", "/studies/synth/comparisons?test=../../x"],
)
def test_paths_in_requests_are_refused(server, path):
    status, _, body = call(f"{server}{path}")
    assert status in (400, 404)
    assert b"root:" not in body


def test_only_get_and_head(server):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = call(f"{server}/studies", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD" and json.loads(body)["error"]


def test_cache_follows_the_store(synthetic_store, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copy(synthetic_store.path, db)
    service = EvaluationService(f"sqlite:///{db}")
    calls = []
    original = service._data

    def counted(study):
        calls.append(study)
        return original(study)

    service._data = counted
    query = f"/studies/{STUDY}/summary?task=demo-binary&arch=resnet18&metric=test_f1"
    first = json.loads(service.handle("GET", query).body)["rows"]
    assert json.loads(service.handle("GET", query).body)["rows"] == first
    assert len(calls) == 1  # the second answer came from the cache
    rid = first[0]["best_run_id"]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE latest_metrics SET value = value + 1 WHERE run_uuid = ? AND key = 'test_f1'",
                     (rid,))
    again = json.loads(service.handle("GET", query).body)["rows"]
    assert again[0]["mean"] == pytest.approx(first[0]["mean"] + 1 / first[0]["n"])
