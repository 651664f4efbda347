"""`medtl reader-packet`: a blinded packet of a gradcam run's heatmaps for radiologists to rate."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reader-packet",
        help="write a blinded rating packet (heatmaps labelled a/b/c, shuffled per image)",
        description=(
            "Write into the new or empty folder --out, per image, image-NN/image.png and the arms' "
            "overlays as image-NN/a.png, b.png, ... in an order shuffled per image with --seed, "
            "plus rating_sheet.csv (image, label, score, comment) and README.txt. No arm name or "
            "run id appears in the packet; the key (image, label) -> arm is logged only in the "
            "gradcam run as reader/key.json. Re-running with the same seed gives the same packet."
        ),
    )
    p.add_argument("--gradcam-run", required=True, help="run id printed by `medtl gradcam`")
    p.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image shuffle (default 0)")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.mlops.explain.reader_study import write_packet

    packet = write_packet(args.gradcam_run, args.out, seed=args.seed, tracking_uri=args.tracking_uri)
    print(f"{packet.out}: {packet.images} images, labels {', '.join(packet.labels)}; send it with rating_sheet.csv")
    return 0
