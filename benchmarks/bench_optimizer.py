"""One training step with torch's per-parameter AdamW loop vs its fused AdamW (what medtl uses).

Same network, same batch, same seed; the two optimizers alternate in blocks so machine drift hits
both. A step is forward, loss, backward and the optimizer step; the optimizer step is also timed
alone. At the demo's 32² images the default loop's optimizer step is about half of the whole
step on 2 CPU cores, which is why `make_optimizer` asks for the fused kernel.

Run: `python benchmarks/bench_optimizer.py [--archs resnet18 ...] [--sizes 32 64] [--batch 16] [--steps 10]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from medtl.training.archs import get_arch
from medtl.training.factory import build_network
from medtl.training.spec import TaskInfo, TaskType


def _time_steps(net, opt, x, y, steps: int) -> tuple[list[float], list[float]]:
    whole, optimizer_only = [], []
    for _ in range(steps):
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mid = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        whole.append(end - start)
        optimizer_only.append(end - mid)
    return whole, optimizer_only


def measure(arch: str, size: int, batch: int, steps: int, blocks: int = 3) -> dict:
    torch.manual_seed(0)
    net = build_network(get_arch(arch), TaskInfo(TaskType.BINARY)).train()
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 2, (batch, 1)).float()
    optimizers = {
        "default": torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-3),
        "fused": torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-3, fused=True),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in optimizers}
    for opt in optimizers.values():  # warm-up: allocates each optimizer's state
        _time_steps(net, opt, x, y, 2)
    for _ in range(blocks):
        for name, opt in optimizers.items():
            whole, only = _time_steps(net, opt, x, y, steps)
            times[name][0].extend(whole)
            times[name][1].extend(only)
    med = {k: (statistics.median(w) * 1000, statistics.median(o) * 1000) for k, (w, o) in times.items()}
    return {
        "arch": arch,
        "image": f"{size}²",
        "batch": batch,
        "step_ms_default": round(med["default"][0], 1),
        "step_ms_fused": round(med["fused"][0], 1),
        "optimizer_ms_default": round(med["default"][1], 1),
        "optimizer_ms_fused": round(med["fused"][1], 1),
        "step_speedup": round(med["default"][0] / med["fused"][0], 2),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v3_small", "densenet121"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv or [])
    return [measure(a, s, args.batch, args.steps) for a in args.archs for s in args.sizes]


if __name__ == "__main__":
    import sys

    from run import to_markdown  # noqa: E402 - benchmarks/run.py, beside this file

    print(to_markdown(main(sys.argv[1:])))
