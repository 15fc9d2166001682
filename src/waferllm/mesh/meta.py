"""Shape-only execution of estimate mode's torch ops, without torch's Python meta kernels.

Torch computes a meta op's output in Python (~0.5 ms an op; the first imports torch._dynamo,
seconds; some import sympy). Inside `shape_only()` common pointwise ops, reductions, cat/stack,
matmul, gather, zeros_like, constant padding and arange on meta tensors get the shape torch
gives (contiguous: estimate mode reads no strides) in the dtype of the same op on one-element
CPU tensors; other ops run as usual. No numbers change.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_POINTWISE = (
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.mul.Tensor,
    aten.div.Tensor,
    aten.div.Tensor_mode,
    aten.where.self,
    aten.where.ScalarOther,
    aten.where.ScalarSelf,
    aten.pow.Tensor_Scalar,
    aten.pow.Scalar,
    aten.pow.Tensor_Tensor,
    aten.ge.Scalar,
    aten.gt.Scalar,
    aten.le.Scalar,
    aten.lt.Scalar,
    aten.eq.Scalar,
    aten.ne.Scalar,
    aten.ge.Tensor,
    aten.gt.Tensor,
    aten.le.Tensor,
    aten.lt.Tensor,
    aten.eq.Tensor,
    aten.ne.Tensor,
    aten.rsqrt.default,
    aten.sqrt.default,
    aten.reciprocal.default,
    aten.neg.default,
    aten.exp.default,
    aten.silu.default,
    aten.nan_to_num.default,
    aten.maximum.default,
    aten.minimum.default,
    aten.logical_and.default,
    aten.logical_or.default,
    aten.logical_not.default,
    aten.isfinite.default,
)
_REDUCTIONS = (aten.sum.dim_IntList, aten.amax.default, aten.amin.default, aten.mean.dim)


@functools.lru_cache(maxsize=256)
def _probe(dtype: torch.dtype, ndim: int) -> torch.Tensor:
    """A one-element CPU tensor standing for a meta operand (ones: no division by zero)."""
    return torch.ones((1,) * ndim, dtype=dtype)


def _stand_in(arg: Any) -> Any:
    """The probe for a meta tensor; a CPU scalar tensor (a wrapped Python number)
    as it is; None for any other tensor (the op then runs as usual)."""
    if not isinstance(arg, torch.Tensor):
        return arg
    if arg.device.type == "meta":
        return _probe(arg.dtype, arg.dim())
    if arg.device.type == "cpu" and arg.dim() == 0:
        return arg
    return None


def _signature(arg: Any) -> Hashable:
    """What the output dtype of an op on `arg` can depend on: a meta tensor's dtype and rank,
    anything else itself (a Python number by type and value, dims as a tuple); raises
    TypeError for what is not a key (a CPU scalar tensor: a wrapped Python number promotes
    unlike a plain one of the same dtype, and nothing here tells them apart)."""
    if isinstance(arg, torch.Tensor):
        if arg.device.type != "meta":
            raise TypeError("only meta tensors have a signature")
        return (arg.dtype, arg.dim())
    if isinstance(arg, list | tuple):
        return (type(arg), *map(_signature, arg))
    hash(arg)
    return (type(arg), arg)


def _probed_dtype(func: Callable, args: tuple, kwargs: dict) -> torch.dtype:
    """The dtype of `func` on one-element CPU probes standing for the meta operands."""
    if func in (aten.cat.default, aten.stack.default):
        args = ([_stand_in(t) for t in args[0]], *args[1:])
    return func(*[_stand_in(a) for a in args], **kwargs).dtype


_DTYPES: dict[Hashable, torch.dtype] = {}  # (op, argument signatures) -> output dtype
_DTYPES_MAX = 4096  # a few hundred distinct signatures in a whole `reproduce`


def _dtype(func: Callable, args: tuple, kwargs: dict) -> torch.dtype:
    """`_probed_dtype`, remembered per op and argument signature: torch's type promotion
    reads dtypes and Python number types only (the key holds the numbers' values too, so
    nothing is assumed about them); the probe op costs more than the rest of a rule."""
    try:
        key: Hashable = (func, tuple(map(_signature, args)), _signature(sorted(kwargs.items())))
    except TypeError:  # an unhashable argument: computed every time
        return _probed_dtype(func, args, kwargs)
    dtype = _DTYPES.get(key)
    if dtype is None:
        dtype = _probed_dtype(func, args, kwargs)
        if len(_DTYPES) >= _DTYPES_MAX:
            _DTYPES.clear()
        _DTYPES[key] = dtype
    return dtype


def _pointwise(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    if any(_stand_in(a) is None for a in args):
        return None
    shape = _broadcast([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)])
    if shape is None:
        return None
    return torch.empty(shape, dtype=_dtype(func, args, kwargs), device="meta")


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """Broadcasting on plain ints (torch.broadcast_shapes imports sympy); None when the
    shapes do not broadcast (torch then raises its own error)."""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for s in shapes:
        for i, n in enumerate(s, start=ndim - len(s)):
            if n != 1:
                if out[i] not in (1, n):
                    return None
                out[i] = n
    return tuple(out)


def _reduction(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    x, rest = args[0], args[1:]
    dims = rest[0] if rest else kwargs.get("dim")
    keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
    probe = _stand_in(x)
    if not dims or probe is None or probe is x:
        return None
    reduced = {d % max(x.dim(), 1) for d in dims}
    shape = [1 if i in reduced else n for i, n in enumerate(x.shape) if keepdim or i not in reduced]
    return torch.empty(shape, dtype=_dtype(func, args, kwargs), device="meta")


def _same(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Ops whose output has the input's shape and dtype (clone, roll)."""
    x = args[0]
    if x.device.type != "meta":
        return None
    return torch.empty(x.shape, dtype=x.dtype, device="meta")


def _like(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """zeros_like of a meta tensor on the meta device (torch's Python kernel imports sympy,
    ~0.5 s): its shape, in the asked dtype or its own."""
    x = args[0]
    plain = {"dtype": None, "pin_memory": False, "layout": torch.strided, "device": x.device}
    if x.device.type != "meta" or len(args) > 1 or kwargs.keys() - plain.keys():
        return None
    if any(kwargs.get(k) not in (None, plain[k]) for k in ("pin_memory", "layout", "device")):
        return None
    return torch.empty(x.shape, dtype=kwargs.get("dtype") or x.dtype, device="meta")


def _gather(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """gather of meta tensors: the index's shape in the input's dtype (where torch accepts
    the index: same rank, no larger than the input off `dim`)."""
    x, dim, index = args[:3]
    if kwargs or args[3:] not in ((), (False,)):
        return None
    if x.device.type != "meta" or index.device.type != "meta" or index.dim() != x.dim():
        return None
    d = dim % max(x.dim(), 1)
    if any(i > n for j, (i, n) in enumerate(zip(index.shape, x.shape, strict=True)) if j != d):
        return None
    return torch.empty(index.shape, dtype=x.dtype, device="meta")


def _in_place(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """An in-place pointwise op: the operand itself when the others broadcast to it."""
    out = _pointwise(func, args, kwargs)
    return args[0] if out is not None and out.shape == args[0].shape else None


def _joined(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """cat and stack of meta tensors of one rank along `dim`."""
    tensors, rest = list(args[0]), args[1:]
    dim = rest[0] if rest else kwargs.get("dim", 0)
    if kwargs.keys() - {"dim"} or not tensors:
        return None
    ndim = tensors[0].dim()
    if any(t.device.type != "meta" or t.dim() != ndim or t.numel() == 0 for t in tensors):
        return None
    shape = list(tensors[0].shape)
    if func is aten.stack.default:
        shape.insert(dim % (ndim + 1), len(tensors))
        others = [tuple(t.shape) for t in tensors]
    else:
        d = dim % ndim
        shape[d] = sum(t.shape[d] for t in tensors)
        others = [tuple(t.shape[:d]) + tuple(t.shape[d + 1 :]) for t in tensors]
    if len(set(others)) != 1:
        return None
    return torch.empty(shape, dtype=_dtype(func, args, kwargs), device="meta")


def _batched_matmul(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """matmul and bmm of meta operands of rank >= 2 and one dtype."""
    a, b = args
    if a.device.type != "meta" or b.device.type != "meta" or a.dtype != b.dtype:
        return None
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        return None
    if func is aten.bmm.default and (a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]):
        return None
    batch = _broadcast([tuple(a.shape[:-2]), tuple(b.shape[:-2])])
    if batch is None:
        return None
    return torch.empty((*batch, a.shape[-2], b.shape[-1]), dtype=a.dtype, device="meta")


def meta_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of meta operands as one op: torch decomposes matmul (expand, reshape, bmm, view)
    before a dispatch mode sees it; `_batched_matmul`'s shape and dtype where it applies
    (ranks >= 2, one dtype, broadcastable batches), a @ b otherwise."""
    out = _batched_matmul(aten.matmul.default, (a, b), {})
    return a @ b if out is None else out


def _factory(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """arange on the meta device: the same call on the CPU gives the length and dtype."""
    if kwargs.get("device") != torch.device("meta"):
        return None
    probe = func(*args, **{**kwargs, "device": torch.device("cpu")})
    return torch.empty(probe.shape, dtype=probe.dtype, device="meta")


def _padded(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Constant padding (F.pad: aten.pad, constant_pad_nd) of a meta tensor: each trailing dim
    grows by its two pads (torch's Python kernel imports sympy through empty_like)."""
    x, pad = args[0], args[1]
    mode = kwargs.get("mode", args[2] if len(args) > 2 and func is aten.pad.default else "constant")
    if x.device.type != "meta" or mode != "constant" or len(pad) % 2 or len(pad) // 2 > x.dim():
        return None
    shape = list(x.shape)
    for i in range(len(pad) // 2):
        shape[x.dim() - 1 - i] += pad[2 * i] + pad[2 * i + 1]
    if min(shape, default=0) < 0:
        return None
    return torch.empty(shape, dtype=x.dtype, device="meta")


_RULES: dict[Any, Callable[[Callable, tuple, dict], torch.Tensor | None]] = {
    **{op: _pointwise for op in _POINTWISE},
    **{op: _reduction for op in _REDUCTIONS},
    aten.clone.default: _same,
    aten.roll.default: _same,
    aten.zeros_like.default: _like,
    aten.gather.default: _gather,
    aten.constant_pad_nd.default: _padded,
    aten.pad.default: _padded,
    aten.add_.Tensor: _in_place,
    aten.mul_.Tensor: _in_place,
    aten.cat.default: _joined,
    aten.stack.default: _joined,
    aten.matmul.default: _batched_matmul,
    aten.bmm.default: _batched_matmul,
    aten.arange.default: _factory,
    aten.arange.start_step: _factory,
}


class ShapeOnly(TorchDispatchMode):
    """The dispatch mode of `shape_only()`: a rule per common op, torch for the rest."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in a dynamo guard unless told not to; the
        # guard's first call imports torch._dynamo (seconds). Nothing here is ever compiled.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        out = rule(func, args, kwargs) if rule is not None else None
        return func(*args, **kwargs) if out is None else out


_PYTHON_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.Python)


def native() -> contextlib.AbstractContextManager[None]:
    """A block where torch runs meta ops itself, past `shape_only()`'s mode: for view and
    factory ops only (reshape, permute, empty ...), whose meta kernels are C++ (a few us,
    against ~20 us through the mode's Python dispatch); a pointwise op there would take
    torch's Python meta kernel instead (~0.5 ms). Outside the mode it changes nothing."""
    return torch._C._ExcludeDispatchKeyGuard(_PYTHON_KEY)


def meta_empty(shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.empty(shape, dtype=dtype, device="meta")` (the same tensor) without the
    mode's dispatch (`native`): estimate mode's closed forms make their outputs so."""
    with native():
        return torch.empty(shape, dtype=dtype, device="meta")


@contextlib.contextmanager
def shape_only() -> Iterator[None]:
    """Run estimate-mode kernels with the fast output shapes (see the module docstring);
    re-entrant (an inner call inside an active one, in the same thread, adds nothing)."""
    if getattr(_STATE, "active", False):
        yield
        return
    _STATE.active = True
    try:
        with ShapeOnly():
            yield
    finally:
        _STATE.active = False


_STATE = threading.local()  # torch's mode stack is per thread too

__all__ = ["ShapeOnly", "meta_empty", "meta_matmul", "native", "shape_only"]
