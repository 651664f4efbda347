"""`medtl` command line: one sub-command a module under `medtl.mlops.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from medtl.errors import UserError

# Sub-command modules live in `medtl.mlops.commands` (flags they share in `commands/_args.py`), each defining
# `register(subparsers) -> None` whose parser sets `func=run(args) -> int`. These come first in
# `medtl --help`, in the study's order; any other module there is listed after them.
_ORDER: tuple[str, ...] = (
    "demo_archive",
    "ingest",
    "pseudolabel",
    "pretrain",
    "run",
    "sweep",
    "worker",
    "evaluate",
    "promote",
    "predict",
    "serve",
    "gradcam",
    "data",
    "models",
    "weights",
    "bench",
)


def _command_modules() -> list[str]:
    import medtl.mlops.commands as package

    found = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    return [n for n in _ORDER if n in found] + sorted(found.difference(_ORDER))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medtl",
        description="Transfer-learning experiments for medical imaging, tracked in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _command_modules():
        importlib.import_module(f"medtl.mlops.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(_mask(f"medtl {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM once medtl.mlops.signals handles it
        print(f"medtl {args.command}: interrupted ({str(exc) or 'SIGINT'})", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", 2))
    except Exception:  # a bug or an outside failure: the traceback helps, but never with a password
        import traceback

        print(_mask(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1


def _mask(text: str) -> str:
    from medtl.redact import mask_url

    return mask_url(text)


if __name__ == "__main__":
    sys.exit(main())
