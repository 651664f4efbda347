"""Ingest throughput and peak memory on the demo archive, by archive size and worker count (pixel scan on, the default; `bench_scan.py` compares it with the scan off)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = (6, 24)  # patients: ~60 and ~240 images
WORKERS = (1, 2)

_RUN = """
import json, resource, sys, time, tracemalloc
from pathlib import Path
import pandas, pyarrow.parquet, pydicom, PIL.Image, tqdm  # imports outside the timed region
from medtl.training.archive.ingest import ingest
src, out, workers, trace = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if trace:
    tracemalloc.start()
start = time.perf_counter()
s = ingest(src, out, key=b"benchmark-key-0123456789", workers=workers, progress=False)
seconds = time.perf_counter() - start
row = {"files": s.seen, "images": s.images, "seconds": round(seconds, 3),
       "files_per_s": round(s.seen / seconds, 1), "images_per_s": round(s.images / seconds, 1),
       "maxrss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
       "maxrss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
if trace:
    row = {"tracemalloc_peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 2)}
print(json.dumps(row))
"""


def main() -> dict:
    """Run each (patients, workers) configuration in a fresh process; returns the measurements.

    Each run starts from an empty output folder with imports done before the clock starts;
    `maxrss_*` is the peak resident set of the main process and of the largest worker;
    `tracemalloc_peak_mib` the Python-level allocation peak of a separate one-worker run (the
    files are converted in that process), which should not grow with the archive.
    """
    from medtl.training.archive.demo_archive import write_demo_archive

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for patients in SIZES:
            archive = Path(tmp) / f"archive_{patients}"
            write_demo_archive(archive, seed=0, patients=patients)
            for workers in WORKERS:
                row = _run(archive, Path(tmp) / f"out_{patients}_{workers}", workers, trace=False)
                if workers == 1:  # Python-level peak of the converting process, in a separate run
                    row.update(_run(archive, Path(tmp) / f"trace_{patients}", 1, trace=True))
                results[f"patients={patients},workers={workers}"] = row
    return results


def _run(archive: Path, out: Path, workers: int, *, trace: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", _RUN, str(archive), str(out), str(workers), str(int(trace))],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    for name, row in main().items():
        print(name, json.dumps(row))
