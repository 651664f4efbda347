"""Cost of ingest's burned-in text scan: images/s per core with and without it, on the demo archive and real-sized files.

Usage: python benchmarks/bench_scan.py [--patients 24] [--demo-patients 60] [--real 16] [--side 512] [--threads 1]

Each ingest runs in a fresh process with one worker and one OCR thread (one core), imports done
before the clock starts; the clock covers the whole run, the worker's start (and its loading of the
OCR models) included. Cases: the demo archive at 224² output and at 64² (what `make sweep` ingests:
`seconds` there is the time the scan adds to the demo), and generated real-sized files, half of
them with a patient's name, ID, birth date or accession number drawn into the pixels (those are
refused, so recognition is paid for them): CR plates of 2560×2048, DX plates of 3000×2500 stored
uncompressed and as JPEG 2000 lossless (as many PACS export them), and CT slices of 512×512.
`cpu_s` is the processor time of the ingest and its worker (the supervisor waits, the worker works on
one core), so `images_per_cpu_s` is images/s per core even on a busy machine. The worker's one-off
start with the OCR models (measured on a one-file archive, first row) is taken out of the per-image
figures; `ratio` is the per-image processor time with the scan over that without (target ≤ 2),
`wall_ratio` the whole runs' wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_RUN = """
import json, resource, sys, time
from pathlib import Path
import cv2, numpy, onnxruntime, pandas, pyarrow.parquet, pydicom, PIL.Image, tqdm  # imports outside the clock
from medtl.training.archive.ingest import ingest
src, out, mode, size, side, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
start, cpu_start = time.perf_counter(), cpu()
s = ingest(Path(src), Path(out), key=b"benchmark-key-0123456789", progress=False, size=size, burned_in=mode,
           scan_side=side, scan_threads=threads)
print(json.dumps({"files": s.seen, "images": s.images + s.refused_pixels, "refused": s.refused_pixels,
                  "seconds": time.perf_counter() - start, "cpu_s": cpu() - cpu_start}))
"""


def _ingest(src: Path, out: Path, mode: str, size: int, side: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _RUN, str(src), str(out), mode, str(size), str(side), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def real_files(folder: Path, modality: str, shape: tuple[int, int], count: int, *, compress: bool = False) -> Path:
    """`count` generated files of `shape`, every other one with an identifier drawn in (large, legible text)."""
    from dataclasses import replace

    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from medtl.training.archive import text_set

    size = max(12, round(max(shape) * 0.016))  # ~1.6 % of the long side: 41 px on a 2560 plate
    cases = [c for c in text_set.text_cases(dict.fromkeys(text_set.MODALITIES, shape), sizes=(size,), contrasts=(1.0,))
             if c.modality == modality]
    chosen = []
    for i in range(count):
        case = cases[i % len(cases)]
        chosen.append(replace(case, name=f"{case.name}_{i}", seed=case.seed + 1000 * i) if i % 2 == 0 else
                      replace(case, name=f"{case.name}_{i}_clean", category="clean", text="", seed=case.seed + 1000 * i))
    for case in chosen:
        path = text_set.write_case(case, folder)
        if compress:
            ds = pydicom.dcmread(path)
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
            ds.save_as(path, enforce_file_format=True)
    return folder


def main(patients: int = 24, demo_patients: int = 60, real: int = 16, side: int = 512, threads: int = 1) -> list[dict]:
    """Time ingest without and with the scan on each case; one row a (case, mode)."""
    from medtl.training.archive.demo_archive import write_demo_archive

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo_archive(root / "demo", seed=0, patients=patients)
        write_demo_archive(root / "demo_sweep", seed=0, patients=demo_patients)  # as `make sweep` writes it
        cases = [
            (f"demo archive ({patients} patients), 224² output", root / "demo", 224),
            (f"demo archive ({demo_patients} patients), 64² output: make sweep", root / "demo_sweep", 64),
            ("CR 2560×2048, uncompressed", real_files(root / "cr", "CR", (2560, 2048), real), 224),
            ("DX 3000×2500, uncompressed", real_files(root / "dx", "DX", (3000, 2500), real), 224),
            ("DX 3000×2500, JPEG 2000 lossless", real_files(root / "dxj", "DX", (3000, 2500), real, compress=True), 224),
            ("CT 512×512 slices", real_files(root / "ct", "CT", (512, 512), 2 * real), 224),
        ]
        one = root / "one"
        one.mkdir()
        first = sorted((root / "demo").rglob("*.dcm"))[0]
        (one / first.name).write_bytes(first.read_bytes())
        start = {mode: _ingest(one, root / f"out-one-{mode}", mode, 224, side, threads) for mode in ("off", "refuse")}
        fixed = max(0.0, start["refuse"]["cpu_s"] - start["off"]["cpu_s"])
        rows.append({"case": "worker start with the OCR models (once per worker)", "scan": "refuse",
                     "cpu_s": round(fixed, 2), "detector_side": side, "ocr_threads": threads})
        for name, src, size in cases:
            base: dict = {}
            for mode in ("off", "refuse"):
                result = _ingest(src, root / f"out-{src.name}-{mode}", mode, size, side, threads)
                base = base or result
                per_image = (result["cpu_s"] - (fixed if mode != "off" else 0.0)) / result["images"]
                base_per_image = base["cpu_s"] / base["images"]
                rows.append({
                    "case": name, "scan": mode, "images": result["images"], "refused": result["refused"],
                    "seconds": round(result["seconds"], 2), "cpu_s": round(result["cpu_s"], 2),
                    "images_per_cpu_s": round(1 / per_image, 1), "cpu_ms_per_image": round(1000 * per_image, 1),
                    "ratio": round(per_image / base_per_image, 2),
                    "wall_ratio": round(result["seconds"] / base["seconds"], 2),
                    "added_s": round(result["seconds"] - base["seconds"], 1),
                    "detector_side": side if mode != "off" else "", "ocr_threads": threads if mode != "off" else "",
                })
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=24, help="demo archive at 224² (default 24: ~240 images)")
    parser.add_argument("--demo-patients", type=int, default=60, help="demo archive at 64², as make sweep (default 60)")
    parser.add_argument("--real", type=int, default=16, help="real-sized CR and DX files per case (default 16; CT gets twice)")
    parser.add_argument("--side", type=int, default=512, help="detector input side (default 512)")
    parser.add_argument("--threads", type=int, default=1, help="OCR threads per worker (default 1)")
    args = parser.parse_args()
    for row in main(args.patients, args.demo_patients, args.real, args.side, args.threads):
        print(json.dumps(row))
