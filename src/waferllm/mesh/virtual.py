"""The virtual mesh: a rectangle of cores on a device, in functional or estimate mode.

`Mesh` owns the per-core SRAM tracker and route budget of one program phase, creates
distributed tensors (scatter from the host, gather back, empty buffers) and runs step loops.
In `estimate` mode tiles live on torch's `meta` device: the same kernels run shape-only, and a
loop of identical steps is recorded once with a repeat count (SPEC.md §3).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence

import torch

from waferllm.device import Device
from waferllm.errors import GridError, WaferError
from waferllm.mesh.cost import Charge, ChargeKind, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.memory import SramTracker
from waferllm.mesh.routes import RouteBudget
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes
from waferllm.mesh.tensor import DistTensor, Layout, join_tiles, split_host


class Mode(enum.StrEnum):
    FUNCTIONAL = "functional"  # real tensors, real numbers
    ESTIMATE = "estimate"  # meta tensors: shapes, costs, SRAM and route checks only


COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_grid(text: str) -> tuple[int, int]:
    """`P` (P x P) or `RxC` (R rows by C columns), SPEC.md §10.1."""
    raw = text.strip().lower()
    parts = raw.split("x")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise GridError(f"malformed grid {text!r}: use P (P x P) or RxC, e.g. 8 or 4x6")
    rows, cols = int(parts[0]), int(parts[1])
    if rows < 1 or cols < 1:
        raise GridError(f"grid {text!r} must have at least one row and one column")
    return rows, cols


# Host dtypes whose values a float32 tile holds exactly, so tiles may keep them (half the
# memory) and widen per use (`DistTensor.values`): checkpoints stored in float16 or bfloat16.
EXACT_IN_FLOAT32 = (torch.float16, torch.bfloat16)


def held_dtype(host: torch.dtype, compute: torch.dtype) -> torch.dtype:
    """The dtype functional tiles of a weight read as `host` are held in: `host` itself when
    the compute dtype is float32 and holds it exactly (widening is exact, so every number
    computed is the same), else the compute dtype."""
    return host if compute == torch.float32 and host in EXACT_IN_FLOAT32 else compute


TORCH_DEVICES = ("cpu", "cuda")  # where functional tiles can live (`--torch-device`)


def resolve_torch_device(name: str | torch.device) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a torch device; a WaferError when it is not one of those
    or when CUDA is asked for on a machine without it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in TORCH_DEVICES:
        raise WaferError(f"torch device {name!r} is not one of {', '.join(TORCH_DEVICES)}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise WaferError(
                f"torch device {str(name)!r} was asked for but torch sees no CUDA device on "
                "this machine; use --torch-device cpu (torch_device='cpu')"
            )
        if device.index is not None and device.index >= count:
            raise WaferError(f"torch device {str(name)!r}: this machine has {count} CUDA devices")
    return device


GridLike = int | str | tuple[int, int]


def as_grid(value: GridLike | None, name: str) -> tuple[int, int] | None:
    """A grid given in Python as P, "P", "RxC" or (rows, cols); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise GridError(f"{name}={value!r} is not a grid: use P, 'RxC' or (rows, cols)")
    if isinstance(value, int):
        return parse_grid(str(value))
    if isinstance(value, str):
        return parse_grid(value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return parse_grid(f"{value[0]}x{value[1]}")
    raise GridError(f"{name}={value!r} is not a grid: use P, 'RxC' or (rows, cols)")


class Mesh:
    """A rows x cols region of `device` whose top-left core is `origin` on the wafer."""

    def __init__(
        self,
        device: Device,
        rows: int,
        cols: int,
        *,
        mode: Mode = Mode.FUNCTIONAL,
        compute_dtype: torch.dtype = torch.float32,
        f16_accumulate: bool = False,
        origin: tuple[int, int] = (0, 0),
        torch_device: torch.device | str = "cpu",
    ) -> None:
        if rows < 1 or cols < 1:
            raise GridError(f"grid {rows}x{cols} must have at least one row and one column")
        if origin[0] < 0 or origin[1] < 0:
            raise GridError(f"a mesh's origin must be a core of the device, got {origin}")
        if origin[0] + rows > device.mesh_rows or origin[1] + cols > device.mesh_cols:
            raise GridError(
                f"grid {rows}x{cols} at origin {origin} does not fit the {device.name} mesh of "
                f"{device.mesh_rows}x{device.mesh_cols} cores"
            )
        self.device = device
        self.rows, self.cols = rows, cols
        self.mode = mode
        self.compute_dtype = compute_dtype
        self.f16_accumulate = f16_accumulate
        self.origin = origin
        self._tiles_device = torch.device(torch_device)  # where functional tiles live
        self.sram = SramTracker(
            rows=rows, cols=cols, capacity_bytes=device.sram_bytes_per_core, origin=origin
        )
        self.routes = RouteBudget(rows=rows, cols=cols, limit=device.routes_per_core, origin=origin)

    def __repr__(self) -> str:
        return f"Mesh({self.device.name}, {self.rows}x{self.cols}, {self.mode.value})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def num_cores(self) -> int:
        return self.rows * self.cols

    def size(self, axis: Axis) -> int:
        if axis is Axis.X:
            return self.cols
        return self.rows if axis is Axis.Y or Axis(axis) is Axis.Y else self.cols

    def submesh(self, rows: int, cols: int, origin: tuple[int, int] = (0, 0)) -> Mesh:
        """The rows x cols region of this mesh whose top-left core is `origin` (in this mesh's
        coordinates): same device, mode and dtypes, its own SRAM and route accounting (a
        region runs its own program; regions holding data at the same time must not overlap,
        which the caller's placement guarantees)."""
        y, x = origin
        if y < 0 or x < 0 or y + rows > self.rows or x + cols > self.cols:
            raise GridError(
                f"region {rows}x{cols} at {origin} does not fit inside the {self.rows}x{self.cols} "
                "mesh"
            )
        return Mesh(
            self.device,
            rows,
            cols,
            mode=self.mode,
            compute_dtype=self.compute_dtype,
            f16_accumulate=self.f16_accumulate,
            origin=(self.origin[0] + y, self.origin[1] + x),
            torch_device=self._tiles_device,
        )

    @property
    def torch_device(self) -> torch.device:
        """Where the tiles live: `meta` in estimate mode, else the torch device asked for
        (`cpu`, or a GPU with `--torch-device cuda`)."""
        return torch.device("meta") if self.mode is Mode.ESTIMATE else self._tiles_device

    # ---- creating distributed tensors --------------------------------------------------------
    def register(
        self,
        data: torch.Tensor,
        layout: Layout,
        name: str,
        *,
        stored: StoredDtype = StoredDtype.FLOAT16,
    ) -> DistTensor:
        """Wrap per-core tiles and charge their stored bytes to every core's SRAM (`stored`:
        compressed weights hold codes and scales, `mesh.storage`; the tiles themselves hold
        the dequantised values in the compute dtype)."""
        shape = data.shape
        assert shape[0] == self.rows and shape[1] == self.cols, (shape, self.shape)
        nbytes = tile_stored_bytes(stored, tuple(shape[2:]), self.device.storage_bytes)
        key = self.sram.alloc(name, nbytes)
        return DistTensor(data, layout, self, name, key, stored)

    def register_like(
        self, tensors: Sequence[DistTensor], names: Sequence[str]
    ) -> list[DistTensor]:
        """`register` of each tensor's tiles (shared), layout and storage under `names`, in
        turn: the same tensors, keys and SRAM peaks, allocated at once
        (`SramTracker.alloc_all`: an estimate-mode region repeats a layer's weights). With
        `copies` names per tensor (`len(names)` a multiple of `len(tensors)`), the tensors
        are registered that many times over, each copy's names in turn (a region's layers)."""
        copies, extra = divmod(len(names), len(tensors)) if tensors else (0, len(names))
        assert extra == 0, (len(names), len(tensors))
        storage_bytes = self.device.storage_bytes
        for t in tensors:
            shape = t.data.shape
            assert shape[0] == self.rows and shape[1] == self.cols, (shape, self.shape)
        sizes = [
            tile_stored_bytes(t.stored, tuple(t.data.shape[2:]), storage_bytes) for t in tensors
        ]
        keys = self.sram.alloc_all(names, sizes * copies)
        like = [*tensors] * copies
        return [
            DistTensor(t.data, t.layout, self, name, key, t.stored)
            for t, name, key in zip(like, names, keys, strict=True)
        ]

    def empty(self, layout: Layout, name: str, *, fill: float = 0.0) -> DistTensor:
        tile = layout.tile_shape(self.rows, self.cols)
        data = torch.full(
            (self.rows, self.cols, *tile), fill, dtype=self.compute_dtype, device=self.torch_device
        )
        return self.register(data, layout, name)

    def scatter(
        self,
        host: torch.Tensor,
        layout: Layout,
        name: str,
        *,
        ledger: Ledger | None = None,
        stored: StoredDtype = StoredDtype.FLOAT16,
        dtype: torch.dtype | None = None,
    ) -> DistTensor:
        """Host -> mesh. Charged as host I/O when a ledger is given (weights load uncharged).
        Functional tiles are held as `dtype` (default: the compute dtype; weights pass
        `held_dtype`, read back through `DistTensor.values`).

        In estimate mode `host` may be a meta tensor; only its shape is used.
        """
        if tuple(host.shape) != layout.shape:
            raise WaferError(
                f"tensor '{name}' of shape {tuple(host.shape)} does not match its layout's "
                f"{layout.shape}"
            )
        if self.mode is Mode.ESTIMATE:
            tile = layout.tile_shape(self.rows, self.cols)
            data = torch.empty(
                (self.rows, self.cols, *tile), dtype=self.compute_dtype, device="meta"
            )
        else:
            host = host.to(device=self.torch_device, dtype=dtype or self.compute_dtype)
            data = split_host(host, layout, self.rows, self.cols)
        if ledger is not None:
            self.charge_host_io(ledger, f"scatter.{name}", math.prod(layout.shape))
        return self.register(data, layout, name, stored=stored)

    def gather(self, tensor: DistTensor, *, ledger: Ledger | None = None) -> torch.Tensor:
        """Mesh -> host (the logical tensor, padding dropped, on the CPU)."""
        if ledger is not None:
            self.charge_host_io(ledger, f"gather.{tensor.name}", math.prod(tensor.layout.shape))
        joined = join_tiles(tensor.data, tensor.layout)
        return joined if self.mode is Mode.ESTIMATE else joined.cpu()

    def charge_host_io(self, ledger: Ledger, op: str, num_elements: int) -> None:
        nbytes = num_elements * self.device.storage_bytes
        seconds = nbytes / self.device.host_io_bytes_per_s
        ledger.charge(
            op,
            Charge(
                kind=ChargeKind.HOST_IO, cycles=seconds * self.device.clock_hz, host_bytes=nbytes
            ),
        )

    # ---- step loops ----------------------------------------------------------------------------
    def steps(self, count: int, ledger: Ledger) -> Iterator[int]:
        """Iterate over `count` identical steps: all of them in functional mode, one recorded
        `count` times in estimate mode. Only for steps whose cost does not depend on the index."""
        if count <= 0:
            return
        if self.mode is Mode.FUNCTIONAL:
            yield from range(count)
            return
        with ledger.repeat(count):
            yield 0

    def charged_steps(self, count: int, ledger: Ledger) -> Iterator[int]:
        """`count` identical steps whose body only charges (their numbers are computed apart,
        a few batched ops for all of them): the body runs once, estimate mode records it
        `count` times over (`steps`) and functional mode appends its records `count` times,
        exactly what running it every step would append (routes are configured once)."""
        if count <= 0:
            return
        if self.mode is Mode.ESTIMATE:
            yield from self.steps(count, ledger)
            return
        start = ledger.mark()
        yield 0
        ledger.replay(start, ledger.mark(), times=count - 1)
