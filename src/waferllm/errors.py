"""User-facing error types shared by every layer.

Each is a ValueError subclass so that callers can catch user mistakes in one place; the CLI
turns any of them into one stderr line and exit code 2. Internal invariants use `assert`.
Nothing here imports anything of ours.
"""

from __future__ import annotations


class WaferError(ValueError):
    """A user mistake or an infeasible request: bad input, a plan that cannot run."""


class NonFiniteError(WaferError):
    """A computation produced NaN or infinite values (e.g. float16 overflow on large weights)."""


class GridError(WaferError):
    """A grid that is malformed, too large for the device, or unusable for an algorithm."""


class SramOverflowError(WaferError):
    """A core's live bytes exceed its SRAM (the M of PLMR)."""

    def __init__(
        self,
        *,
        tensor: str,
        core: tuple[int, int],
        needed_bytes: int,
        available_bytes: int,
        hint: str = "",
    ) -> None:
        self.tensor = tensor
        self.core = core
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.hint = hint
        message = (
            f"SRAM overflow allocating '{tensor}' on core (y={core[0]}, x={core[1]}): "
            f"needs {needed_bytes} bytes per core, {available_bytes} available"
        )
        super().__init__(message + (f"; {hint}" if hint else ""))


class RouteOverflowError(WaferError):
    """A core needs more routes (colours) than its router allows (the R of PLMR)."""

    def __init__(self, *, routes: str, core: tuple[int, int], needed: int, limit: int) -> None:
        self.routes = routes
        self.core = core
        self.needed = needed
        self.limit = limit
        super().__init__(
            f"route overflow configuring '{routes}' on core (y={core[0]}, x={core[1]}): "
            f"needs {needed} routes, the device allows {limit} per core"
        )
