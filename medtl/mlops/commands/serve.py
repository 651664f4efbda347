"""`medtl serve`: a small read-only HTTP service over the studies in the tracking store."""

from __future__ import annotations

import argparse

from medtl.mlops.commands._args import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve study summaries, comparisons and reports over HTTP (read-only)",
        description=(
            "Start a read-only JSON service over the tracking store: GET /studies, "
            "/studies/{study}/summary, /studies/{study}/comparisons, /studies/{study}/report.html, "
            "/openapi.json and /health. Results are cached per study and mode until the study's "
            "runs change. Binds to 127.0.0.1 unless --host says otherwise."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    add_tracking_uri(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medtl.errors import UserError
    from medtl.evaluation.collect import mask_uri
    from medtl.evaluation.service import EvaluationService, make_server

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must lie in 0..65535, got {args.port}")
    service = EvaluationService(args.tracking_uri)
    try:
        server = make_server(service, args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = server.server_address[:2]
    print(f"serving {mask_uri(service.tracking_uri)} on http://{host}:{port} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
