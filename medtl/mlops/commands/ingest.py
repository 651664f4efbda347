"""`medtl ingest`: convert a DICOM archive into de-identified 8-bit PNGs and a manifest, logged to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtl.mlops.commands._args import add_tracking_uri

DESCRIPTION = """\
Walk SRC (a folder tree, or a DICOMDIR file), read every DICOM file, apply the modality LUT and the
file's VOI window (a robust percentile window when it has none), invert MONOCHROME1, slice
multi-frame files and volumes, and write 224x224 8-bit grayscale PNGs under DIR/images with
DIR/manifest.parquet (one row an image) and DIR/skipped.csv (source_key, reason).

Patient, study and series keys, source keys and every output name are HMAC-SHA256 digests under a
secret key: $MEDTL_DEID_KEY, or --key-file PATH (outside DIR, readable by its owner only: chmod 600).
--ephemeral-key draws a random key kept only in memory: for throw-away demos (a rerun cannot
resume, and keys cannot be linked to later data). Only an allow-list of technical header fields is
copied; no source path is written into DIR. Every manifest row and skipped row names its source by
one key, source_key; --source-map CSV (outside DIR) maps those keys back to paths.

Burned-in text: files with BurnedInAnnotation=YES, document classes, and the modalities that
commonly carry text in their pixels (US, SC, OT, XA, RF, ES, XC, GM, SM) are skipped with that
reason. --allow-modality US (repeatable) converts such files when they state BurnedInAnnotation=NO.
Every other image is scanned for text in its pixels (offline OCR, before the resize): an image whose
text matches the file's own patient name, ID, dates, accession number or institution, or looks
like an identifier (a date, 5+ digits, Name^Name, a word outside the overlay allow-list), is
refused; laterality and technique overlays (L, R, AP, PA, SUPINE, kV/mAs) pass. --burned-in mask
blacks out the text instead and keeps the image when a second scan finds nothing; --burned-in off
does not scan (a warning, recorded on the run). --forget KEY... removes sources' images from DIR
afterwards, for text a reader found that the scan missed.

Each file is decoded and scanned in an isolated worker process (--decode-timeout, --max-pixels); a
file that crashes or hangs its decoder or the scan is skipped. Reruns skip sources already
converted (by content hash); a run killed midway loses nothing already written. The run's counts
(images kept per scan verdict and modality, files refused per reason) are logged to MLflow
(experiment medtl/pretrain, medtl.stage=ingest). See docs/privacy.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest", help="DICOM archive -> de-identified PNGs + manifest",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", nargs="?",
                        help="folder of DICOM files (walked recursively) or a DICOMDIR file (not with --forget)")
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
    parser.add_argument("--burned-in", default="refuse", metavar="MODE",
                        help="text found in the pixels: refuse (default) the image, mask the text, or off (no scan)")
    parser.add_argument("--scan-side", type=int, default=512, metavar="PX",
                        help="long side of the text detector's input, at least --image-size; larger images are shrunk to it (default 512)")
    parser.add_argument("--scan-threads", type=int, default=1, metavar="N",
                        help="OCR threads per worker (default 1; --workers scales across cores)")
    parser.add_argument("--source-map", type=Path, metavar="CSV",
                        help="write source_key -> source path here (outside DIR; mode 0600)")
    parser.add_argument("--forget", nargs="+", metavar="KEY",
                        help="remove these sources (source_key values) and their images from DIR, for good")
    parser.add_argument("--decode-timeout", type=float, default=300.0, metavar="S",
                        help="seconds one file may take to decode and scan before it is skipped (default 300)")
    parser.add_argument("--max-pixels", type=int, default=2**28, metavar="N",
                        help="skip files with more pixel samples than N, before decoding (default 2^28)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.errors import UserError
    from medtl.training.archive.deid import load_key
    from medtl.training.archive.ingest import check_allowed, check_source_map, ingest
    from medtl.training.archive.pixel_scan import parse_mode

    out = Path(args.out)
    if args.forget:
        return _forget(args, out)
    if args.src is None:
        raise UserError("name the source archive: medtl ingest SRC --out DIR (or --forget KEY... --out DIR)")
    src = Path(args.src)
    if not src.exists():
        raise UserError(f"source {src} does not exist")
    if args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")
    allowed = check_allowed(args.allow_modality)
    check_source_map(args.source_map, out, src)
    mode = parse_mode(args.burned_in)
    key = load_key(out, key_file=args.key_file, ephemeral=args.ephemeral_key)
    summary = ingest(src, out, key=key, workers=args.workers, size=args.image_size,
                     retry_skipped=args.retry_skipped, progress=not args.no_progress,
                     allow_modalities=args.allow_modality, source_map=args.source_map,
                     decode_timeout=args.decode_timeout, max_pixels=args.max_pixels,
                     burned_in=mode, scan_side=args.scan_side, scan_threads=args.scan_threads)
    from medtl.mlops.tracking.ingest_run import log_ingest_run

    settings = {"image_size": args.image_size, "workers": args.workers, "burned_in": summary.scan_mode,
                "scan_side": max(args.scan_side, args.image_size), "scan_threads": args.scan_threads,
                "retry_skipped": args.retry_skipped,
                "allow_modality": ",".join(sorted(allowed)) or "none",
                "decode_timeout": args.decode_timeout, "max_pixels": args.max_pixels}
    run_id = log_ingest_run(out, summary, settings, args.tracking_uri)
    print(f"{summary.line()}; MLflow run {run_id}")
    return 0


def _forget(args: argparse.Namespace, out: Path) -> int:
    from medtl.errors import UserError
    from medtl.training.archive.forget import forget

    if args.src is not None:
        raise UserError("--forget works on an existing output: medtl ingest --forget KEY... --out DIR (no SRC)")
    done = forget(out, args.forget)
    mosaics = f"; {done.mosaics} cluster mosaics deleted (run medtl pseudolabel {out} again to redraw them)" if done.mosaics else ""
    print(f"ingest --forget: {done.sources} sources and their {done.images} images removed from {out}{mosaics}. "
          "Images already copied elsewhere (mosaics logged to MLflow, caches, shared copies) are not touched.")
    return 0
