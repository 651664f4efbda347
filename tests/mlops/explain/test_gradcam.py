"""Grad-CAM of three real demo arms, the blinded reader packet, and rating import (issue 10)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medtl.evaluation.reader_ratings import collect_ratings
from medtl.mlops.cli import main
from medtl.mlops.explain.gradcam import choose_runs
from medtl.training.spec import Arch, Task

SIZE = 64  # resnet18's layer4 is 2x2 here; at 32 px it would be 1x1 and every heatmap flat
N = 6
ARMS = ("random", "imagenet", "domain")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A store with one finished demo-binary resnet18 run per arm (1 epoch, 64 px) and a gradcam run."""
    from medtl.mlops.tracking.pretraining import run_pretrain as pretrain
    from medtl.mlops.tracking.runner import run_spec
    from medtl.training.archive.demo_archive import write_demo_archive
    from medtl.training.archive.ingest import ingest
    from medtl.training.archive.pseudolabel import pseudolabel
    from medtl.training.archs import get_arch
    from medtl.training.init import imagenet_cache_path
    from medtl.training.spec import PretrainSpec, RunSpec

    root = tmp_path_factory.mktemp("gradcam")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TORCH_HOME", str(root / "torch-home"))
        mp.setenv("MEDTL_CACHE_DIR", str(root / "medtl-cache"))
        torch.set_num_threads(1)
        try:
            write_demo_archive(root / "archive", patients=3)
            ingest(root / "archive", root / "set", key=b"test-key-0123456789abcdef", progress=False)
            pseudolabel(root / "set", clusters=3)
            pretrain(PretrainSpec(arch="resnet18", data=str(root / "set"), max_epochs=1, image_size=32, batch_size=16), tracking_uri=uri)
            torch.manual_seed(7)
            import torchvision.models as tvm

            cache = imagenet_cache_path(get_arch("resnet18"))
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(tvm.resnet18(weights=None).state_dict(), cache)
            runs = {}
            for arm in ARMS:
                spec = RunSpec(task="demo-binary", arch="resnet18", init=arm, max_epochs=1, image_size=SIZE, lr=1e-3)
                runs[arm] = run_spec(spec, study="xai", tracking_uri=uri).run_id
            assert main(["gradcam", "--study", "xai", "--task", "demo-binary", "--arch", "resnet18", "--n", str(N), "--seed", "3", "--tracking-uri", uri]) == 0
        finally:
            torch.set_num_threads(threads)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medtl/xai")
    (gradcam,) = client.search_runs([experiment.experiment_id], filter_string="tags.`medtl.stage` = 'gradcam'")
    return {"uri": uri, "root": root, "runs": runs, "gradcam": gradcam.info.run_id, "client": client}


def _download(demo, path: str, dest: Path) -> Path:
    return Path(demo["client"].download_artifacts(demo["gradcam"], path, str(dest)))


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img).copy()


def test_gradcam_run_records_what_it_explains(demo):
    run = demo["client"].get_run(demo["gradcam"])
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED"
    assert tags["medtl.stage"] == "gradcam" and tags["medtl.study"] == "xai"
    assert tags["medtl.task"] == "demo-binary" and tags["medtl.arch"] == "resnet18"
    assert {arm: tags[f"medtl.explains.{arm}"] for arm in ARMS} == demo["runs"]
    assert params["n"] == str(N) and params["seed"] == "3" and params["target_layer"] == "layer4"
    assert params["feature_map"] == "2x2" and params["target"] == "binary logit (positive class)"


def test_heatmaps_have_the_image_shape_vary_and_differ_between_arms(demo, tmp_path):
    from medtl.training.data import load_splits
    from medtl.training.gradcam import sample_indices

    heat = _download(demo, "heatmaps", tmp_path)
    images = _download(demo, "images", tmp_path)
    test = load_splits(Task.DEMO_BINARY, "synthetic", image_size=SIZE).test
    index = sample_indices(len(test), N, 3)
    names = sorted(p.name for p in images.iterdir())
    assert names == [f"sample-{i:02d}.png" for i in range(1, N + 1)]
    maps = {}
    for arm in ARMS:
        assert sorted(p.name for p in (heat / arm).iterdir()) == names
        maps[arm] = np.stack([_png(heat / arm / name) for name in names])
        assert maps[arm].shape == (N, SIZE, SIZE)
        assert sum(float(m.std()) > 1.0 for m in maps[arm]) >= N - 1, f"{arm}: flat heatmaps"
    for i, name in enumerate(names):  # every arm explains the same seeded test images
        assert np.array_equal(_png(images / name), test.images[index[i]])
    for a, b in [("random", "imagenet"), ("random", "domain"), ("imagenet", "domain")]:
        assert np.abs(maps[a].astype(int) - maps[b].astype(int)).mean() > 2.0, (a, b)
    samples = (_download(demo, "samples.csv", tmp_path)).read_text()
    assert "test-0" not in samples  # sample ids stay out of the run
    overlay = _png(_download(demo, f"overlays/domain/{names[0]}", tmp_path))
    assert overlay.shape == (SIZE, SIZE, 3) and overlay.dtype == np.uint8


def _errors(capsys) -> list[str]:
    """The CLI's error lines (MLflow may log its own INFO lines to stderr when it creates a store)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("medtl ")]


def _sheet_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fake_run(client, experiment_id, arm, metrics, status="FINISHED", task="demo-binary", arch="resnet18"):
    run = client.create_run(experiment_id, tags={"medtl.stage": "finetune", "medtl.group": arm, "medtl.task": task, "medtl.arch": arch})
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, status=status)
    time.sleep(0.002)
    return run.info.run_id


def test_run_choice_is_direction_aware_and_prefers_the_champion(tracking_uri):
    client = MlflowClient(tracking_uri)
    eid = client.create_experiment("medtl/pick")
    low = _fake_run(client, eid, "random", {"best_val_f1": 0.5})
    high = _fake_run(client, eid, "random", {"best_val_f1": 0.7, "best_val_loss": 0.4})
    tie = _fake_run(client, eid, "random", {"best_val_f1": 0.7, "best_val_loss": 0.3})
    _fake_run(client, eid, "random", {"best_val_f1": 0.99}, status="FAILED")
    img = _fake_run(client, eid, "imagenet", {"best_val_f1": 0.6})
    chosen = choose_runs(client, "pick", Task.DEMO_BINARY, Arch.RESNET18)
    assert chosen["random"].run_id == tie and chosen["imagenet"].run_id == img
    assert chosen["random"].reason == "best validation f1"
    fast = _fake_run(client, eid, "random", {"best_val_mae": 3.0}, task="demo-regression")
    _fake_run(client, eid, "random", {"best_val_mae": 5.0}, task="demo-regression")
    _fake_run(client, eid, "domain", {"best_val_mae": 4.0}, task="demo-regression")
    assert choose_runs(client, "pick", Task.DEMO_REGRESSION, Arch.RESNET18)["random"].run_id == fast
    # The promoted run wins its arm even though another run of that arm validates better.
    client.create_registered_model("finetuned-demo-binary-resnet18")
    version = client.create_model_version("finetuned-demo-binary-resnet18", "file:///nowhere", run_id=low, tags={"medtl.run_id": low})
    client.set_registered_model_alias("finetuned-demo-binary-resnet18", "champion", version.version)
    chosen = choose_runs(client, "pick", Task.DEMO_BINARY, Arch.RESNET18)
    assert chosen["random"].run_id == low and chosen["random"].reason == "champion"
    assert chosen["imagenet"].run_id == img and high != low


def test_too_few_arms_is_one_line_naming_the_missing(tracking_uri, capsys):
    client = MlflowClient(tracking_uri)
    eid = client.create_experiment("medtl/thin")
    _fake_run(client, eid, "random", {"best_val_f1": 0.5})
    _fake_run(client, eid, "domain-MR", {"best_val_f1": 0.5}, status="FAILED")
    args = ["gradcam", "--study", "thin", "--task", "demo-binary", "--arch", "resnet18", "--tracking-uri", tracking_uri]
    assert main(args) == 2
    (err,) = _errors(capsys)
    assert "only random has finished runs, missing: imagenet, domain, domain-MR" in err
    assert main([*args[:4], "demo-multiclass", *args[5:]]) == 2
    (err,) = _errors(capsys)
    assert "no finished fine-tuning runs in any arm" in err
    assert main(["gradcam", "--study", "nope", "--task", "demo-binary", "--arch", "resnet18", "--tracking-uri", tracking_uri]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert main(["gradcam", "--study", "thin", "--task", "demo-segmentation", "--arch", "unet", "--tracking-uri", tracking_uri]) == 2
    assert "serves binary, multiclass and regression tasks" in capsys.readouterr().err
    assert main([*args, "--device", "tpu"]) == 2
    assert "unknown device 'tpu'; valid: auto, cpu, cuda" in capsys.readouterr().err


@pytest.fixture(scope="module")
def packet(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("packets") / "packet"
    assert main(["reader-packet", "--gradcam-run", demo["gradcam"], "--out", str(out), "--tracking-uri", demo["uri"]]) == 0
    key = json.loads(_download(demo, "reader/key.json", tmp_path_factory.mktemp("key")).read_text())
    return out, key


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return chunks


def test_packet_is_blinded(demo, packet, tmp_path):
    out, key = packet
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.relative_to(out).as_posix() for p in files} == {
        "README.txt", "rating_sheet.csv",
        *(f"image-{i:02d}/{name}.png" for i in range(1, N + 1) for name in ("image", "a", "b", "c")),
    }
    forbidden = [w.encode() for w in (*ARMS, "radiologynet", demo["gradcam"], *demo["runs"].values())]
    for path in files:
        data = path.read_bytes().lower()
        for word in forbidden:
            assert word.lower() not in data, (path, word)
        if path.suffix == ".png":
            assert set(_png_chunks(path.read_bytes())) == {b"IHDR", b"IDAT", b"IEND"}
    rows = _sheet_rows(out / "rating_sheet.csv")
    assert list(rows[0]) == ["image", "label", "score", "comment"] and len(rows) == 3 * N
    assert all(r["score"] == "" and r["comment"] == "" for r in rows)
    orders = {tuple(entry["labels"].values()) for entry in key["images"].values()}
    assert len(orders) > 1  # shuffled per image, not one fixed order
    overlays = _download(demo, "overlays", tmp_path)
    for image, entry in key["images"].items():
        for label, arm in entry["labels"].items():
            assert np.array_equal(_png(out / image / f"{label}.png"), _png(overlays / arm / f"{entry['sample']}.png"))


def test_packet_refuses_non_empty_out_and_a_different_seed(demo, packet, tmp_path, capsys):
    out, key = packet
    assert main(["reader-packet", "--gradcam-run", demo["gradcam"], "--out", str(out), "--tracking-uri", demo["uri"]]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    again = tmp_path / "again"
    again.mkdir()
    assert main(["reader-packet", "--gradcam-run", demo["gradcam"], "--out", str(again), "--tracking-uri", demo["uri"]]) == 0
    assert (again / "rating_sheet.csv").read_bytes() == (out / "rating_sheet.csv").read_bytes()
    other = tmp_path / "other"
    assert main(["reader-packet", "--gradcam-run", demo["gradcam"], "--out", str(other), "--seed", "1", "--tracking-uri", demo["uri"]]) == 2
    assert "--seed 0" in capsys.readouterr().err and not other.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["reader-packet", "--gradcam-run", demo["runs"]["random"], "--out", str(tmp_path / "x"), "--tracking-uri", demo["uri"]]) == 2
    assert "not a gradcam run" in capsys.readouterr().err


SCORE_OF = {"random": 1, "imagenet": 3, "domain": 5}


def _fill(out: Path, key: dict, dest: Path, score=lambda arm: SCORE_OF[arm]) -> Path:
    rows = _sheet_rows(out / "rating_sheet.csv")
    with open(dest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "score", "comment"])
        writer.writeheader()
        for r in rows:
            arm = key["images"][r["image"]]["labels"][r["label"]]
            writer.writerow({**r, "score": score(arm), "comment": "looks, at it" if arm == "domain" else ""})
    return dest


def _ratings_files(demo) -> list[str]:
    return sorted(a.path for a in demo["client"].list_artifacts(demo["gradcam"], "reader"))


def test_import_round_trips_to_the_arms(demo, packet, tmp_path, capsys):
    out, key = packet
    sheet = _fill(out, key, tmp_path / "sheet.csv")
    assert main(["reader-import", str(sheet), "--gradcam-run", demo["gradcam"], "--rater", "r1", "--tracking-uri", demo["uri"]]) == 0
    assert "imported 18 ratings of rater r1" in capsys.readouterr().out
    frame = collect_ratings(demo["uri"], "xai")
    assert len(frame) == 3 * N and set(frame["rater"]) == {"r1"} and set(frame["gradcam_run"]) == {demo["gradcam"]}
    assert frame.groupby("arm")["score"].mean().to_dict() == {"domain": 5.0, "imagenet": 3.0, "random": 1.0}
    assert set(frame.loc[frame["arm"] == "domain", "comment"]) == {"looks, at it"}
    assert set(frame["task"]) == {"demo-binary"} and set(frame["sample"]) == {f"sample-{i:02d}" for i in range(1, N + 1)}
    # The same rater again replaces that rater's file; a second rater adds one.
    sheet2 = _fill(out, key, tmp_path / "sheet2.csv", score=lambda arm: 6 - SCORE_OF[arm])
    assert main(["reader-import", str(sheet2), "--gradcam-run", demo["gradcam"], "--rater", "r1", "--tracking-uri", demo["uri"]]) == 0
    assert "replaced" in capsys.readouterr().out
    assert main(["reader-import", str(sheet), "--gradcam-run", demo["gradcam"], "--rater", "r2", "--tracking-uri", demo["uri"]]) == 0
    frame = collect_ratings(demo["uri"], "xai")
    means = frame.groupby(["rater", "arm"])["score"].mean().to_dict()
    assert means[("r1", "random")] == 5.0 and means[("r2", "random")] == 1.0 and len(frame) == 6 * N
    from medtl.evaluation.reader_stats import ratings_summary

    model = ratings_summary(frame)["models"][0]
    assert model["task"] == "demo-binary" and model["arms"] == list(ARMS) and model["raters"] == ["r1", "r2"]
    assert collect_ratings(demo["uri"], "no-such-study").empty
    # The evaluation report gains the reader-study section (the paper's Figure 9).
    from medtl.mlops.tracking.evaluation_run import evaluate

    html = evaluate("xai", tracking_uri=demo["uri"], out=tmp_path / "report", log=False).report
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Reader study: blinded Grad-CAM ratings" in markdown and "reader_ratings.png" in markdown
    assert (tmp_path / "report" / "plots" / "reader_ratings.png").stat().st_size > 1000
    assert "Reader study" in html.read_text()
    # `medtl serve` renders the same report, reader-study section included.
    from medtl.evaluation.service import EvaluationService

    served = EvaluationService(demo["uri"]).handle("GET", "/studies/xai/report.html")
    assert served.status == 200 and "Reader study: blinded Grad-CAM ratings" in served.body.decode()


def _edit(path: Path, change) -> Path:
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _set_score(value):
    def change(lines):
        image, label, _, comment = lines[3].split(",")
        lines[3] = ",".join([image, label, value, comment])
    return change


BAD = {
    "unknown image": (lambda lines: lines.__setitem__(2, "image-99" + lines[2][lines[2].index(","):]), "line 3: unknown image 'image-99'"),
    "score 0": (_set_score("0"), "line 4: score '0' is not a whole number 1-5"),
    "score 6": (_set_score("6"), "line 4: score '6'"),
    "score x": (_set_score("x"), "line 4: score 'x'"),
    "duplicate": (lambda lines: lines.append(lines[5]), f"line {3 * N + 2}: duplicate of line 6"),
    "missing": (lambda lines: lines.pop(7), "1 row(s) missing"),
    "unknown label": (lambda lines: lines.__setitem__(2, lines[2].replace(",a,", ",d,").replace(",b,", ",d,").replace(",c,", ",d,")), "line 3: unknown label 'd'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sheets_are_refused_whole(demo, packet, tmp_path, capsys, case):
    out, key = packet
    change, message = BAD[case]
    sheet = _edit(_fill(out, key, tmp_path / "bad.csv"), change)
    before = _ratings_files(demo)
    assert main(["reader-import", str(sheet), "--gradcam-run", demo["gradcam"], "--rater", "bad", "--tracking-uri", demo["uri"]]) == 2
    (err,) = _errors(capsys)
    assert "refused, nothing imported" in err and message in err
    assert _ratings_files(demo) == before and "reader/ratings-bad.csv" not in before


def test_bad_rater_and_no_key(demo, packet, tmp_path, capsys):
    out, key = packet
    sheet = _fill(out, key, tmp_path / "s.csv")
    assert main(["reader-import", str(sheet), "--gradcam-run", demo["gradcam"], "--rater", "../x", "--tracking-uri", demo["uri"]]) == 2
    assert "rater name '../x' is not valid" in capsys.readouterr().err
    client = demo["client"]
    eid = client.get_run(demo["gradcam"]).info.experiment_id
    bare = client.create_run(eid, tags={"medtl.stage": "gradcam", "medtl.explains.random": "x", "medtl.explains.domain": "y"})
    assert main(["reader-import", str(sheet), "--gradcam-run", bare.info.run_id, "--rater", "r9", "--tracking-uri", demo["uri"]]) == 2
    assert "has no reader key: run `medtl reader-packet" in capsys.readouterr().err
    client.delete_run(bare.info.run_id)
