"""Training throughput (images/s) and peak memory of every architecture, at 64² and at its default size.

One training step = forward, loss, backward, AdamW step on a random batch (classifiers as binary
classifiers, U-Nets as segmenters), one warm-up step, then `steps` timed steps. Memory: on CUDA
`torch.cuda.max_memory_allocated` with bf16 autocast and channels-last (as the training loop runs);
on CPU the peak resident-set growth (`ru_maxrss`) over the RSS before the model was built. Each
configuration runs in a fresh process, so memory freed by the previous one does not hide this
one's. A configuration whose estimated time exceeds `budget_s` is recorded as skipped.

Run: `python benchmarks/bench_archs.py [--sizes 64 default] [--batch 16] [--steps 3] [--archs ...] [--threads N]`;
prints a Markdown table, and JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil
import torch
import torch.nn.functional as F

from medtl.training.archs import ALL_ARCHS, get_arch
from medtl.training.factory import build_network
from medtl.training.spec import TaskInfo, TaskType


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cuda: bool) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        out = net(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(arch: str, size: int, batch: int = 16, steps: int = 3, device: str = "cpu") -> dict[str, Any]:
    """Images per second and peak memory of training `arch` at `size`² with batch `batch`."""
    spec = get_arch(arch)
    cuda = device.startswith("cuda")
    base_rss = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    task = TaskType.SEGMENTATION if spec.is_unet else TaskType.BINARY
    torch.manual_seed(0)
    net = build_network(spec, TaskInfo(task)).to(device).train()
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size, device=device)
    y = torch.rand(batch, 1, size, size, device=device) if spec.is_unet else torch.rand(batch, 1, device=device)
    start = time.perf_counter()
    _step(net, opt, x, y, cuda)  # warm-up: kernel selection, allocator, optimizer state
    if cuda:
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        _step(net, opt, x, y, cuda)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    del net, opt
    return {
        "arch": arch,
        "size": size,
        "batch": batch,
        "device": device,
        "images_per_s": round(batch * steps / elapsed, 2),
        "step_s": round(elapsed / steps, 3),
        "warmup_s": round(warmup, 2),
        "peak_mem_mib": round(peak / 2**20, 1),
        "threads": torch.get_num_threads(),
        "memory": "cuda max_memory_allocated (bf16 autocast)" if cuda else "CPU peak RSS growth",
        "skipped": "",
    }


def _measure_in_child(arch: str, size: int, batch: int, steps: int, device: str, threads: int | None) -> dict[str, Any]:
    """`measure` in a fresh Python process (clean peak memory); its JSON row back."""
    command = [sys.executable, __file__, "--one", arch, str(size), str(batch), str(steps), device]
    command += ["--threads", str(threads)] if threads else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"arch": arch, "size": size, "batch": batch, "device": device, "skipped": f"error: {reason}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(
    sizes: Sequence[str] = ("64", "default"),
    batch: int = 16,
    steps: int = 3,
    archs: Sequence[str] | None = None,
    budget_s: float = 60.0,
    device: str | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Measure every architecture at each size (`default` = its study input size).

    `threads` sets torch's intra-op threads in each measuring process (default: torch's choice).

    A size is skipped, with the reason, when its time estimated from the 64² step (scaled by
    pixel count) exceeds `budget_s` for warm-up plus `steps` steps.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = list(archs or [a.value for a in ALL_ARCHS])
    rows: list[dict[str, Any]] = []
    for name in names:
        spec = get_arch(name)
        step_64: float | None = None
        for label in sizes:
            size = spec.input_size if label == "default" else int(label)
            if size < spec.min_size:
                rows.append({"arch": name, "size": size, "batch": batch, "device": device,
                             "skipped": f"below min size {spec.min_size}"})
                continue
            if step_64 is not None and size != 64:
                estimate = step_64 * (size / 64) ** 2 * (steps + 1)
                if estimate > budget_s:
                    rows.append({"arch": name, "size": size, "batch": batch, "device": device,
                                 "skipped": f"estimated {estimate:.0f} s > budget {budget_s:.0f} s "
                                            f"({step_64:.2f} s/step at 64² scaled by pixels)"})
                    continue
            row = _measure_in_child(name, size, batch, steps, device, threads)
            if size == 64:
                step_64 = row["step_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| arch | size | threads | images/s | s/step | peak MiB | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['arch']} | {r['size']} | – | – | – | – | skipped: {r['skipped']} |")
        else:
            lines.append(f"| {r['arch']} | {r['size']} | {r['threads']} | {r['images_per_s']} | {r['step_s']} | {r['peak_mem_mib']} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64", "default"], help="pixel sides or `default`")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--archs", nargs="+", help="architectures (default: all)")
    parser.add_argument("--budget", type=float, default=60.0, help="skip a size estimated to take longer (s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    parser.add_argument("--one", nargs=5, metavar=("ARCH", "SIZE", "BATCH", "STEPS", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        arch, size, batch, steps, device = args.one
        print(json.dumps(measure(arch, int(size), int(batch), int(steps), device)))
        sys.exit(0)
    result = main(args.sizes, args.batch, args.steps, args.archs, args.budget, threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else table(result))
