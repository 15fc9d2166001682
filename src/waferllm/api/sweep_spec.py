"""What a sweep asks for (SPEC.md §10.14): its axes, typed per key, and the points they span.

A sweep file (TOML or JSON: keys mapping to a value or a list of values) and `--axis
key=v1,v2,...` strings become a `Sweep`, whose `points()` is the product of the axes in the
order given (the last axis varies fastest). Every bad key, value or file is a `WaferError`.
Running the points, caching and writing results live in `sweep.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.mesh.virtual import as_grid

Value = int | float | str
Grid = tuple[int, int]

DEVICE_PREFIX = "device."
PLACEMENTS = ("fit", "per-layer")
SYSTEMS = ("waferllm", "t10", "ladder")
DTYPES = ("float16", "int8", "fp8", "int4")
REQUIRED = ("model", "prompt_len", "output_len")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepPoint:
    """One combination of axis values: the inputs of one estimate. The defaults are those of
    `waferllm estimate` (batch 1, one device, float16 weights and KV, grids searched)."""

    model: str
    device: str = "wse2"
    device_overrides: tuple[tuple[str, Value], ...] = ()  # (field, value), in axis order
    prompt_len: int
    output_len: int
    batch_size: int = 1
    prefill_grid: Grid | None = None  # None: searched
    decode_grid: Grid | None = None
    placement: str = "fit"
    system: str = "waferllm"
    num_devices: int | str = 1  # or "auto": the fewest devices that hold the point
    weight_dtype: str = "float16"
    kv_dtype: str = "float16"

    def to_dict(self) -> dict[str, Any]:
        """The point's inputs as plain values (grids as "RxC", num_devices as text: a count
        or "auto"), the canonical form for keys and rows; `device_overrides` as a mapping
        field -> value."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["device_overrides"] = dict(self.device_overrides)
        out["num_devices"] = str(self.num_devices)
        for name in ("prefill_grid", "decode_grid"):
            grid = out[name]
            out[name] = None if grid is None else f"{grid[0]}x{grid[1]}"
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sweep:
    """Named axes, each a non-empty tuple of typed values; the points are their product."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def num_points(self) -> int:
        count = 1
        for _, values in self.axes:
            count *= len(values)
        return count

    def varying(self) -> list[str]:
        """The keys of the axes with more than one value (the ones plots are drawn over)."""
        return [key for key, values in self.axes if len(values) > 1]

    def points(self) -> Iterator[SweepPoint]:
        keys = [key for key, _ in self.axes]
        for combo in itertools.product(*(values for _, values in self.axes)):
            fields: dict[str, Any] = {}
            overrides: list[tuple[str, Value]] = []
            for key, value in zip(keys, combo, strict=True):
                if key.startswith(DEVICE_PREFIX):
                    overrides.append((key.removeprefix(DEVICE_PREFIX), value))
                else:
                    fields[key] = value
            yield SweepPoint(**fields, device_overrides=tuple(overrides))


# ---- building a sweep ----------------------------------------------------------------------------
def load_sweep(
    path: str | Path | None = None,
    *,
    axes: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> Sweep:
    """A sweep from a file (TOML or JSON), `--axis key=v1,v2` strings and a Python mapping
    key -> value or list of values; later sources replace an axis of the same key.

    >>> load_sweep(values={"model": "tiny", "prompt_len": [16, 32], "output_len": 4}).num_points
    2
    """
    raw: dict[str, list[Any]] = {}
    if path is not None:
        raw.update(_flatten(_read_file(Path(path)), where=str(path)))
    for item in axes:
        key, text = _split_axis(item)
        raw[key] = text.split(",")
    for key, value in (values or {}).items():
        raw[key] = list(value) if isinstance(value, list | tuple) else [value]
    return make_sweep(raw)


def make_sweep(raw: Mapping[str, Sequence[Any]]) -> Sweep:
    """Type every value of every axis; refuse unknown keys, empty axes and missing ones."""
    axes: list[tuple[str, tuple[Any, ...]]] = []
    for key, values in raw.items():
        parse = _parser(key)
        if not values:
            raise WaferError(f"sweep axis {key!r} is empty; give it at least one value")
        typed = tuple(parse(key, v) for v in values)
        if len(set(typed)) != len(typed):
            raise WaferError(f"sweep axis {key!r} repeats a value: {list(values)!r}")
        axes.append((key, typed))
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise WaferError(f"a sweep needs the axes {', '.join(missing)} (one value or several)")
    return Sweep(axes=tuple(axes))


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise WaferError(f"cannot read sweep file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise WaferError(f"sweep file {str(path)!r} is not valid JSON: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WaferError(f"sweep file {str(path)!r} is not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise WaferError(f"sweep file {str(path)!r} must hold one object of axes")
    return data


def _flatten(data: Mapping[str, Any], *, where: str) -> dict[str, list[Any]]:
    """Axes from a file: a scalar is a one-value axis; TOML's nested `device.<field>` tables
    become dotted keys."""
    out: dict[str, list[Any]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key != "device":
                raise WaferError(f"sweep file {where}: {key!r} holds a table; give a list")
            out.update(_flatten({f"device.{k}": v for k, v in value.items()}, where=where))
        else:
            out[key] = list(value) if isinstance(value, list) else [value]
    return out


def _split_axis(item: str) -> tuple[str, str]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise WaferError(f"--axis expects key=v1,v2,..., got {item!r}")
    if not text.strip():
        raise WaferError(f"sweep axis {key.strip()!r} is empty; give at least one value")
    return key.strip(), text


# ---- typing values -------------------------------------------------------------------------------
Parser = Callable[[str, Any], Any]


def _parser(key: str) -> Parser:
    if key.startswith(DEVICE_PREFIX):
        return _device_field_parser(key.removeprefix(DEVICE_PREFIX))
    parsers: dict[str, Parser] = {
        "model": _text,
        "device": _text,
        "prompt_len": _positive_int,
        "output_len": _positive_int,
        "batch_size": _positive_int,
        "num_devices": _num_devices,
        "prefill_grid": _grid,
        "decode_grid": _grid,
        "placement": _one_of(PLACEMENTS),
        "system": _one_of(SYSTEMS),
        "weight_dtype": _one_of(DTYPES),
        "kv_dtype": _one_of(DTYPES),
    }
    if key not in parsers:
        valid = ", ".join([*parsers, "device.<field>"])
        raise WaferError(f"unknown sweep key {key!r}; valid keys: {valid}")
    return parsers[key]


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WaferError(f"sweep axis {key!r}: {value!r} is not a name")
    return value.strip()


def _positive_int(key: str, value: Any) -> int:
    number = _integer(key, value)
    if number < 1:
        raise WaferError(f"sweep axis {key!r}: {value!r} must be a positive integer")
    return number


def _num_devices(key: str, value: Any) -> int | str:
    """A positive integer, or "auto" (SPEC.md §10.10: the fewest devices that fit)."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    return _positive_int(key, value)


def _integer(key: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise WaferError(f"sweep axis {key!r}: {value!r} is not an integer")


def _number(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise WaferError(f"sweep axis {key!r}: {value!r} is not a number")


def _grid(key: str, value: Any) -> Grid:
    if isinstance(value, list):  # JSON and TOML write grids as [rows, cols]
        value = tuple(value)
    if isinstance(value, str):
        value = value.strip()
    try:
        grid = as_grid(value, "grid")
    except WaferError as exc:
        raise WaferError(f"sweep axis {key!r}: {exc}") from None
    assert grid is not None
    return grid


def _one_of(options: tuple[str, ...]) -> Parser:
    def parse(key: str, value: Any) -> str:
        text = value.strip() if isinstance(value, str) else value
        if text not in options:
            raise WaferError(f"sweep axis {key!r}: {value!r} is not one of {', '.join(options)}")
        return str(text)

    return parse


DEVICE_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Device) if f.name != "sources"}


def _device_field_parser(field: str) -> Parser:
    """Values of `device.<field>` typed as the Device field (int, float or str); the
    device's own checks (ranges) run per point, so a bad value is that point's error row."""
    kind = DEVICE_FIELD_TYPES.get(field)
    if kind is None:
        valid = ", ".join(DEVICE_FIELD_TYPES)
        raise WaferError(f"unknown device field {field!r} in sweep key; valid fields: {valid}")
    by_type: dict[str, Parser] = {"int": _integer, "float": _number, "str": _text}
    return by_type.get(str(kind), _scalar)


def _scalar(key: str, value: Any) -> Value:
    """A field of another type: an integer, a number or a name, whichever the value reads as."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        for parse in (_integer, _number, _text):
            try:
                return parse(key, value)
            except WaferError:
                continue
    raise WaferError(f"sweep axis {key!r}: {value!r} is not a number or a name")
