"""`waferllm devices`: the device presets with their PLMR constants and sources.

With `--device NAME|FILE` (and `--set key=value`) it shows that one resolved device instead,
so a what-if device can be checked before it is used.
"""

from __future__ import annotations

import argparse

from rich.table import Table

from waferllm.cli.common import console, print_json
from waferllm.device import Device, get_device, list_devices, parse_set_options
from waferllm.errors import WaferError

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
    ("static_power_w", "static power"),
    ("energy_pj_per_flop", "pJ/FLOP"),
    ("energy_pj_per_sram_byte", "pJ/SRAM byte"),
    ("energy_pj_per_hop_byte", "pJ/byte-hop"),
    ("vector_instr_floor_cycles", "instr floor"),
    ("step_overhead_cycles", "step overhead"),
    ("op_overhead_cycles", "op overhead"),
    ("scalar_cycles_per_element", "scalar instr"),
    ("layer_fixed_cycles", "layer fixed"),
    # the inter-system link (multi-wafer `fit`, --num-devices)
    ("system_link_bytes_per_s", "system link B/s"),
    ("system_link_latency_s", "system link latency"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("devices", help="list device presets and their PLMR constants")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument(
        "--device", default=None, help="show only this preset or JSON device file (default: all)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one constant of --device (repeatable), e.g. --set stage_latency_cycles=20",
    )
    parser.set_defaults(func=run)


def _selected(args: argparse.Namespace) -> list[Device]:
    overrides = parse_set_options(args.overrides)
    if args.device is None:
        if overrides:
            raise WaferError("--set needs --device: name the device to change")
        return list_devices()
    return [get_device(args.device, overrides)]


def run(args: argparse.Namespace) -> int:
    devices = _selected(args)
    if args.json:
        print_json([d.to_dict() for d in devices])
        return 0
    out = console()
    what = "Device presets" if args.device is None else f"Device {devices[0].name}"
    table = Table(title=f"{what} (PLMR constants; `--json` prints every field)")
    table.add_column("constant")
    for d in devices:
        table.add_column(d.name, justify="right")
    table.add_column(f"source ({devices[0].name})")
    for key, _label in SHOWN:
        values = [f"{getattr(d, key):g}" for d in devices]
        table.add_row(key, *values, devices[0].sources.get(key, ""))
    out.print(table)
    return 0
