"""Gradient norms and max-abs values of many tensors at once, against one tensor at a time.

The watch reads these every few steps through stacks of same-shape gradients (one kernel a
group on a CPU) and puts the values back in the tensors' order: a wrong order or a reduction
that drops a NaN would show a healthy layer as exploding, or miss a non-finite one.
"""
import math

import torch

from gradscope.tracing.gradnorms import max_abs, norm_vector, norms_and_max_abs


def _mixed() -> list:
    """Two stackable groups (>= 8 tensors of one shape and dtype), interleaved with tensors
    that are not (other shapes, float64, a lone half), with NaN and infinities among them."""
    g = torch.Generator().manual_seed(0)
    out, wide, half = [], [], []
    for k in range(10):
        wide.append(torch.randn(16, 8, generator=g) * (k + 1))       # group 1
        half.append((torch.randn(8, generator=g) * (k + 1)).half())   # group 2 (float16)
        out += [wide[-1], half[-1]]
        if k % 3 == 0:
            out.append(torch.randn(3, 5, generator=g, dtype=torch.float64))
    out.append(torch.randn(7, generator=g))
    wide[2][3, 2] = float("nan")
    half[3][1] = float("-inf")
    wide[6][0, 0] = -1e15  # (its square still fits a float32 sum)
    return out


def _reference(grads: list) -> tuple:
    norms = [torch.linalg.vector_norm(g.double()).item() for g in grads]
    maxes = [g.double().abs().max().item() for g in grads]
    return norms, maxes


def _same(values: list, expected: list, rel: float = 1e-3) -> bool:
    for v, e in zip(values, expected):
        if math.isnan(e):
            if not math.isnan(v):
                return False
        elif math.isinf(e):
            if v != e:
                return False
        elif not math.isclose(v, e, rel_tol=rel):
            return False
    return len(values) == len(expected)


def test_norms_and_max_abs_match_one_tensor_at_a_time():
    grads = _mixed()
    norms, maxes = _reference(grads)
    n = len(grads)
    both = norms_and_max_abs(grads).tolist()
    assert len(both) == 2 * n
    assert _same(both[:n], norms)
    assert _same(both[n:], maxes)
    assert _same(norm_vector(grads).tolist(), norms)
    assert _same(max_abs(grads).tolist(), maxes)


def test_a_nan_or_infinity_stays_with_its_own_tensor():
    grads = [torch.ones(4, 4) * k for k in range(12)]
    grads[5][0, 1] = float("nan")
    grads[8][2, 2] = float("inf")
    both = norms_and_max_abs(grads).tolist()
    norms, maxes = both[:12], both[12:]
    assert [k for k, v in enumerate(norms) if not math.isfinite(v)] == [5, 8]
    assert [k for k, v in enumerate(maxes) if not math.isfinite(v)] == [5, 8]
    assert math.isnan(maxes[5]) and maxes[8] == math.inf
    assert maxes[11] == 11.0 and norms[3] == 12.0  # |3| over 16 elements: sqrt(16 * 9)


def test_few_tensors_take_the_unstacked_path():
    grads = [torch.tensor([3.0, -4.0]), torch.tensor([[-7.0]])]
    assert norms_and_max_abs(grads).tolist() == [5.0, 7.0, 4.0, 7.0]
