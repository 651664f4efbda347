"""`medtl weights`: fetch the pinned ImageNet weights into the torch hub cache, or show what is cached."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medtl.errors import UserError

_DESCRIPTION = """\
ImageNet weights are torchvision's pinned IMAGENET1K_V1 files, read from the torch hub cache
($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints). Training never needs the
network when the file is there.

  medtl weights status [--archs A ...] [--json]       cache path, presence and size per architecture
  medtl weights fetch [--archs A ...] [--study F]     download into the cache (a connected machine)

For an air-gapped cluster: run `fetch` on a connected machine, copy its hub/checkpoints folder to
$TORCH_HOME/hub/checkpoints on every worker, check with `status`. Without --archs and --study,
every architecture with ImageNet weights is meant; U-Nets stand for their encoder's backbone.
"""


def register(subparsers: Any) -> None:
    """Add `medtl weights` with its `fetch` and `status` actions."""
    parser = subparsers.add_parser(
        "weights",
        help="fetch ImageNet weights into the torch cache; show what is cached",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    for name, text in (("fetch", "download the pinned weights into the torch hub cache"),
                       ("status", "show the cache path, presence and size per architecture")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--archs", nargs="+", metavar="ARCH", help="architectures (default: all with ImageNet weights)")
        action.add_argument("--study", type=Path, help="a study YAML: its tasks' `archs` lists")
        action.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run, weights_parser=parser)


def _targets(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(torchvision name, ArchSpec of that backbone) per distinct weights file, in order."""
    from medtl.mlops.sweeps.study import study_archs
    from medtl.training.archs import ARCHS, get_arch

    names = list(args.archs or [])
    if args.study is not None:
        names += study_archs(args.study)
    explicit = bool(names)
    if not names:
        names = [a.value for a in ARCHS]
    seen: dict[str, Any] = {}
    for name in names:
        spec = get_arch(name)
        if not spec.has_imagenet_weights:
            if explicit and args.study is None:
                raise UserError(f"{name} has no ImageNet weights; valid: {', '.join(a.value for a in ARCHS)} and the backbone U-Nets")
            continue
        tv_name = spec.torchvision_name
        seen.setdefault(tv_name, get_arch(tv_name))
    return list(seen.items())


def _status(targets: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    from medtl.training.init import imagenet_cache_path

    rows = []
    for name, spec in targets:
        path = imagenet_cache_path(spec)
        present = path.is_file()
        rows.append({"arch": name, "weights": f"{spec.weights_enum}.IMAGENET1K_V1", "url": spec.weights.url,
                     "path": str(path), "present": present, "bytes": path.stat().st_size if present else 0})
    return rows


def _fetch(row: dict[str, Any]) -> str:
    """Download one file into the cache (hash-checked, then loaded once to prove it reads)."""
    import contextlib
    import sys

    import torch

    path = Path(row["path"])
    try:  # torch announces downloads on stdout; keep stdout for the table / JSON
        with contextlib.redirect_stdout(sys.stderr):
            torch.hub.load_state_dict_from_url(
                row["url"], model_dir=str(path.parent), progress=True, check_hash=True, map_location="cpu", weights_only=True
            )
    except Exception as exc:  # URLError, HTTPError, hash mismatch (RuntimeError), unreadable file
        reason = str(getattr(exc, "reason", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot fetch {row['url']} into {path}: {reason}"
    return ""


def _print(rows: list[dict[str, Any]]) -> None:
    header = ("architecture", "present", "size", "path")
    lines = [(r["arch"], "yes" if r["present"] else "no", f"{r['bytes'] / 2**20:.1f} MiB" if r["present"] else "-", r["path"])
             for r in rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, *lines]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def run(args: argparse.Namespace) -> int:
    """`status`: show the cache; `fetch`: download what is missing (one line per failure, exit 2)."""
    if not getattr(args, "action", None):
        args.weights_parser.print_help()
        return 2
    rows = _status(_targets(args))
    errors: list[str] = []
    if args.action == "fetch":
        for row in rows:
            if row["present"]:
                continue
            error = _fetch(row)
            if error:
                errors.append(error)
        rows = _status(_targets(args))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print(rows)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{errors[0]}{more}")
    return 0
