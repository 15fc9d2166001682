"""`waferllm devices`: the device presets with their PLMR constants and sources."""

from __future__ import annotations

import argparse

from rich.table import Table

from waferllm.cli.common import console, print_json
from waferllm.device import list_devices

SHOWN = (
    ("mesh_rows", "rows"),
    ("mesh_cols", "cols"),
    ("clock_hz", "clock"),
    ("sram_bytes_per_core", "SRAM"),
    ("flops_per_cycle_per_core", "FLOP/cycle"),
    ("sram_bytes_per_cycle", "SRAM B/cycle"),
    ("link_bytes_per_cycle", "link B/cycle"),
    ("ramp_bytes_per_cycle", "ramp B/cycle"),
    ("hop_latency_cycles", "alpha"),
    ("stage_latency_cycles", "beta"),
    ("routes_per_core", "routes"),
    ("power_w", "power"),
    ("vector_instr_floor_cycles", "instr floor"),
    ("step_overhead_cycles", "step overhead"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("devices", help="list device presets and their PLMR constants")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    devices = list_devices()
    if args.json:
        print_json([d.to_dict() for d in devices])
        return 0
    out = console()
    table = Table(title="Device presets (PLMR constants; `--json` prints every field)")
    table.add_column("constant")
    for d in devices:
        table.add_column(d.name, justify="right")
    table.add_column("source (wse2)")
    for key, _label in SHOWN:
        values = [f"{getattr(d, key):g}" for d in devices]
        table.add_row(key, *values, devices[0].sources.get(key, ""))
    out.print(table)
    return 0
