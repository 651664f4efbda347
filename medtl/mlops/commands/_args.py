"""The argparse flags several sub-commands share; `medtl.mlops.cli` only discovers and dispatches."""

from __future__ import annotations

import argparse
import os


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """The `--tracking-uri` flag every command takes; `MLFLOW_TRACKING_URI` is its default."""
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )


SPEC_FLAGS = ("lr", "seed", "max_epochs", "patience", "batch_size", "image_size")
"""The spec fields `add_spec_arguments` declares, by their names in the spec and in the parsed arguments."""


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags shared by `run` and `pretrain` (the fields in `SPEC_FLAGS`, and `--device`)."""
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for python, numpy and torch (default 0)")
    parser.add_argument("--max-epochs", type=int, default=200, help="epoch cap (default 200, the study's)")
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience on val loss (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument(
        "--image-size", type=int, default=0, help="input size in pixels (default: the architecture's, e.g. 224)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")


def spec_arguments(args: argparse.Namespace) -> dict[str, object]:
    """The parsed values of the shared training flags, as keyword arguments of a spec."""
    return {name: getattr(args, name) for name in SPEC_FLAGS}
