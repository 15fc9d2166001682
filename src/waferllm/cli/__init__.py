"""Command-line interface: argument parsing and printing only (SPEC.md §1.1, §9, §10).

Each subcommand lives in its own module with `register(subparsers)`; the work is done by the
public API. Every user error (the `WaferError` family, or a usage error) becomes one line on
stderr and exit code 2; any other exception is a bug: one "internal error" line and exit 1
(SPEC.md §9). Never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Sequence

from waferllm.api.provenance import package_commit, package_version
from waferllm.cli import bench, devices, estimate, generate, gpu, reproduce, serve_sim, sweep
from waferllm.cli.common import CliError, OneLineParser
from waferllm.errors import WaferError

MAX_MESSAGE_CHARS = 500  # one line, and a short one: some messages list what was found

COMMANDS = (devices, bench, generate, estimate, gpu, reproduce, serve_sim, sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="waferllm",
        description="WaferLLM on a virtual wafer: run and cost LLM inference on mesh devices "
        "(all times, throughputs and energies are modelled).",
    )
    parser.add_argument("--version", action="version", version=f"waferllm {version_string()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        args.command_line = shlex.join(["waferllm", *argv])
        with warnings.catch_warnings():
            # reports carry their warnings and the commands print them, one line each
            warnings.simplefilter("ignore")
            return int(args.func(args) or 0)
    except (CliError, WaferError) as exc:
        print(f"waferllm: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except MemoryError as exc:  # the host ran out: a request too large for this machine
        print(f"waferllm: error: out of host memory: {one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not _is_allocator_error(exc):
            return _internal_error(exc)
        print(f"waferllm: error: out of host memory: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("waferllm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, never a traceback
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    print(
        f"waferllm: internal error: {type(exc).__name__}: {one_line(exc)} (a bug; please "
        "report it with the command line)",
        file=sys.stderr,
    )
    return 1


def _is_allocator_error(exc: RuntimeError) -> bool:
    """torch reports a failed host allocation as a RuntimeError, not a MemoryError."""
    text = str(exc)
    return "can't allocate memory" in text or "not enough memory" in text


def version_string() -> str:
    """The version, and the commit when known: "0.1.0 (commit 1a2b3c...)"."""
    commit = package_commit()
    return package_version() + (f" (commit {commit})" if commit else "")


def one_line(exc: BaseException) -> str:
    """An exception's message as one line of at most MAX_MESSAGE_CHARS characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text
