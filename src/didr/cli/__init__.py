"""The ``didr`` command line: ``didr toy``, ``didr train``, ``didr bench``, ``didr score``, ``didr sample``,
``didr eval`` and ``didr compare``.

Each subcommand is a module of this package exposing ``register(subparsers)``: it adds its parser
and sets ``func`` to a function taking the parsed arguments and returning an exit status. The
modules parse and call; the work is done by the library below them. Errors the user caused
(:class:`didr.errors.DidrError`) are printed on one line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from didr import __version__
from didr.cli import bench, evaluate, sample, score, toy, train
from didr.errors import DidrError
from didr.runtime import quiet_libraries

SUBCOMMANDS = (toy, train, bench, score, sample, evaluate)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors also exit with 2, on one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="didr", description="Align one-step diffusion generators with reward models (DIDR).")
    parser.add_argument("--version", action="version", version=f"didr {__version__}")
    parser.add_argument("--verbose", action="store_true", help="let transformers, diffusers and huggingface_hub print their warnings and progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for reports
    if not args.verbose:
        quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except DidrError as err:
        print(f"didr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"didr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
