"""`medtl data`: validate a downloaded dataset and export its train/val/test membership."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from medtl.atomic import atomic_open
from medtl.errors import UserError

_DESCRIPTION = """\
Read a downloaded dataset in its native layout (see DATASETS.md) the way training does.

  medtl data check PATH --task T [--json]        counts per split and class, notes, digests
  medtl data splits PATH --task T --out F.csv     one row a sample: sample_id,split,label
        [--source-map MAP.csv]                    and, for a de-identified dataset, keyed id -> file
  medtl data deidentify PATH                      sample ids become keyed hashes ($MEDTL_DEID_KEY)

Sample ids are file paths relative to PATH, and they reach predictions/test.csv in MLflow. After
`medtl data deidentify PATH` (which writes PATH/.medtl-deid-ids), every loader of the folder-based
tasks gives HMAC-SHA256 ids under $MEDTL_DEID_KEY instead, and refuses to run without that key.

Decoded images are cached under $MEDTL_CACHE_DIR (default ~/.cache/medtl) at --image-size, so a
check at the training size also prepares the data for the runs of a grid.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the dataset folder as downloaded")
    parser.add_argument(
        "--task", required=True, help="task name, e.g. grazpedwri-osteopenia, luna16"
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="image side in pixels (default 224)"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the splits (default 0)")


def register(subparsers: Any) -> None:
    """Add `medtl data` with its `check` and `splits` actions."""
    parser = subparsers.add_parser(
        "data",
        help="check a downloaded dataset; export its splits",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    check = actions.add_parser("check", help="validate a download; counts per split and class")
    _common(check)
    check.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    splits = actions.add_parser(
        "splits", help="write sample_id,split,label of every sample to a CSV"
    )
    _common(splits)
    splits.add_argument("--out", required=True, help="CSV file to write (replaced atomically)")
    splits.add_argument("--source-map", metavar="CSV",
                        help="de-identified datasets: also write sample_id -> original id here (mode 0600)")
    deid = actions.add_parser("deidentify", help="give the dataset keyed sample ids ($MEDTL_DEID_KEY)")
    deid.add_argument("path", help="the dataset folder as downloaded")
    splits.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="keep this stratified fraction of the training split",
    )
    parser.set_defaults(func=run, data_parser=parser)


def _load(args: argparse.Namespace, fraction: float = 1.0):
    from medtl.training.data import load_splits
    from medtl.training.spec import Task, parse_enum

    task = parse_enum(Task, args.task, "task")
    if args.image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {args.image_size}")
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    splits = load_splits(
        task, args.path, image_size=args.image_size, fraction=fraction, data_seed=args.data_seed
    )
    return task, splits


def _labels(task, part) -> list[str]:
    import numpy as np

    from medtl.training.spec import TASKS, TaskType

    info = TASKS[task]
    if info.type is TaskType.SEGMENTATION:
        return [str(int(n)) for n in part.targets.reshape(len(part), -1).astype(bool).sum(axis=1)]
    if info.type is TaskType.REGRESSION:
        return [f"{float(v):g}" for v in np.asarray(part.targets)]
    return [info.classes[int(v)] for v in part.targets]


def summarise(task, splits) -> dict[str, Any]:
    """Counts per split (and per class, or target range, or mask statistics) of loaded Splits."""
    import numpy as np

    from medtl.training.spec import TASKS, TaskType

    info = TASKS[task]
    counts: dict[str, Any] = {}
    for name, part in splits.items():
        entry: dict[str, Any] = {"total": len(part)}
        if info.type in (TaskType.BINARY, TaskType.MULTICLASS):
            values = np.bincount(
                np.asarray(part.targets, dtype=np.int64), minlength=len(info.classes)
            )
            entry["classes"] = {c: int(n) for c, n in zip(info.classes, values, strict=False)}
        elif info.type is TaskType.REGRESSION and len(part):
            t = np.asarray(part.targets, dtype=np.float64)
            entry["target"] = {
                "min": float(t.min()),
                "mean": round(float(t.mean()), 3),
                "max": float(t.max()),
            }
        elif info.type is TaskType.SEGMENTATION and len(part):
            entry["mask_fraction"] = round(float(np.asarray(part.targets).astype(bool).mean()), 5)
        if part.groups is not None:
            entry["groups"] = len(set(part.groups))
        counts[name] = entry
    return {
        "task": task.value,
        "source": splits.source,
        "source_digest": splits.source_digest,
        "splits_digest": splits.digest,
        "image_size": int(splits.train.images.shape[-1]) if len(splits.train) else None,
        "extra_inputs": list(splits.extra_names),
        "counts": counts,
        "notes": dict(splits.notes),
    }


def _print_table(summary: dict[str, Any]) -> None:
    print(
        f"{summary['task']}: {summary['source']} (source {summary['source_digest']}, splits {summary['splits_digest']})"
    )
    for name, entry in summary["counts"].items():
        detail = ""
        if "classes" in entry:
            detail = "  " + "  ".join(f"{c}={n}" for c, n in entry["classes"].items())
        elif "target" in entry:
            detail = "  target {min:g}..{max:g} (mean {mean:g})".format(**entry["target"])
        elif "mask_fraction" in entry:
            detail = f"  mask fraction {entry['mask_fraction']}"
        groups = f"  patients/series={entry['groups']}" if "groups" in entry else ""
        print(f"  {name:<5} {entry['total']:>7}{detail}{groups}")
    for key, value in summary["notes"].items():
        print(f"  note {key}: {value}")


def _write_splits(out: Path, task, splits) -> int:
    if not out.parent.is_dir():
        raise UserError(f"--out folder {out.parent} does not exist")
    rows = 0
    with atomic_open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "split", "label"])
        for name, part in splits.items():
            for sample_id, label in zip(part.ids, _labels(task, part), strict=True):
                writer.writerow([sample_id, name, label])
                rows += 1
    return rows


def _write_source_map(path: Path, splits) -> None:
    from medtl.training.data.sample_ids import sample_id_map

    mapping = sample_id_map()
    ids = [i for part in (splits.train, splits.val, splits.test) for i in part.ids]
    if not mapping or not set(ids) <= set(mapping):
        raise UserError("--source-map: this dataset's sample ids are not de-identified (run `medtl data deidentify PATH`)")
    if not path.parent.is_dir():
        raise UserError(f"--source-map folder {path.parent} does not exist")
    with atomic_open(path, "w", perms=0o600, newline="") as handle:  # the readable source names
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "source"])
        writer.writerows((i, mapping[i]) for i in ids)


def run(args: argparse.Namespace) -> int:
    """Dispatch `medtl data check` / `medtl data splits`; 0 on success, 2 on bad input."""
    if args.action is None:
        args.data_parser.print_help()
        return 2
    if args.action == "deidentify":
        from medtl.training.data.sample_ids import write_deid_marker

        marker = write_deid_marker(Path(args.path))
        print(f"wrote {marker}: sample ids of {args.path} are now keyed hashes under $MEDTL_DEID_KEY")
        return 0
    if args.action == "splits" and args.source_map and Path(args.source_map).resolve() == Path(args.out).resolve():
        raise UserError("--source-map and --out name the same file; the map must stay apart from what is shared")
    if args.action == "check":
        task, splits = _load(args)
        summary = summarise(task, splits)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_table(summary)
        return 0
    task, splits = _load(args, args.fraction)
    rows = _write_splits(Path(args.out), task, splits)
    if args.source_map:
        _write_source_map(Path(args.source_map), splits)
    print(
        f"wrote {rows} rows to {args.out} ({', '.join(f'{k}={v}' for k, v in splits.counts().items())})"
    )
    return 0
