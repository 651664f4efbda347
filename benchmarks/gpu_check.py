"""GPU check (issue 24): resnet50 at 224², bare PyTorch vs medtl's training loop, the data pipeline vs the GPU.

One command on a CUDA machine, `python benchmarks/gpu_check.py`, measures:

- bare PyTorch: torchvision's resnet50, bf16 autocast, channels-last, fused AdamW, one batch kept on the
  GPU (the compute ceiling: no data loading at all);
- medtl's loop: `loop.train_epoch` with the `Runtime` medtl resolves on CUDA (bf16, channels-last, pinned
  memory, DataLoader workers), medtl's model and optimizer, over a dataset read from medtl's cache;
- the data pipeline alone: the same loader from the cache, each batch moved to the GPU as the loop does
  (`loop._batches`), no model: what the pipeline can feed, against what the GPU consumes;
- peak GPU memory of each (`torch.cuda.max_memory_allocated`).

It prints a Markdown table for BENCHMARKS.md. On a machine without CUDA it prints one line saying so and
exits 0. `--device cpu --smoke` runs every part on the CPU at tiny sizes (what the tests do), so the
script is known to work before it meets a GPU.

Usage: python benchmarks/gpu_check.py [--device cuda] [--batch 64] [--steps 30] [--images 1024] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

NEEDS_CUDA = "gpu_check: needs CUDA (torch.cuda.is_available() is False here); run it on a GPU machine, or with --device cpu --smoke to exercise it"


@dataclass(frozen=True)
class Settings:
    device: str
    arch: str = "resnet50"
    size: int = 224
    batch: int = 64
    steps: int = 30
    warmup: int = 5
    images: int = 1024  # files written for the cached dataset (source side 256 px, resized to `size`)
    source_px: int = 256


SMOKE = {"size": 32, "batch": 4, "steps": 2, "warmup": 1, "images": 16, "source_px": 40}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float:
    """Peak GPU memory allocated since the last reset; on the CPU, the process's peak RSS so far."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_torch(s: Settings) -> dict:
    """torchvision's model, bf16 autocast, channels-last, fused AdamW, one batch resident on the device."""
    import torch
    import torchvision

    cuda = s.device.startswith("cuda")
    torch.manual_seed(0)
    model = getattr(torchvision.models, s.arch)(weights=None, num_classes=2).to(s.device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3, fused=cuda)
    images = torch.randint(0, 256, (s.batch, 3, s.size, s.size), dtype=torch.uint8, device=s.device)
    targets = torch.randint(0, 2, (s.batch,), device=s.device)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    _reset_peak(s.device)

    def step() -> None:
        x = images.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(s.warmup):
        step()
    _sync(s.device)
    start = time.perf_counter()
    for _ in range(s.steps):
        step()
    _sync(s.device)
    seconds = time.perf_counter() - start
    return {"images_per_s": s.steps * s.batch / seconds, "peak_mib": _peak_mib(s.device)}


def cached_dataset(s: Settings, folder: Path):
    """A COVID-19-layout dataset of `s.images` PNGs, loaded twice: the second load reads medtl's cache."""
    from bench_data import make_png8

    from medtl.training.data import covid19

    root = make_png8(folder / "covid19", s.images, s.source_px)
    with mock.patch.dict(os.environ, {"MEDTL_CACHE_DIR": str(folder / "cache")}):
        covid19.load(root, image_size=s.size, balance=False)  # fills the cache
        return covid19.load(root, image_size=s.size, balance=False)  # served from it (memory-mapped)


def _loader(s: Settings, splits, runtime):
    from medtl.training.loaders import make_loader
    from medtl.training.spec import TASKS, Task
    from medtl.training.tasks import make_adapter

    adapter = make_adapter(TASKS[Task.COVID19])
    return adapter, make_loader(splits.train, adapter, s.batch, runtime, shuffle=True, seed=0)


def _epochs_for(s: Settings, train_size: int) -> int:
    """Epochs over the cached training split that cover warm-up plus the timed steps."""
    per_epoch = max(1, -(-train_size // s.batch))
    return max(1, -(-(s.warmup + s.steps) // per_epoch))


def medtl_loop(s: Settings, splits) -> dict:
    """`loop.train_epoch` with medtl's runtime, model and optimizer over the cached dataset."""
    import torch

    from medtl.training.factory import build_model
    from medtl.training.loop import make_optimizer, train_epoch
    from medtl.training.runtime import resolve_runtime, seed_everything
    from medtl.training.spec import TASKS, RunSpec, Task

    runtime = resolve_runtime(s.device)
    spec = RunSpec(task="covid19", arch=s.arch, image_size=s.size, batch_size=s.batch, lr=1e-4)
    seed_everything(0)
    model = build_model(spec, TASKS[Task.COVID19]).to(runtime.torch_device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)  # as `loop.fit` does
    optimizer = make_optimizer(model, spec.optimizer.value, spec.lr, 1e-3)
    adapter, loader = _loader(s, splits, runtime)
    marks: list[float] = []

    def on_batch(done: int) -> None:
        _sync(s.device)
        marks.append(time.perf_counter())

    _reset_peak(s.device)
    for _ in range(_epochs_for(s, len(splits.train))):
        train_epoch(model, adapter, loader, optimizer, runtime, on_batch=on_batch)
    # Steady state: from the end of the warm-up steps to the last step (epoch turnovers included).
    timed = marks[s.warmup : s.warmup + s.steps + 1]
    steps = len(timed) - 1
    seconds = timed[-1] - timed[0]
    return {
        "images_per_s": steps * s.batch / seconds if steps > 0 else float("nan"),
        "peak_mib": _peak_mib(s.device),
        "runtime": runtime,
    }


def pipeline(s: Settings, splits) -> dict:
    """The loader alone: every batch from the cache to the device (`loop._batches`), no model."""
    from medtl.training.loop import _batches
    from medtl.training.runtime import resolve_runtime

    runtime = resolve_runtime(s.device)
    _, loader = _loader(s, splits, runtime)
    seen, start = 0, None
    for _ in range(_epochs_for(s, len(splits.train))):
        for image, _target, _extras in _batches(loader, runtime):
            if start is None:  # the first batch starts the loader workers: the clock starts after it
                _sync(s.device)
                start = time.perf_counter()
                continue
            seen += len(image)
    _sync(s.device)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return {"images_per_s": seen / seconds if seconds > 0 else float("nan")}


def run(s: Settings) -> dict:
    """Every measurement; the numbers behind the table."""
    import torch

    if s.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(s.device))
    with tempfile.TemporaryDirectory(prefix="medtl-gpu-check-") as tmp:
        splits = cached_dataset(s, Path(tmp))
        bare = bare_torch(s)  # torch's defaults (cuDNN free to pick non-deterministic kernels)
        loop = medtl_loop(s, splits)  # medtl's seed_everything: deterministic cuDNN, as every run trains
        feed = pipeline(s, splits)
    runtime = loop.pop("runtime")
    name = torch.cuda.get_device_name() if s.device.startswith("cuda") else "cpu"
    return {"settings": s, "device_name": name, "torch": torch.__version__, "runtime": runtime, "bare": bare, "loop": loop, "pipeline": feed}


def table(result: dict) -> str:
    """The Markdown table for BENCHMARKS.md."""
    s, bare, loop, feed, rt = result["settings"], result["bare"], result["loop"], result["pipeline"], result["runtime"]
    memory = "peak GPU MiB" if s.device.startswith("cuda") else "peak RSS MiB (CPU)"
    lines = [
        f"{s.arch} at {s.size}², batch {s.batch}, {s.steps} timed steps after {s.warmup}; {result['device_name']}, torch {result['torch']}; "
        f"medtl runtime: amp {rt.amp_dtype}, channels-last {rt.channels_last}, pinned {rt.pin_memory}, "
        f"{rt.num_workers} loader workers, {rt.threads} threads, deterministic cuDNN (seed_everything)",
        "",
        f"| measure | images/s | {memory} | vs bare |",
        "|---|---|---|---|",
        f"| bare PyTorch (bf16, channels-last, fused AdamW, batch resident) | {bare['images_per_s']:.1f} | {bare['peak_mib']:.0f} | 1.00 |",
        f"| medtl loop (train_epoch, data from the cache) | {loop['images_per_s']:.1f} | {loop['peak_mib']:.0f} | {loop['images_per_s'] / bare['images_per_s']:.2f} |",
        f"| data pipeline alone (cache → device) | {feed['images_per_s']:.1f} | | {feed['images_per_s'] / bare['images_per_s']:.2f} |",
    ]
    headroom = feed["images_per_s"] / loop["images_per_s"]
    verdict = "the pipeline keeps up" if headroom >= 1.2 else "the pipeline is the bottleneck: raise MEDTL_LOADER_WORKERS"
    lines += ["", f"Pipeline / loop consumption: {headroom:.2f}× ({verdict})."]
    return "\n".join(lines) + "\n"


def section() -> str | None:
    """`benchmarks/run.py --only gpu`: the table on a CUDA machine, None without CUDA (the section keeps its text)."""
    import torch

    if not torch.cuda.is_available():
        print(NEEDS_CUDA, file=sys.stderr)
        return None
    return table(run(Settings("cuda")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu (with --smoke, to test the script)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=1024, help="files in the cached dataset")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NEEDS_CUDA)
        return 0
    settings = Settings(args.device, args.arch, args.size, args.batch, args.steps, images=args.images)
    if args.smoke:
        settings = Settings(args.device, args.arch, **SMOKE)
    print(table(run(settings)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
