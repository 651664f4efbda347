"""The throughput table `medtl sweep --plan` estimates a grid's cost from: training images/s of every
architecture at its study input size, written to `benchmarks/throughput.json`.

One row per (architecture, size, device): a warm-up step, then `steps` timed training steps of a
random batch (`bench_archs.measure`, each in a fresh process). Rows measured on another device
(a GPU table written on a GPU machine) are kept, so CPU and GPU figures live side by side; each row
says where it was measured. On a shared 2-core CPU these are rough, slow figures: the plan marks
them as CPU-measured upper bounds.

Run: `python benchmarks/bench_throughput.py [--batch 2] [--steps 2] [--archs ...] [--threads N]`
(`make bench` runs it as section `throughput`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from medtl.atomic import write_atomic
from medtl.training.archs import ALL_ARCHS, get_arch

TABLE = Path(__file__).resolve().parent / "throughput.json"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def main(
    batch: int = 2,
    steps: int = 2,
    archs: Sequence[str] | None = None,
    device: str | None = None,
    threads: int | None = None,
    out: Path = TABLE,
) -> list[dict[str, Any]]:
    """Measure every architecture at its default input size on `device` and merge into `out`."""
    from bench_archs import _measure_in_child

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for name in archs or [a.value for a in ALL_ARCHS]:
        size = get_arch(name).input_size
        row = _measure_in_child(name, size, batch, steps, device, threads)
        row.update(measured=stamp, device=device, device_name=device_name(device),
                   kind="gpu" if device.startswith("cuda") else "cpu")
        rows.append(row)
        print(json.dumps(row), flush=True)
    kept = []
    if out.is_file():
        previous = json.loads(out.read_text())
        old_rows = previous["rows"] if isinstance(previous, dict) else previous
        kept = [r for r in old_rows if r.get("device", "cpu").split(":")[0] != device.split(":")[0]]
    table = {
        "about": "training images/s per architecture at its study input size; written by `make bench` "
                 "(benchmarks/bench_throughput.py); `medtl sweep --plan` uses it for cells without finished runs. "
                 "Rows with kind 'cpu' were measured on a shared CPU and are upper-bound planning figures.",
        "rows": kept + rows,
    }
    write_atomic(out, json.dumps(table, indent=1) + "\n")
    return [{k: r.get(k, "") for k in ("arch", "size", "batch", "device", "images_per_s", "step_s", "skipped")}
            for r in rows]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--archs", nargs="+", help="architectures (default: all)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads in each measuring process")
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for row in main(args.batch, args.steps, args.archs, args.device, args.threads):
        print(row)
