"""`make bench`: run the benchmarks and write BENCHMARKS.md (medians and ratios from one run).

Usage: python benchmarks/run.py [--only loop,optimizer,sweep,demo,archs,scheduling,data,ingest,scan,scan_recall,evaluation,throughput,faults,gpu,workers] [--out BENCHMARKS.md]
Sections not selected keep their previous text in the file, so one section can be re-measured alone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from medtl.atomic import write_atomic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTIONS: dict[str, tuple[str, str]] = {
    "loop": ("Training-loop overhead (issue 2)", "target: medtl / bare ≤ 1.05 per epoch"),
    "optimizer": ("One training step: per-parameter vs fused AdamW (issue 16)", "step time at the demo's image size; medtl uses the fused kernel"),
    "sweep": ("`make sweep` wall time (issue 2)", "target: under 5 minutes on 2 cores"),
    "demo": ("`make sweep` from `make clean`: stages, fixed cost per grid point, headline (issue 16)", "target: under 4 minutes on 2 cores, fixed cost ≤ 1 s per point"),
    "archs": ("Architectures: training images/s and peak memory (issue 3)", "batch 16; the table to plan a grid with"),
    "scheduling": ("Sweep scheduling: gap between trials, 1 vs 2 workers, SQLite vs PostgreSQL (issue 7)", ""),
    "data": ("Datasets: samples/s from the cache vs decoding (issue 5)", ""),
    "ingest": ("DICOM ingest throughput and memory (issue 4)", "the pixel scan on (the default since issue 22)"),
    "scan": ("Burned-in text scan: ingest images/s per core with and without it (issue 22)", "target: ratio ≤ 2 on real-sized images; 1 worker, 1 OCR thread"),
    "scan_recall": ("Burned-in text scan: recall by text size and contrast (issue 22)", "identifying text drawn into real-sized CR plates and CT slices"),
    "evaluation": ("Evaluation report over large stores (issue 8)", "targets: the whole command ≥ 10× the naive MLflow-API way at 2,000 runs, ≤ 10 s at 10,000 runs (issue 25)"),
    "throughput": ("Throughput table for `medtl sweep --plan` (issue 13)", "writes benchmarks/throughput.json; CPU rows are rough upper bounds"),
    "runs": ("A run under faults: 60 s tracking outage, exact resume, fixed costs (issues 15, 16)", "target: 0 epochs lost / twice, resume difference 0, system metrics ≤ 0.1 s per run"),
    "faults": ("Fault table: a PostgreSQL + MLflow-server sweep under worker and service faults (issue 15)", "target: every count 0, no tracebacks"),
    "gpu": ("GPU check: resnet50 at 224², bare PyTorch vs medtl's loop, data pipeline vs GPU (issue 24)", "benchmarks/gpu_check.py on a CUDA machine; kept as is when run without one"),
    "workers": ("Many workers: 16 and 32 `medtl worker` processes on PostgreSQL + one MLflow server (issue 24)", "target: every point trained exactly once, no server errors; limits in docs/scaling.md"),
}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def to_markdown(result: object) -> str:
    """A list of flat dicts, a dict of flat dicts, or a flat dict → a Markdown table."""
    if isinstance(result, dict) and result and all(isinstance(v, dict) for v in result.values()):
        rows = [{"case": k, **v} for k, v in result.items()]
    elif isinstance(result, dict):
        rows = [{"measure": k, "value": v} for k, v in result.items()]
    else:
        rows = list(result)  # type: ignore[arg-type]
    if not rows:
        return "(no rows)\n"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bench_sweep() -> dict:
    """Time `medtl sweep --study configs/demo.yaml` in a fresh folder (what `make sweep` runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "medtl"), "sweep", "--study", str(ROOT / "configs" / "demo.yaml")],
            cwd=tmp,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )
        seconds = time.perf_counter() - start
    return {"study": "configs/demo.yaml", "wall_s": round(seconds, 1), "wall_min": round(seconds / 60, 2)}


def run_section(name: str) -> str | None:
    """The section's Markdown table; None when it cannot be measured here (the GPU check without CUDA)."""
    if name == "gpu":
        import gpu_check

        return gpu_check.section()
    if name == "sweep":
        result = bench_sweep()
    else:
        module = {"scheduling": "bench_sweep"}.get(name, f"bench_{name}")
        result = importlib.import_module(module).main()  # `throughput` writes benchmarks/throughput.json
    return to_markdown(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(f"bench: unknown section {unknown[0]!r}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    previous = _sections(out.read_text()) if out.exists() else {}
    import torch

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = {}
    for name in SECTIONS:
        if name not in chosen:
            if name in previous:
                body[name] = previous[name]
            continue
        title, target = SECTIONS[name]
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            table = run_section(name)
        except Exception:
            table = "Failed:\n\n```\n" + traceback.format_exc(limit=3) + "```\n"
        if table is None:  # not measurable on this machine: the section keeps its previous text
            if name in previous:
                body[name] = previous[name]
            continue
        note = f"_{target}_ — " if target else ""
        body[name] = f"## {title}\n\n{note}measured {stamp}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}\n\n{table}"
    text = "# Benchmarks\n\nWritten by `make bench` (`benchmarks/run.py`). Medians and ratios come from one run on the machine named in each section; these machines are noisy, so compare ratios, not absolute times across sections.\n\n"
    text += "\n".join(body[name] for name in SECTIONS if name in body)
    kept = _other_sections(out.read_text()) if out.exists() else []
    if kept:  # hand-written sections (a one-off measurement, a quiet-machine rerun) are never dropped
        text += "\n" + "\n".join(kept)
    write_atomic(out, text)
    print(f"bench: wrote {out}", file=sys.stderr)
    return 0


def _other_sections(text: str) -> list[str]:
    """The file's `## ` sections whose titles are not a SECTIONS entry's, in file order."""
    titles = {title for title, _ in SECTIONS.values()}
    parts = re.split(r"^(?=## )", text, flags=re.M)
    return [p.rstrip() + "\n" for p in parts if p.startswith("## ") and p[3:].split("\n", 1)[0] not in titles]


def _sections(text: str) -> dict[str, str]:
    found = {}
    for name, (title, _) in SECTIONS.items():
        match = re.search(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
        if match:
            found[name] = match.group(0).rstrip() + "\n"
    return found


if __name__ == "__main__":
    sys.exit(main())
