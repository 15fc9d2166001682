"""Helpers shared by the subcommands: the one-line parser, device options, JSON output, and
what every report gets on its way out (the command line in its provenance, its warnings on
stderr, the what-if line)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from waferllm.api.files import write_atomic
from waferllm.api.provenance import what_if
from waferllm.device import Device, get_device, parse_set_options


class CliError(Exception):
    """A usage error already phrased for the user."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)")


def console(*, stderr: bool = False) -> Console:
    """A rich console wide enough for our tables even when output is piped."""
    return Console(stderr=stderr, width=None if sys.stdout.isatty() else 140)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_device_options(parser: argparse.ArgumentParser, default: str = "wse2") -> None:
    parser.add_argument(
        "--device", default=default, help=f"preset name or JSON file (default {default})"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one device constant (repeatable), e.g. --set stage_latency_cycles=20",
    )


DTYPE_NAMES = ("float16", "int8", "int4", "fp8")  # SPEC.md §1; fp8 is refused by the API


def add_dtype_options(parser: argparse.ArgumentParser) -> None:
    """--weight-dtype and --kv-dtype (SPEC.md §1, §10.2)."""
    for flag, what in (("--weight-dtype", "weights"), ("--kv-dtype", "the KV cache")):
        parser.add_argument(
            flag,
            choices=DTYPE_NAMES,
            default="float16",
            help=f"how {what} are stored: float16 (default), int8 or int4 with one float16 "
            "scale per group of 32 (fp8 is not modelled)",
        )


def dtype_line(report: dict[str, Any]) -> str | None:
    """A line naming compressed weights or KV cache, None when both are float16."""
    weights, kv = report.get("weight_dtype", "float16"), report.get("kv_dtype", "float16")
    if weights == kv == "float16":
        return None
    return (
        f"stored compressed: weights {weights}, KV cache {kv} (SRAM and links count codes and "
        "scales; every use pays the dequantisation, modelled)"
    )


def device_from_args(args: argparse.Namespace) -> Device:
    return get_device(args.device, parse_set_options(args.overrides))


def finish_report(
    args: argparse.Namespace, report: dict[str, Any], *, warnings: Sequence[str] = ()
) -> dict[str, Any]:
    """Stamp the command line into the report's provenance, add the CLI's own `warnings`
    (settings without effect) to the report's, and print each on stderr, one per line."""
    provenance = report.get("provenance")
    if provenance is not None:
        provenance["command"] = getattr(args, "command_line", None)
    report["warnings"] = list(dict.fromkeys([*warnings, *report.get("warnings", [])]))
    for message in report["warnings"]:
        print(f"waferllm: warning: {message}", file=sys.stderr)
    return report


def add_trace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        metavar="FILE",
        type=Path,
        help="write the modelled timeline as Chrome/Perfetto trace JSON (open it in "
        "ui.perfetto.dev or chrome://tracing; times are modelled)",
    )


def write_trace(path: Path | None, trace: dict[str, Any]) -> None:
    if path is not None:
        write_atomic(path, json.dumps(trace, separators=(",", ":")) + "\n")


def what_if_line(device: Device) -> str | None:
    """ "what-if: key=value, ..." when constants of a preset were overridden, else None."""
    changed = what_if(device)
    if not changed:
        return None
    return "what-if: " + ", ".join(f"{key}={value!r}" for key, value in changed.items())


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
