"""`medtl demo-archive`: write a small synthetic DICOM archive with fake identifying values."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Write a synthetic DICOM archive (CT, MR and CR; head, chest, hand and knee; a multi-frame file,
MONOCHROME1 and RLE-compressed radiographs, series with and without a VOI window) under DIR.
Every patient-identifying field holds a plausible FAKE value, so the archive exercises
de-identification; --planted-out writes those values to a file outside DIR for leak scans. Every
20th patient also has one image with its name and ID drawn into the pixels (no BurnedInAnnotation
element), which ingest's pixel scan refuses.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-archive", help="write a small synthetic DICOM archive",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--patients", type=int, default=6, metavar="N", help="number of patients (default 6, ~60 images; make sweep writes 60, ~600 images)")
    parser.add_argument("--planted-out", type=Path, metavar="FILE",
                        help="also write the planted identifying values, one a line, to FILE (outside DIR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.atomic import write_atomic
    from medtl.errors import UserError
    from medtl.training.archive.demo_archive import planted_identifiers, write_demo_archive

    out = Path(args.out)
    if args.planted_out is not None and args.planted_out.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--planted-out {args.planted_out} lies inside the archive {out}; write it elsewhere")
    archive = write_demo_archive(out, seed=args.seed, patients=args.patients)
    if args.planted_out is not None:
        write_atomic(args.planted_out, "\n".join(sorted(planted_identifiers(out))) + "\n")
    burned = f" ({archive.burned_in} with the patient's name burned into the pixels: ingest refuses them)" if archive.burned_in else ""
    print(f"demo-archive: {archive.files} files, {archive.images} images, {archive.patients} patients -> {out}{burned}")
    return 0
