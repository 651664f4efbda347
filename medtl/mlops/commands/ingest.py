"""`medtl ingest`: convert a DICOM archive into de-identified 8-bit PNGs and a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Walk SRC (a folder tree, or a DICOMDIR file), read every DICOM file, apply the modality LUT and the
file's VOI window (a robust percentile window when it has none), invert MONOCHROME1, slice
multi-frame files and volumes, and write 224x224 8-bit grayscale PNGs under DIR/images with
DIR/manifest.parquet (one row an image) and DIR/skipped.csv (source_key, reason).

Patient, study and series keys, source keys and every output name are HMAC-SHA256 digests under a
secret key: $MEDTL_DEID_KEY, or --key-file PATH (outside DIR, readable by its owner only: chmod 600).
--ephemeral-key draws a random key kept only in memory: for throw-away demos (a rerun cannot
resume, and keys cannot be linked to later data). Only an allow-list of technical header fields is
copied; no source path is written into DIR (--source-map CSV, outside DIR, maps source keys back).

Burned-in text: files with BurnedInAnnotation=YES, document classes, and the modalities that
commonly carry text in their pixels (US, SC, OT, XA, RF, ES, XC, GM, SM) are skipped with that
reason. --allow-modality US (repeatable) converts such files when they state BurnedInAnnotation=NO.

Each file is decoded in an isolated worker process (--decode-timeout, --max-pixels); a file that
crashes or hangs its decoder is skipped. Reruns skip sources already converted (by content hash);
a run killed midway loses nothing already written. See docs/privacy.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest", help="DICOM archive -> de-identified PNGs + manifest",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="folder of DICOM files (walked recursively) or a DICOMDIR file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reruns resume)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="converting processes (default 1)")
    parser.add_argument("--key-file", type=Path, metavar="PATH", help="file holding the de-identification key (outside DIR)")
    parser.add_argument(
        "--ephemeral-key", action="store_true",
        help="DEMOS ONLY: random key kept in memory, never stored; keys differ on every run",
    )
    parser.add_argument("--image-size", type=int, default=224, metavar="PX", help="output side in pixels (default 224)")
    parser.add_argument("--retry-skipped", action="store_true", help="try again sources recorded as skipped")
    parser.add_argument(
        "--allow-modality", action="append", default=[], metavar="CODE",
        help="convert CODE images (US, SC, OT, XA, RF, ES, XC, GM, SM) that state BurnedInAnnotation=NO; repeatable",
    )
    parser.add_argument("--source-map", type=Path, metavar="CSV",
                        help="write source_key -> source path here (outside DIR; mode 0600)")
    parser.add_argument("--decode-timeout", type=float, default=300.0, metavar="S",
                        help="seconds one file may take to decode before it is skipped (default 300)")
    parser.add_argument("--max-pixels", type=int, default=2**28, metavar="N",
                        help="skip files with more pixel samples than N, before decoding (default 2^28)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.errors import UserError
    from medtl.training.archive.deid import load_key
    from medtl.training.archive.ingest import check_allowed, check_source_map, ingest

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise UserError(f"source {src} does not exist")
    if args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")
    check_allowed(args.allow_modality)
    check_source_map(args.source_map, out, src)
    key = load_key(out, key_file=args.key_file, ephemeral=args.ephemeral_key)
    summary = ingest(src, out, key=key, workers=args.workers, size=args.image_size,
                     retry_skipped=args.retry_skipped, progress=not args.no_progress,
                     allow_modalities=args.allow_modality, source_map=args.source_map,
                     decode_timeout=args.decode_timeout, max_pixels=args.max_pixels)
    print(summary.line())
    return 0
