"""Read-only HTTP service over a tracking store's studies: JSON summaries, comparisons, the report."""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from medtl.errors import UserError
from medtl.evaluation.analysis import Analysis, analyse
from medtl.evaluation.collect import (
    STUDY_NAME,
    UnknownStudyError,
    collect,
    fingerprint,
    list_studies,
    mask_uri,
)
from medtl.evaluation.figure_data import CURVE_EPOCHS
from medtl.evaluation.formatting import published
from medtl.evaluation.predictions import PredictionsReader
from medtl.evaluation.reader_ratings import collect_ratings
from medtl.evaluation.report import render
from medtl.evaluation.stats import MODES
from medtl.evaluation.summaries import EXTRA_SUMMARY
from medtl.training import schema as S
from medtl.training.spec import TEST_METRICS, Arch, Task

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TEST_COLUMNS = sorted({f"test_{m}" for ms in TEST_METRICS.values() for m in ms})
SUMMARY_METRICS = (*TEST_COLUMNS, *EXTRA_SUMMARY)
COMPARISON_METRICS = (*TEST_COLUMNS, "epochs_to_convergence")
TESTS = ("levene", "kruskal", "mannwhitneyu", "ttest", "permutation")
ALLOWED_METHODS = "GET, HEAD"
# Host headers answered unless told otherwise (DNS-rebinding protection: a web page elsewhere
# cannot make a browser on this machine read the service through a name the page controls).
ALLOWED_HOSTS_ENV = "MEDTL_ALLOWED_HOSTS"
DEFAULT_ALLOWED_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[[]::1]", "[[]::1]:*")
_CHOICES: dict[str, tuple[str, ...]] = {
    "task": tuple(t.value for t in Task),
    "arch": tuple(a.value for a in Arch),
    "test": TESTS,
    "mode": MODES,
}


class HttpError(Exception):
    """An error answer: HTTP status and a JSON body."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


@dataclass(frozen=True)
class Response:
    """Status, content type and body of one answer."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class EvaluationService:
    """Answers requests from a tracking store from one `Analysis` per (study, mode), cached until the
    store's fingerprint for the study changes (one cheap query per request)."""

    def __init__(self, tracking_uri: str | None = None, allowed_hosts: tuple[str, ...] | None = None) -> None:
        self.tracking_uri = S.resolve_tracking_uri(tracking_uri)
        if allowed_hosts is None:
            configured = os.environ.get(ALLOWED_HOSTS_ENV, "")
            allowed_hosts = tuple(h.strip() for h in configured.split(",") if h.strip()) or DEFAULT_ALLOWED_HOSTS
        if "*" in allowed_hosts:
            raise UserError(f"{ALLOWED_HOSTS_ENV} may not allow every host ('*'); list the names the service is reached by")
        self.allowed_hosts = tuple(allowed_hosts)
        self._cache: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._lock = threading.RLock()
        self._routes: dict[str, tuple[dict[str, tuple[str, ...]], Callable[..., Response]]] = {
            "summary": ({**_pick("task", "arch"), "metric": SUMMARY_METRICS}, self._summary),
            "comparisons": (
                {**_pick("task", "arch", "test", "mode"), "metric": COMPARISON_METRICS},
                self._comparisons,
            ),
            "report.html": (_pick("mode"), self._report),
        }

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request's Host header names this service (patterns as `fnmatch`, e.g. `localhost:*`)."""
        host = (host or "").strip().lower()
        return bool(host) and any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.allowed_hosts)

    # ------------------------------------------------------------ dispatch

    def handle(self, method: str, target: str) -> Response:
        """Answer one request (`target` is the request line's path with its query string)."""
        try:
            if method not in ("GET", "HEAD"):
                raise HttpError(405, f"method {method} not allowed; use GET or HEAD")
            parts = urlsplit(target)
            query = self._query(parts.query)
            segments = [unquote(s) for s in parts.path.split("/")[1:]]
            if segments in (["health"], ["openapi.json"], ["studies"]):
                self._only(query, {})
                if segments == ["health"]:
                    return _json({"status": "ok", "tracking_uri": mask_uri(self.tracking_uri)})
                if segments == ["openapi.json"]:
                    return _json(OPENAPI)
                return _json({"studies": list_studies(self.tracking_uri)})
            if len(segments) == 3 and segments[0] == "studies" and segments[2] in self._routes:
                allowed, route = self._routes[segments[2]]
                study = _study_name(segments[1])
                self._only(query, allowed)
                return route(study, query)
            raise HttpError(404, f"no such resource {parts.path!r}; see /openapi.json")
        except HttpError as exc:
            headers = (("Allow", ALLOWED_METHODS),) if exc.status == 405 else ()
            return _json(exc.body, exc.status, headers)
        except UnknownStudyError as exc:
            return _json({"error": str(exc), "known": list_studies(self.tracking_uri)}, 404)
        except UserError as exc:
            return _json({"error": str(exc)}, 503)
        except Exception as exc:  # never leak a traceback to a client
            log.exception("request %s %s failed", method, target)
            return _json({"error": f"internal error ({type(exc).__name__})"}, 500)

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        try:
            raw = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=20)
        except ValueError as exc:
            raise HttpError(400, f"malformed query string: {exc}") from None
        repeated = sorted(k for k, v in raw.items() if len(v) > 1)
        if repeated:
            raise HttpError(400, f"query parameter {repeated[0]!r} given more than once")
        return {k: v[0] for k, v in raw.items()}

    @staticmethod
    def _only(query: dict[str, str], allowed: dict[str, tuple[str, ...]]) -> None:
        unknown = sorted(set(query) - set(allowed))
        if unknown:
            valid = ", ".join(sorted(allowed)) or "none"
            raise HttpError(400, f"unknown query parameter {unknown[0]!r}; valid: {valid}")
        for name, value in query.items():
            choices = allowed[name]
            if value not in choices:
                raise HttpError(400, f"invalid {name} {value!r}; valid: {', '.join(choices)}")

    # ------------------------------------------------------------ cached computations

    def _cached(self, study: str, what: str, build: Callable[[], Any]) -> Any:
        token = fingerprint(study, self.tracking_uri)
        with self._lock:
            hit = self._cache.get((study, what))
            if hit is not None and hit[0] == token:
                return hit[1]
            value = build()
            self._cache[(study, what)] = (token, value)
            return value

    def _data(self, study: str) -> Any:
        """The study's runs, histories and reader-study ratings, read once for every mode."""
        return self._cached(study, "data", lambda: (
            collect(study, self.tracking_uri, primary_only=True, max_step=CURVE_EPOCHS),
            collect_ratings(self.tracking_uri, study),
        ))

    def _analysis(self, study: str, mode: str) -> Analysis:
        """The study's analysis in `mode`: what every route answers with (one main mode, as asked)."""
        def build() -> Analysis:
            data, ratings = self._data(study)
            return analyse(data, mode, second_mode=False, ratings=ratings,
                           predictions=PredictionsReader(self.tracking_uri))

        return self._cached(study, f"analysis:{mode}", build)

    # ------------------------------------------------------------ routes

    def _summary(self, study: str, query: dict[str, str]) -> Response:
        table = self._cached(study, "summary", lambda: _records(published(self._analysis(study, "paper").summary)))
        rows = [r for r in table if all(r[k] == v for k, v in query.items())]
        return _json({"study": study, "rows": rows})

    def _comparisons(self, study: str, query: dict[str, str]) -> Response:
        mode = query.get("mode", "paper")
        records = self._analysis(study, mode).main.records()
        filters = {k: v for k, v in query.items() if k != "mode"}
        rows = [r for r in records if all(r[k] == v for k, v in filters.items())]
        return _json({"study": study, "mode": mode, "records": _safe(rows)})

    def _report(self, study: str, query: dict[str, str]) -> Response:
        mode = query.get("mode", "paper")

        def build() -> bytes:
            with tempfile.TemporaryDirectory(prefix="medtl-report-") as tmp:
                render(self._analysis(study, mode), Path(tmp))
                return (Path(tmp) / "report.html").read_bytes()

        return Response(200, "text/html; charset=utf-8", self._cached(study, f"html:{mode}", build))


def _pick(*names: str) -> dict[str, tuple[str, ...]]:
    return {n: _CHOICES[n] for n in names}


def _study_name(value: str) -> str:
    if not STUDY_NAME.fullmatch(value) or value in (".", ".."):
        raise HttpError(400, f"invalid study name {value!r}: letters, digits, '_', '.', '-' only")
    return value


def _safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value


def _records(frame: Any) -> list[dict[str, Any]]:
    out = json.loads(frame.to_json(orient="records", double_precision=15))
    return _safe(out)


def _json(body: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    data = json.dumps(_safe(body), allow_nan=False, separators=(",", ":")).encode()
    return Response(status, "application/json", data, headers)


class _Handler(BaseHTTPRequestHandler):
    service: EvaluationService
    server_version = "medtl-evaluation"

    def _answer(self) -> None:
        host = self.headers.get("Host")
        if self.service.host_allowed(host):
            response = self.service.handle(self.command, self.path)
        else:
            response = _json({"error": f"host {str(host)[:100]!r} is not served here; allowed: "
                                       f"{', '.join(self.service.allowed_hosts)} ({ALLOWED_HOSTS_ENV})"}, 403)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.info("%s %s", self.address_string(), format % args)


def make_server(
    service: EvaluationService, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> ThreadingHTTPServer:
    """A threading HTTP server bound to (host, port) answering with `service` (port 0: any free)."""
    handler = type("Handler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _param(name: str, description: str, enum: tuple[str, ...]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", "enum": list(enum)}}


_STUDY = {"name": "study", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": STUDY_NAME.pattern}}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {"400": _ERROR, "404": _ERROR, "405": _ERROR}


def _ok(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {media: {"schema": schema}}}, **_ERRORS}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "medtl evaluation service", "version": "1.0.0",
             "description": "Read-only view of the studies in an MLflow tracking store. Only GET and HEAD; "
                            "unknown query parameters and values outside the listed enums answer 400."},
    "paths": {
        "/health": {"get": {"summary": "liveness", "responses": _ok({"type": "object"})}},
        "/studies": {"get": {"summary": "study names (experiments medtl/<study>)",
                             "responses": _ok({"type": "object", "properties": {
                                 "studies": {"type": "array", "items": {"type": "string"}}}})}},
        "/studies/{study}/summary": {"get": {
            "summary": "summary.csv rows: per task, arch, arm, lr, fraction and metric, each mean with its "
                       "95 % bootstrap interval over seeds (ci_low, ci_high, ci_resamples, ci_seed, ci_note)",
            "parameters": [_STUDY, _param("task", "task name", _CHOICES["task"]),
                           _param("arch", "architecture", _CHOICES["arch"]),
                           _param("metric", "summary metric", SUMMARY_METRICS)],
            "responses": _ok({"type": "object", "properties": {
                "study": {"type": "string"}, "rows": {"type": "array", "items": {"type": "object"}}}})}},
        "/studies/{study}/comparisons": {"get": {
            "summary": "comparisons.json records of one mode, pairs with mean_diff and its 95 % bootstrap "
                       "interval over seeds (diff_ci_low, diff_ci_high)",
            "parameters": [_STUDY, _param("task", "task name", _CHOICES["task"]),
                           _param("arch", "architecture", _CHOICES["arch"]),
                           _param("metric", "compared metric", COMPARISON_METRICS),
                           _param("test", "statistical test", TESTS),
                           _param("mode", "analysis mode (default paper)", MODES)],
            "responses": _ok({"type": "object", "properties": {
                "study": {"type": "string"}, "mode": {"type": "string"},
                "records": {"type": "array", "items": {"type": "object"}}}})}},
        "/studies/{study}/report.html": {"get": {
            "summary": "the self-contained HTML report",
            "parameters": [_STUDY, _param("mode", "analysis mode (default paper)", MODES)],
            "responses": _ok({"type": "string"}, "text/html")}},
        "/openapi.json": {"get": {"summary": "this description", "responses": _ok({"type": "object"})}},
    },
    "components": {"schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "known": {"type": "array", "items": {"type": "string"}}}}}},
}
