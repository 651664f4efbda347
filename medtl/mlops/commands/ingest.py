"""`medtl ingest`: convert a DICOM archive into de-identified 8-bit PNGs and a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Walk SRC (a folder tree, or a DICOMDIR file), read every DICOM file, apply the modality LUT and the
file's VOI window (a robust percentile window when it has none), invert MONOCHROME1, slice
multi-frame files and volumes, and write 224x224 8-bit grayscale PNGs under DIR/images with
DIR/manifest.parquet (one row an image) and DIR/skipped.csv (source, reason).

Patient, study and series keys and every output name are HMAC-SHA256 digests under a secret key:
$MEDTL_DEID_KEY, or --key-file PATH (outside DIR). --ephemeral-key draws a random key kept only
in memory: for throw-away demos (a rerun cannot resume, and keys cannot be linked to later data).
Only an allow-list of technical header fields is copied. Reruns skip sources already converted
(by content hash); a run killed midway loses nothing already written.
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.errors import UserError
    from medtl.training.data.ingest import ingest, load_key

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise UserError(f"source {src} does not exist")
    if args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")
    key = load_key(out, key_file=args.key_file, ephemeral=args.ephemeral_key)
    summary = ingest(src, out, key=key, workers=args.workers, size=args.image_size,
                     retry_skipped=args.retry_skipped, progress=not args.no_progress)
    print(summary.line())
    return 0
