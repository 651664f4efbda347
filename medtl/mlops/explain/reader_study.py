"""The blinded reader study of Grad-CAM heatmaps: packets for raters, rating import, rating collection.

A packet shows each image's heatmaps under the labels a, b, c… in an order shuffled per image; the
key (image, label) → arm lives only in the gradcam run (artifact `reader/key.json`), never in the
packet. Ratings come back as `rating_sheet.csv`, are checked whole, joined with the key and logged
as `reader/ratings-<rater>.csv` in the same run.
"""

from __future__ import annotations

import csv
import io
import json
import re
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from medtl.atomic import atomic_dir
from medtl.errors import UserError
from medtl.evaluation.reader_ratings import KEY_PATH, RATINGS_COLUMNS, read_key
from medtl.mlops.explain.gradcam import sample_name
from medtl.training import schema as S

SHEET = "rating_sheet.csv"
SHEET_COLUMNS = ("image", "label", "score", "comment")
RATER = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAX_SHOWN = 8
INSTRUCTIONS = """Heatmap rating packet

Each folder image-NN holds one test image (image.png) and the heatmaps of several models
(a.png, b.png, ...) drawn over it: warm colours mark where a model looked.
The letters are shuffled for every image, so a letter says nothing about which model made it.

Rate every heatmap in rating_sheet.csv, column score, with a whole number from 1 to 5:
  1 = the model concentrated on entirely irrelevant areas
  5 = the model focused solely on the relevant regions
Leave no row out. The comment column is free text for any observation (optional).
Return the filled rating_sheet.csv.
"""


class ReaderError(UserError):
    """A gradcam run, packet folder or rating sheet that cannot be used; the message says why."""


@dataclass(frozen=True)
class Packet:
    out: Path
    images: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Imported:
    rater: str
    rows: int
    replaced: bool
    means: dict[str, float]


def gradcam_arms(client: MlflowClient, run_id: str) -> tuple[Any, dict[str, str]]:
    """The gradcam run and its arms (arm → the fine-tuning run it explains); ReaderError if not one."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ReaderError(f"no MLflow run {run_id!r} in this tracking store; pass the id `medtl gradcam` printed") from None
    if run.data.tags.get(S.STAGE_TAG) != S.Stage.GRADCAM.value:
        stage = run.data.tags.get(S.STAGE_TAG, "none")
        raise ReaderError(f"run {run_id} is a {stage} run, not a gradcam run (tag {S.STAGE_TAG}={S.Stage.GRADCAM.value})")
    arms = {k.removeprefix(S.EXPLAINS_TAG_PREFIX): v for k, v in run.data.tags.items() if k.startswith(S.EXPLAINS_TAG_PREFIX)}
    if len(arms) < 2:
        raise ReaderError(f"gradcam run {run_id} explains {len(arms)} arm(s); a reader study needs at least two")
    return run, arms


def make_key(arms: list[str], n_images: int, seed: int) -> dict[str, Any]:
    """Per image, a seeded shuffle of the arms onto the labels a, b, c…."""
    import numpy as np

    ordered = S.arm_order(arms)
    labels = list(string.ascii_lowercase[: len(ordered)])
    rng = np.random.default_rng(seed)
    images = {}
    for number in range(1, n_images + 1):
        order = rng.permutation(len(ordered))
        images[_image_name(number, n_images)] = {
            "sample": sample_name(number, n_images),
            "labels": {label: ordered[int(i)] for label, i in zip(labels, order)},
        }
    return {"seed": seed, "labels": labels, "images": images}


def _image_name(number: int, total: int) -> str:
    return f"image-{number:0{max(2, len(str(total)))}d}"


def write_packet(run_id: str, out: str | Path, *, seed: int = 0, tracking_uri: str | None = None) -> Packet:
    """Write the blinded packet of gradcam run `run_id` into the new or empty folder `out`.

    The whole packet is built beside `out` and renamed into place, so a failure leaves nothing.
    The key is logged to the run as `reader/key.json`; a run that already holds a different key
    (another seed) is refused, so packets handed out earlier stay valid.

    Raises:
        ReaderError: not a gradcam run, `out` not empty, or a key from another seed exists.
    """
    from medtl.training.gradcam import read_png, save_png

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReaderError(f"{out} exists and is not an empty folder; choose a new --out")
    client = MlflowClient(S.resolve_tracking_uri(tracking_uri))
    run, arms = gradcam_arms(client, run_id)
    n_images = int(run.data.params.get("n_images", "0"))
    if n_images < 1:
        raise ReaderError(f"gradcam run {run_id} records no images (param n_images)")
    key = make_key(list(arms), n_images, seed)
    existing = read_key(client, run_id)
    if existing is not None and existing != key:
        raise ReaderError(
            f"gradcam run {run_id} already holds a reader key made with --seed {existing.get('seed')}; "
            "use that seed so packets handed out earlier keep matching"
        )
    with atomic_dir(out) as build:
        with tempfile.TemporaryDirectory(prefix="medtl-reader-") as tmp:
            client.download_artifacts(run_id, "images", tmp)
            client.download_artifacts(run_id, "overlays", tmp)
            src = Path(tmp)
            for image, entry in key["images"].items():
                sample = entry["sample"]
                save_png(build / image / "image.png", read_png(src / "images" / f"{sample}.png"))
                for label, arm in entry["labels"].items():
                    save_png(build / image / f"{label}.png", read_png(src / "overlays" / arm / f"{sample}.png"))
        with open(build / SHEET, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(SHEET_COLUMNS)
            for image in key["images"]:
                for label in key["labels"]:
                    writer.writerow([image, label, "", ""])
        (build / "README.txt").write_text(INSTRUCTIONS)
        if existing is None:
            _log_text(client, run_id, KEY_PATH, json.dumps(key, indent=2, sort_keys=True))
    return Packet(out, n_images, tuple(key["labels"]))


def load_key(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The reader key of gradcam run `run_id`; ReaderError if no packet was made from it yet."""
    gradcam_arms(client, run_id)
    key = read_key(client, run_id)
    if key is None:
        raise ReaderError(f"gradcam run {run_id} has no reader key: run `medtl reader-packet --gradcam-run {run_id} --out DIR` first")
    return key


def _log_text(client: MlflowClient, run_id: str, artifact: str, text: str) -> None:
    folder, _, name = artifact.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        client.log_artifact(run_id, str(path), folder or None)


def check_sheet(text: str, key: dict[str, Any], source: str = "sheet") -> list[dict[str, str]]:
    """The sheet's rows if every one is valid and none is missing; else ReaderError naming the lines.

    Line numbers are those of the file (the header is line 1).
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ReaderError(f"{source} is empty; expected columns {', '.join(SHEET_COLUMNS)}") from None
    missing_cols = [c for c in ("image", "label", "score") if c not in header]
    if missing_cols:
        raise ReaderError(f"{source} lacks column(s) {', '.join(missing_cols)}; expected {', '.join(SHEET_COLUMNS)}")
    col = {name: header.index(name) for name in SHEET_COLUMNS if name in header}
    problems: list[tuple[int, str]] = []
    seen: dict[tuple[str, str], int] = {}
    rows = []
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        image, label, score = (_field(fields, col, name) for name in ("image", "label", "score"))
        if image not in key["images"]:
            problems.append((line, f"unknown image {image!r}"))
            continue
        if label not in key["images"][image]["labels"]:
            problems.append((line, f"unknown label {label!r} (valid: {', '.join(key['labels'])})"))
            continue
        if (image, label) in seen:
            problems.append((line, f"duplicate of line {seen[(image, label)]} ({image} {label})"))
            continue
        seen[(image, label)] = line
        if not re.fullmatch(r"[1-5]", score):
            problems.append((line, f"score {score!r} is not a whole number 1-5"))
            continue
        rows.append({"image": image, "label": label, "score": score, "comment": _field(fields, col, "comment")})
    absent = [f"{image} {label}" for image, entry in key["images"].items() for label in entry["labels"] if (image, label) not in seen]
    if problems or absent:
        parts = [f"line {line}: {what}" for line, what in problems[:_MAX_SHOWN]]
        if len(problems) > _MAX_SHOWN:
            parts.append(f"and {len(problems) - _MAX_SHOWN} more")
        if absent:
            more = f" and {len(absent) - _MAX_SHOWN} more" if len(absent) > _MAX_SHOWN else ""
            parts.append(f"{len(absent)} row(s) missing: {', '.join(absent[:_MAX_SHOWN])}{more}")
        lines = ", ".join(str(line) for line, _ in problems) or "none"
        raise ReaderError(f"{source} refused, nothing imported; bad lines: {lines}; " + "; ".join(parts))
    return rows


def _field(fields: list[str], col: dict[str, int], name: str) -> str:
    index = col.get(name)
    return fields[index].strip() if index is not None and index < len(fields) else ""


def import_ratings(sheet: str | Path, run_id: str, *, rater: str | None = None, tracking_uri: str | None = None) -> Imported:
    """Check a filled rating sheet whole, join it with the key, log `reader/ratings-<rater>.csv`.

    `rater` defaults to the sheet's file stem. Importing the same rater again replaces that file.

    Raises:
        ReaderError: bad rater name, unreadable sheet, any bad or missing row (nothing is logged).
    """
    sheet = Path(sheet)
    rater = rater if rater is not None else sheet.stem
    if not RATER.fullmatch(rater):
        raise ReaderError(f"rater name {rater!r} is not valid: use letters, digits, '_', '.', '-' (pass --rater NAME)")
    try:
        text = sheet.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReaderError(f"cannot read {sheet}: {type(exc).__name__}") from None
    client = MlflowClient(S.resolve_tracking_uri(tracking_uri))
    key = load_key(client, run_id)
    rows = check_sheet(text, key, source=str(sheet))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RATINGS_COLUMNS)
    sums: dict[str, list[int]] = {}
    for row in rows:
        arm = key["images"][row["image"]]["labels"][row["label"]]
        writer.writerow([row["image"], row["label"], arm, row["score"], row["comment"], rater])
        sums.setdefault(arm, []).append(int(row["score"]))
    artifact = f"reader/ratings-{rater}.csv"
    replaced = artifact in {a.path for a in client.list_artifacts(run_id, "reader")}
    _log_text(client, run_id, artifact, buf.getvalue())
    means = {arm: sum(v) / len(v) for arm, v in sorted(sums.items())}
    return Imported(rater, len(rows), replaced, means)
