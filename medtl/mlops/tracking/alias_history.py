"""The history of a registered model's aliases: an append-only log of registered-model tags, one tag an entry.

Every promotion decision — a move by the gate, a forced move, a refusal, a "kept" — is one entry: key
`medtl.alias_log.<UTC nanoseconds, 20 digits>.<8 random hex>` (sorted keys are chronological; two
processes never write the same key, so nothing is overwritten), value one compact JSON object. One tag
per entry keeps every value far below MLflow's limit for registered-model tags (a 5,000-character
column in its SQL schema, `MAX_ENTRY_CHARS` here) however many moves a model sees; an entry whose
evidence would not fit is stored with that evidence shortened and says so. The version that gains an
alias also carries it in model-version tags (`medtl.alias.<alias>.since/from/reason/by`), the version
that loses it `medtl.alias.<alias>.until`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow.tracking import MlflowClient

from medtl.errors import UserError

LOG_TAG_PREFIX = "medtl.alias_log."
MAX_ENTRY_CHARS = 4000
_clock = threading.Lock()
_last_ns = 0


@dataclass(frozen=True)
class Entry:
    """One decision about one alias of one registered model."""

    time: str
    model: str
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    candidate_run: str
    candidate_version: str | None
    by: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    medtl: str = ""
    key: str = ""

    def line(self) -> str:
        """One human-readable line: when, what, which versions, who, why."""
        if self.action in ("moved", "forced"):
            what = f"{self.alias}: {self.from_version or 'none'} -> {self.to_version}"
        else:
            held = self.from_version or "none"
            candidate = f"version {self.candidate_version}" if self.candidate_version else f"run {self.candidate_run}"
            what = f"{self.alias} stays at {held} (candidate {candidate})"
        study = f" [study {self.study}]" if self.study else ""
        return f"{self.time}  {self.action:<7}  {what}  by {self.by}{study}: {self.reason}"


def _now_ns() -> int:
    """UTC nanoseconds, strictly increasing within this process (keys sort in the order entries were made)."""
    global _last_ns
    with _clock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def new_entry(**fields: Any) -> Entry:
    """An Entry stamped now (ISO time in UTC) with a fresh, sortable key."""
    ns = _now_ns()
    stamp = datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Entry(time=stamp, key=f"{LOG_TAG_PREFIX}{ns:020d}.{secrets.token_hex(4)}", **fields)


def encode(entry: Entry) -> str:
    """The tag value: compact JSON, at most MAX_ENTRY_CHARS (evidence shortened, then dropped, to fit)."""
    record = {k: v for k, v in asdict(entry).items() if k != "key"}
    text = json.dumps(record, separators=(",", ":"), allow_nan=False, default=str)
    if len(text) <= MAX_ENTRY_CHARS:
        return text
    record["evidence"] = {k: v for k, v in entry.evidence.items() if k in ("metric", "margin", "improvement")}
    record["evidence"]["truncated"] = True
    record["reason"] = entry.reason[:1000]
    text = json.dumps(record, separators=(",", ":"), allow_nan=False, default=str)
    if len(text) > MAX_ENTRY_CHARS:
        record["evidence"] = {"truncated": True}
        record["reason"] = entry.reason[:500]
        text = json.dumps(record, separators=(",", ":"), allow_nan=False, default=str)
    return text


def append(client: MlflowClient, entry: Entry) -> str:
    """Append `entry` to its model's history (one new registered-model tag); returns the tag key."""
    client.set_registered_model_tag(entry.model, entry.key, encode(entry))
    return entry.key


def read(client: MlflowClient, name: str) -> list[Entry]:
    """Every entry of `name`'s history, oldest first.

    Raises:
        UserError: `name` is not a registered model (the message lists the registered ones).
    """
    try:
        model = client.get_registered_model(name)
    except Exception:
        known = sorted(m.name for m in client.search_registered_models(max_results=1000))
        listed = ", ".join(known) or "none"
        raise UserError(f"no registered model {name!r}; registered models: {listed}") from None
    entries = []
    for key in sorted(k for k in model.tags if k.startswith(LOG_TAG_PREFIX)):
        record = json.loads(model.tags[key])
        known_fields = {k: v for k, v in record.items() if k in Entry.__dataclass_fields__}
        entries.append(Entry(**{**known_fields, "key": key}))
    return entries
