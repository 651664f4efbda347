"""`medtl pseudolabel`: cluster an ingested archive into pseudo-labels and log it to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtl.mlops.commands._args import add_tracking_uri
from medtl.training import schema as S

EXPERIMENT = S.PRETRAIN_EXPERIMENT
STAGE = S.Stage.PSEUDOLABEL.value
DESCRIPTION = """\
Features from header fields (one-hot modality / body part, scaled numeric fields), image
embeddings (PCA of 32x32 thumbnails + intensity / texture statistics) and optionally report text
(--reports CSV with columns study_key,text: TF-IDF + SVD) are clustered with seeded k-means.
Clusters whose modality or body-part mix has a normalised entropy above --max-entropy are
dropped (label -1). Writes `label` into DIR/manifest.parquet, DIR/clusters.csv and one mosaic a
cluster in DIR/clusters/, and logs an MLflow run (experiment medtl/pretrain, medtl.stage=pseudolabel).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pseudolabel", help="k-means pseudo-labels for an ingested archive",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", help="ingest output folder (holds manifest.parquet)")
    parser.add_argument("--clusters", type=int, required=True, metavar="K", help="number of k-means clusters (2..images)")
    parser.add_argument("--seed", type=int, default=0, help="k-means / PCA seed (default 0)")
    parser.add_argument("--max-entropy", type=float, default=0.5, metavar="H",
                        help="drop clusters whose modality or body-part normalised entropy exceeds H (default 0.5)")
    parser.add_argument("--reports", type=Path, metavar="CSV", help="report text per study: columns study_key,text")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default {EXPERIMENT})")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import mlflow
    from mlflow.entities import Metric

    from medtl.errors import UserError
    from medtl.training.archive.pseudolabel import MOSAICS, SUMMARY, load_manifest, pseudolabel

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist")
    images = len(load_manifest(folder))
    if args.clusters < 2 or args.clusters > images:
        raise UserError(f"--clusters must be between 2 and the number of images ({images}), got {args.clusters}")
    result = pseudolabel(folder, clusters=args.clusters, seed=args.seed, max_entropy=args.max_entropy,
                         reports=args.reports)
    from medtl.mlops.tracking import client as T

    uri = S.resolve_tracking_uri(args.tracking_uri)
    mlflow.set_tracking_uri(uri)
    # Created through medtl, so its artifacts sit beside the store (mlartifacts/), not in ./mlruns.
    mlflow.set_experiment(experiment_id=T.get_or_create_experiment(mlflow.MlflowClient(uri), args.experiment, uri))
    with mlflow.start_run(run_name=f"pseudolabel-k{args.clusters}") as active:
        mlflow.set_tags({S.STAGE_TAG: STAGE, S.DATA_TAG: str(folder.resolve())})
        mlflow.log_params(result.params)
        mlflow.log_metrics(result.metrics)
        sizes = result.summary[["cluster", "size"]].itertuples(index=False)
        stamp = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(active.info.run_id, metrics=[Metric("cluster_size", float(n), stamp, int(c)) for c, n in sizes])
        mlflow.log_artifact(str(folder / SUMMARY))
        mlflow.log_artifacts(str(folder / MOSAICS), artifact_path="mosaics")
        run_id = active.info.run_id
    kept = int(result.metrics["kept_clusters"])
    print(
        f"pseudolabel: {args.clusters} clusters, {kept} kept ({int(result.metrics['kept_images'])} of {images} images), "
        f"{args.clusters - kept} dropped; homogeneity modality {result.metrics['homogeneity_modality']:.2f}, "
        f"body part {result.metrics['homogeneity_body_part']:.2f}; MLflow run {run_id}"
    )
    return 0
