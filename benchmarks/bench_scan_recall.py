"""Recall of ingest's burned-in text scan by text size and contrast, on real-sized CR plates and CT slices.

Usage: python benchmarks/bench_scan_recall.py [--per-cell 8] [--side 512]

Each cell scans `per-cell` generated images, each with one of the header's identifiers drawn in
(cycling the patient's name, ID, birth date and accession number, four fonts, four corners, bright
text and dark text on a bright label), as ingest scans them: the displayed 8-bit image at full
resolution, detection on a copy shrunk to `side` pixels. Recall is the share refused. Contrast is
the text's intensity step above (or below) its background as a share of the display range;
`detector_px` the font size once the image is shrunk for the detector: the scan's floor is there.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

SHAPES = {"CR": (2560, 2048), "CT": (512, 512)}
SIZES = {"CR": (16, 20, 24, 28, 32, 40, 48), "CT": (6, 7, 8, 10, 12, 14)}
CONTRASTS = (1.0, 0.5, 0.25, 0.12, 0.06)


def main(per_cell: int = 8, side: int = 512) -> list[dict]:
    """One row an (image kind, font size): recall at each contrast."""
    from pydicom.dataset import Dataset

    from medtl.training.archive import text_rules, text_set
    from medtl.training.archive.pixel_scan import BurnedInText, Mode, Scanner

    scanner = Scanner(Mode.REFUSE, side=side, threads=1)
    rows = []
    for modality, shape in SHAPES.items():
        base = [c for c in text_set.text_cases(dict.fromkeys(text_set.MODALITIES, shape)) if c.modality == modality]
        for size in SIZES[modality]:
            row: dict = {"image": f"{modality} {shape[0]}×{shape[1]}", "font_px": size,
                         "detector_px": round(size * min(1.0, side / max(shape)), 1)}
            for contrast in CONTRASTS:
                refused = 0
                for k in range(per_cell):
                    case = replace(base[k % len(base)], size=size, contrast=contrast, font=text_set.FONTS[k % len(text_set.FONTS)],
                                   polarity=("bright", "dark")[k % 2])
                    image = (np.clip(text_set.display_image(case), 0, 1) * 255 + 0.5).astype(np.uint8)
                    ds = Dataset()
                    for keyword, value in text_set.patient(case.seed).items():
                        setattr(ds, keyword, value)
                    try:
                        scanner.scan(image, text_rules.header_values(ds))
                    except BurnedInText:
                        refused += 1
                row[f"recall@{contrast:g}"] = round(refused / per_cell, 2)
            rows.append(row)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-cell", type=int, default=8, help="images per (size, contrast) cell (default 8)")
    parser.add_argument("--side", type=int, default=512, help="detector input side (default 512)")
    args = parser.parse_args()
    for row in main(args.per_cell, args.side):
        print(json.dumps(row))
