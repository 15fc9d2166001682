"""Stored element formats of weights and the KV cache, and their bytes per core (SPEC.md §10.2).

`float16` is the device's storage dtype, uncompressed; `int8` and `int4` are symmetric integer
codes with one float16 scale per group of `GROUP_SIZE` elements along the reduced axis. SRAM,
link bytes and the ledger use these sizes. No numerics here (`model/quant.py` quantises), no
dequantisation cost (`kernels/dequant.py`).
"""

from __future__ import annotations

import enum
import math

from waferllm.errors import WaferError

GROUP_SIZE = 32  # elements per scale along the reduced axis (SPEC.md §10.2)
SCALE_BYTES = 2  # one float16 scale per group


class StoredDtype(enum.StrEnum):
    FLOAT16 = "float16"  # the device's storage dtype (float16 on wse2/wse3): not compressed
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bits(self) -> int:
        """Bits of one integer code (0 for the uncompressed storage dtype)."""
        return {StoredDtype.FLOAT16: 0, StoredDtype.INT8: 8, StoredDtype.INT4: 4}[self]

    @property
    def compressed(self) -> bool:
        return self is not StoredDtype.FLOAT16


def parse_stored_dtype(value: str | StoredDtype, *, what: str) -> StoredDtype:
    """A stored dtype from its name; `what` names the option in the error (weight_dtype...).
    fp8 is named by SPEC.md §1 but refused: no source we hold (PAPER.md, the code notes)
    gives a WSE fp8 format, conversion path or cost to model."""
    if isinstance(value, StoredDtype):
        return value
    if value == "fp8":
        raise WaferError(
            f"{what}=fp8 is not modelled (no source gives a WSE fp8 format or its conversion "
            "cost); use float16, int8 or int4"
        )
    try:
        return StoredDtype(value)
    except ValueError:
        valid = ", ".join(d.value for d in StoredDtype)
        raise WaferError(f"{what}={value!r} is not one of {valid}") from None


def stored_bytes(
    dtype: StoredDtype, *, reduced: int, other: int, storage_bytes: int, lanes: int = 1
) -> int:
    """Bytes of `lanes` independent [reduced, other] blocks on one core: uncompressed
    `reduced*other*storage_bytes` each; compressed, each block's codes packed
    (ceil(reduced*other*bits/8) bytes) plus ceil(reduced/GROUP_SIZE)*other float16 scales
    (groups never straddle a core's tile, so a tile of 40 holds 2 groups of it)."""
    if not dtype.compressed:
        return lanes * reduced * other * storage_bytes
    codes = math.ceil(reduced * other * dtype.bits / 8)
    scales = math.ceil(reduced / GROUP_SIZE) * other * SCALE_BYTES
    return lanes * (codes + scales)


def bytes_per_element(dtype: StoredDtype, storage_bytes: int) -> float:
    """Average bytes per element moved over a link: codes plus their share of the scales
    (int8 1.0625, int4 0.5625; the storage dtype's size uncompressed)."""
    if not dtype.compressed:
        return float(storage_bytes)
    return dtype.bits / 8 + SCALE_BYTES / GROUP_SIZE


def tile_stored_bytes(dtype: StoredDtype, tile: tuple[int, ...], storage_bytes: int) -> int:
    """Bytes of one core's tile whose second-to-last dim is the reduced axis (a matrix
    `[K, N]` tile, or a batch of them); a vector tile is the storage dtype's size."""
    numel = math.prod(tile)
    if not dtype.compressed or len(tile) < 2:
        return numel * storage_bytes
    *lead, reduced, other = tile
    return stored_bytes(
        dtype, reduced=reduced, other=other, storage_bytes=storage_bytes, lanes=math.prod(lead)
    )


__all__ = [
    "GROUP_SIZE",
    "SCALE_BYTES",
    "StoredDtype",
    "bytes_per_element",
    "parse_stored_dtype",
    "stored_bytes",
    "tile_stored_bytes",
]
