"""Gradient norms of many tensors at once, and reading many device scalars in one transfer.

Split from ``gradients`` (the per-step recorder) so that each stays short; both are on the
watch session's per-step path, where every kernel launch and Python call shows on a fast step.
"""
from __future__ import annotations

import array
from operator import attrgetter
from typing import Optional

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_DTYPE = attrgetter("dtype")


def fused_norms(grads: list, order: float = 2.0) -> list:
    """Norms of many tensors of one device as float32 scalars, one fused kernel per dtype.

    fp16/bf16 L2 norms are accumulated and returned in float32: in fp16 a norm above 65504
    overflows to Inf (a gradient of 100 elements of 10,000 would read as non-finite). float64
    and complex gradients keep their own precision (torch refuses to narrow them) and only
    the result is cast. The max-abs norm is exact in any dtype."""
    dtypes = list(map(_DTYPE, grads))
    if dtypes and dtypes.count(dtypes[0]) == len(dtypes):  # the usual: one dtype, no regrouping
        norms = _norms_of_one_dtype(grads, order,
                                    dtypes[0] in _LOW_PRECISION and order != float("inf"))
        return norms if norms[0].dtype == torch.float32 else [n.float() for n in norms]
    by_dtype: dict = {}
    for k, g in enumerate(grads):
        by_dtype.setdefault(g.dtype, []).append(k)
    out: list = [None] * len(grads)
    for dtype, ks in by_dtype.items():
        norms = _norms_of_one_dtype([grads[k] for k in ks], order,
                                    dtype in _LOW_PRECISION and order != float("inf"))
        for k, n in zip(ks, norms):
            out[k] = n if n.dtype == torch.float32 else n.float()
    return out


# On a CPU, the fused kernels loop over the tensors one by one (~2.3 us a tensor for an L2 norm
# here): many small tensors of one shape (the layers of a deep model) are stacked instead and
# reduced along a dimension, one kernel for the whole group.
_STACK_NUMEL = 1 << 14  # elements of a tensor small enough to copy into a stack
_STACK_GROUP = 8        # tensors of one shape and dtype worth a stack


def norm_vector(grads: list) -> torch.Tensor:
    """The L2 norm of each tensor (all on one device), as one float32 vector."""
    out = _by_stacks(grads, [_NORMS])
    return out if out is not None else _rest_norms(grads)


def _stacked_norms(stacked: torch.Tensor) -> torch.Tensor:
    low = stacked.dtype in _LOW_PRECISION
    return torch.linalg.vector_norm(stacked, dim=1,
                                    dtype=torch.float32 if low else None).float()


def _rest_norms(grads: list) -> torch.Tensor:
    return torch.stack(fused_norms(grads))


def _by_stacks(grads: list, reductions: list) -> Optional[torch.Tensor]:
    """For each ``(per_stack, per_rest)`` of ``reductions``, one float32 value per tensor:
    ``per_stack`` of each group that ``_stacks`` made (one value per row), ``per_rest`` of the
    other tensors, put back in the tensors' order; the reductions' vectors one after the other
    (one stack of each group serves them all). None when there is no group to stack."""
    groups, rest = _stacks(grads)
    if not groups:
        return None
    others = [grads[k] for k in rest]
    order = [k for ks, _ in groups for k in ks] + rest
    parts = []
    for per_stack, per_rest in reductions:
        parts += [per_stack(stacked) for _, stacked in groups]
        if rest:
            parts.append(per_rest(others))
    # the values put back at their positions (the index through an int64 array:
    # torch.tensor() of a list of 2,000 ints takes 0.5 ms)
    n = len(order)
    out = torch.empty(n * len(reductions), dtype=torch.float32)
    index = torch.frombuffer(array.array("q", [k + r * n for r in range(len(reductions))
                                               for k in order]), dtype=torch.long)
    return out.index_copy_(0, index, torch.cat(parts))


def _stacks(grads: list) -> tuple:
    """``([(positions, stacked 2-d tensor)], other positions)``: on a CPU, the groups of at
    least _STACK_GROUP small real strided tensors of one shape and dtype, each stacked."""
    if len(grads) < _STACK_GROUP or grads[0].device.type != "cpu":
        return [], []
    by_kind: dict = {}
    for k, key in enumerate(map(_KIND, grads)):  # (shape, dtype), read in C
        group = by_kind.get(key)
        if group is None:
            by_kind[key] = [k]
        else:
            group.append(k)
    groups, rest = [], []
    for (shape, dtype), ks in by_kind.items():
        if len(ks) < _STACK_GROUP or dtype.is_complex or shape.numel() > _STACK_NUMEL:
            rest += ks
            continue
        try:
            groups.append((ks, torch.stack([grads[k] for k in ks]).reshape(len(ks), -1)))
        except RuntimeError:  # sparse gradients among them: one by one
            rest += ks
    return groups, rest


_KIND = attrgetter("shape", "dtype")


def _stacked_max_abs(stacked: torch.Tensor) -> torch.Tensor:
    # amin and amax along the rows, not aminmax(dim=1): 4x faster on a CPU (28 against 120 us
    # for 20 rows of 4096); the same values, NaN and infinities included
    return torch.maximum(stacked.amin(1).float().neg_(), stacked.amax(1).float())


def norms_and_max_abs(grads: list) -> torch.Tensor:
    """:func:`norm_vector` and then :func:`max_abs` of the tensors (all on one device), as one
    float32 vector of twice their number: one stack of each group serves both reductions."""
    out = _by_stacks(grads, [_NORMS, _MAX_ABS])
    return out if out is not None else torch.cat((norm_vector(grads), max_abs(grads)))


def read_per_device(values: list) -> list:
    """The Python values of 0-d device tensors, in order, with one transfer per device: a read
    per tensor would be one synchronisation each on a GPU."""
    by_device: dict = {}
    for k, v in enumerate(values):
        by_device.setdefault(v.device, []).append(k)
    host: list = [None] * len(values)
    for ks in by_device.values():
        for k, v in zip(ks, torch.stack([values[k] for k in ks]).tolist()):
            host[k] = v
    return host


def max_abs(grads: list) -> torch.Tensor:
    """The largest absolute value of each tensor, as one float32 vector.

    On a CPU, ``_foreach_norm(inf)`` is a slow loop (about 7 us a tensor here, 5x its L2 norm);
    ``aminmax`` is a quarter of that and copies nothing (``_foreach_abs`` would copy every
    gradient): max(-min, max) is the same value, NaN included. On other devices the fused
    kernel is the fast one."""
    out = _by_stacks(grads, [_MAX_ABS])  # (norm_vector's groups: few kernels)
    if out is not None:
        return out
    if grads and grads[0].device.type == "cpu" and not any(g.is_complex() for g in grads):
        try:
            pairs = [torch.aminmax(g) for g in grads]
        except RuntimeError:  # a dtype aminmax does not take
            pairs = None
        if pairs is not None:
            lows = torch.stack([lo for lo, _ in pairs]).float()
            highs = torch.stack([hi for _, hi in pairs]).float()
            return torch.maximum(lows.neg_(), highs)
    return torch.stack(fused_norms(grads, float("inf")))


_NORMS = (_stacked_norms, _rest_norms)  # (per stack, per other tensors) for _by_stacks
_MAX_ABS = (_stacked_max_abs, max_abs)


def _norms_of_one_dtype(grads: list, order: float, upcast: bool) -> list:
    try:
        if upcast:
            return list(torch._foreach_norm(grads, order, dtype=torch.float32))
        return list(torch._foreach_norm(grads, order))
    except (AttributeError, TypeError, RuntimeError):  # a torch without it, or without dtype=
        if order == float("inf"):
            return [g.abs().max() for g in grads]
        return [torch.linalg.vector_norm(g, order, dtype=torch.float32 if upcast else None)
                for g in grads]


