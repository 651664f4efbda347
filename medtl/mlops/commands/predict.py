"""`medtl predict`: apply a registered (promoted) model or a checkpoint file to images."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict with a promoted model: medtl predict --model models:/finetuned-<task>-<arch>@champion IMAGES",
        description=(
            "Load a model from the registry (models:/name@alias or models:/name/version) or a medtl "
            "best.pt file, read PNG/JPEG/TIFF/DICOM images, and write one row per image: the "
            "prediction and each class's probability. Segmentation masks are written as PNGs beside "
            "the CSV."
        ),
    )
    p.add_argument("--model", required=True, help="models:/finetuned-<task>-<arch>@champion, or a best.pt file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default=None, help="CSV to write (default: print to stdout)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=VALUE", help="extra input, e.g. male=1")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import sys
    import tempfile
    from pathlib import Path

    from medtl.atomic import atomic_open
    from medtl.errors import UserError
    from medtl.training.inference import load_predictor, predict_images

    extras = {}
    for item in args.extra:
        name, sep, value = item.partition("=")
        try:
            extras[name] = float(value)
        except ValueError:
            raise UserError(f"--extra {item!r}: expected NAME=NUMBER, e.g. male=1") from None
        if not sep:
            raise UserError(f"--extra {item!r}: expected NAME=NUMBER, e.g. male=1")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model.startswith("models:/"):
            from medtl.mlops.tracking.registry import resolve_weights
            from medtl.training import schema as S

            path = resolve_weights(args.model, S.resolve_tracking_uri(args.tracking_uri), Path(tmp)).path
        else:
            path = Path(args.model)
        predictor = load_predictor(path)
        rows = predict_images(predictor, [Path(p) for p in args.images], extras)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for row in rows:
            if "mask" in row:
                from PIL import Image

                mask_path = out.with_name(f"{Path(row['path']).stem}.mask.png")
                Image.fromarray(row.pop("mask").astype("uint8") * 255).save(mask_path)
                row["mask_path"] = str(mask_path)
    else:
        for row in rows:
            row.pop("mask", None)
    header = list(rows[0])
    if args.out:
        with atomic_open(out, "w", newline="") as fh:
            csv.DictWriter(fh, header).writeheader()
            csv.DictWriter(fh, header).writerows(rows)
        print(f"predict: {len(rows)} images -> {out}")
    else:
        writer = csv.DictWriter(sys.stdout, header)
        writer.writeheader()
        writer.writerows(rows)
    return 0
