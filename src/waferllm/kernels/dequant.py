"""What compressed weights and KV cost on the core: dequantisation per use, quantisation per write.

A compressed tile (`mesh.storage`) is expanded one scale group at a time into a float16 chunk
of min(K, 32) x N elements (K the reduced axis): `UNPACK_INSTRUCTIONS` vector instructions
turn the codes into float16, one more multiplies the chunk by its group's N scales (a stride-0
DSD dimension repeats the scale row over the group's rows), then the kernel's unchanged
multiply-accumulate streams the chunk. Each instruction handles one element per SIMD lane per
cycle: `vector_op_cycles` with 2 "flops" per element (F/2 lanes) and 2 SRAM elements (read,
write). Placeholder: no published WSE measurement of integer unpacking exists; the counts are
those of the instruction sequence, the rate assumes 16-bit integer DSD ops run at the f16 lane
rate. A token's k and v are quantised when written to the cache (`QUANTISE_INSTRUCTIONS`).
No numerics here (`model/quant.py`); no byte counts (`mesh/storage.py`).
"""

from __future__ import annotations

import math

from waferllm.device import Device
from waferllm.mesh.compute import charge_inline_compute, vector_op_cycles
from waferllm.mesh.cost import Ledger
from waferllm.mesh.storage import GROUP_SIZE, StoredDtype
from waferllm.mesh.virtual import Mesh

# Vector instructions per element to turn codes into float16, before the scale multiply:
# int8 one sign-extending convert; int4 three (shift the nibble into place, an arithmetic
# shift right to sign-extend it, convert).
UNPACK_INSTRUCTIONS = {StoredDtype.INT8: 1, StoredDtype.INT4: 3}
SCALE_INSTRUCTIONS = 1  # the chunk times its group's scales
# Quantising a written token per group: absolute maximum (1), times 1/scale (1), round and
# convert to the integer code (1); int4 packs two codes per byte (shift, or: 2 more). The
# reciprocal of each group's scale is one scalar divide (`scalar_cycles_per_element`).
QUANTISE_INSTRUCTIONS = {StoredDtype.INT8: 3, StoredDtype.INT4: 5}
LANE_FLOPS = 2.0  # one element per SIMD lane per cycle: F/2 elements per cycle
SRAM_ELEMENTS = 2.0  # each instruction reads its operand and writes its result


def dequant_chunk_rows(reduced: int) -> int:
    """Rows of the reduced axis one float16 chunk holds: one scale group."""
    return min(reduced, GROUP_SIZE)


def dequant_cycles(device: Device, dtype: StoredDtype, *, reduced: int, other: int) -> float:
    """One use of a [reduced, other] tile: ceil(K/32) groups x (unpack + 1) instructions of
    min(K, 32) * N elements each; 0 for the uncompressed storage dtype."""
    if not dtype.compressed or reduced == 0 or other == 0:
        return 0.0
    groups = math.ceil(reduced / GROUP_SIZE)
    return vector_op_cycles(
        device,
        num_instructions=groups * (UNPACK_INSTRUCTIONS[dtype] + SCALE_INSTRUCTIONS),
        length=dequant_chunk_rows(reduced) * other,
        flops_per_element=LANE_FLOPS,
        sram_elements_per_element=SRAM_ELEMENTS,
    )


def quantise_cycles(device: Device, dtype: StoredDtype, *, reduced: int, other: int) -> float:
    """Quantising a written [reduced, other] block (a token's k or v tile: head-dim slots by
    kv heads): `QUANTISE_INSTRUCTIONS` vector instructions over it, one scalar divide per
    group; 0 for the uncompressed storage dtype."""
    if not dtype.compressed or reduced == 0 or other == 0:
        return 0.0
    vector = vector_op_cycles(
        device,
        num_instructions=QUANTISE_INSTRUCTIONS[dtype],
        length=reduced * other,
        flops_per_element=LANE_FLOPS,
        sram_elements_per_element=SRAM_ELEMENTS,
    )
    return vector + math.ceil(reduced / GROUP_SIZE) * other * device.scalar_cycles_per_element


def charge_dequant(
    mesh: Mesh, ledger: Ledger, op: str, dtype: StoredDtype, *, reduced: int, other: int
) -> None:
    """Charge `dequant_cycles` as compute on every core. It runs inside its kernel's loop (no
    operation start of its own) and does no model FLOPs."""
    cycles = dequant_cycles(mesh.device, dtype, reduced=reduced, other=other)
    charge_inline_compute(ledger, op, cycles=cycles)


def charge_quantise(
    mesh: Mesh, ledger: Ledger, op: str, dtype: StoredDtype, *, reduced: int, other: int
) -> None:
    """Charge `quantise_cycles` as compute on every core (inside the cache write)."""
    cycles = quantise_cycles(mesh.device, dtype, reduced=reduced, other=other)
    charge_inline_compute(ledger, op, cycles=cycles)


def dequant_scratch_bytes(dtype: StoredDtype, *, reduced: int, other: int, sb: int) -> int:
    """The float16 chunk one use of a compressed [reduced, other] tile expands into."""
    if not dtype.compressed:
        return 0
    return dequant_chunk_rows(reduced) * other * sb


__all__ = [
    "QUANTISE_INSTRUCTIONS",
    "SCALE_INSTRUCTIONS",
    "UNPACK_INSTRUCTIONS",
    "charge_dequant",
    "charge_quantise",
    "dequant_cycles",
    "dequant_scratch_bytes",
    "quantise_cycles",
]
