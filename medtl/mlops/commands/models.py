"""`medtl models`: the architecture zoo — default input size, parameter count, task types served."""

from __future__ import annotations

import argparse
import json
from typing import Any

_DESCRIPTION = """\
List every architecture medtl can train: its default input size (the study's; override with
--image-size), the smallest size it runs at, its parameter count (computed by building the network
for a one-output task, on the meta device: nothing is allocated or cached), whether ImageNet
weights exist for it, and the task types it serves (classifiers: binary, multiclass, regression;
U-Nets: segmentation).
"""


def register(subparsers: Any) -> None:
    """Add `medtl models`."""
    parser = subparsers.add_parser(
        "models",
        help="list architectures: input size, parameters, task types",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def model_rows() -> list[dict[str, Any]]:
    """One dict per architecture: name, input_size, min_size, parameters, imagenet, task_types, backbone."""
    import torch

    from medtl.training.archs import ALL_ARCHS
    from medtl.training.factory import build_network
    from medtl.training.spec import TaskInfo, TaskType

    rows = []
    for arch, spec in ALL_ARCHS.items():
        task_type = TaskType.SEGMENTATION if spec.is_unet else TaskType.BINARY
        with torch.device("meta"):
            network = build_network(spec, TaskInfo(task_type))
        rows.append(
            {
                "arch": arch.value,
                "input_size": spec.input_size,
                "min_size": spec.min_size,
                "parameters": sum(p.numel() for p in network.parameters()),
                "imagenet": spec.has_imagenet_weights,
                "task_types": [t.value for t in sorted(spec.task_types)],
                "backbone": spec.torchvision_name,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON) of architectures."""
    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("architecture", "input", "min", "parameters", "imagenet", "task types")
    lines = [
        (r["arch"], str(r["input_size"]), str(r["min_size"]), f"{r['parameters'] / 1e6:.2f}M",
         "yes" if r["imagenet"] else "no", ", ".join(r["task_types"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, *lines]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
