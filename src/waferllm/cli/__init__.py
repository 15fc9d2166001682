"""Command-line interface: argument parsing and printing only (SPEC.md §1.1, §9, §10).

Each subcommand lives in its own module with `register(subparsers)`; the work is done by the
public API. Every user error becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from waferllm.cli import bench, devices, estimate, generate, gpu, reproduce
from waferllm.cli.common import CliError, OneLineParser

COMMANDS = (devices, bench, generate, estimate, gpu, reproduce)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="waferllm",
        description="WaferLLM on a virtual wafer: run and cost LLM inference on mesh devices "
        "(all times, throughputs and energies are modelled).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"waferllm: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"waferllm: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("waferllm: interrupted", file=sys.stderr)
        return 130
