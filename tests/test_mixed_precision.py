"""Mixed precision on CPU (issue 7): fp16 autocast with GradScaler's real overflow probing, and
fp16 gradients whose norm exceeds fp16's range. The CUDA versions are in test_cuda.py.

The GradScaler tests elsewhere fake an overflow with ``loss * inf`` (a non-finite *loss*, which
is a finding). Here the loss stays finite: a deliberately high initial scale makes the fp16
backward overflow, as it does in real AMP training until the scaler has backed off."""
import pytest
import torch
from torch import nn

import gradscope


def _amp_run(fused: bool, steps: int = 16):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)  # overflows fp16 at first
    x, y = torch.randn(64, 32) * 30, torch.randint(0, 10, (64,))
    scales = []
    with gradscope.watch(model, opt) as scope:
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
    return scope.report(), scales


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_grad_scaler_probing_in_fp16_is_not_a_finding(fused):
    report, scales = _amp_run(fused)
    assert scales[0] < 2.0 ** 24 and scales[-1] == scales[-2]  # it did back off, then settled
    assert report.findings == [], [(f.check, f.message) for f in report.findings]
    applied = [s for s in report.trace.accumulation if not s.get("skipped_by_scaler")]
    assert len(applied) == 6
    # a fused optimizer is called on skipped steps too: those are marked and add no norms
    skipped = [s for s in report.trace.accumulation if s.get("skipped_by_scaler")]
    assert len(skipped) == (10 if fused else 0)
    assert len(report.trace.gradients["norm_steps"]) == 6


def test_fused_and_foreach_record_the_same_true_gradient_norms():
    foreach, _ = _amp_run(False)
    fused, _ = _amp_run(True)
    a, b = foreach.trace.gradients["grad_norms"], fused.trace.gradients["grad_norms"]
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-4), name
    assert 1 < a["model.0.weight"][0] < 100  # unscaled: not 2**14 times too large or small


def test_an_fp16_gradient_beyond_fp16_range_has_a_finite_norm():
    """The L2 norm of 100 elements of 10,000 is 100,000: Inf in fp16, fine in float32. Pure
    fp16 training must not get a false nonfinite-grad error from gradscope's own arithmetic."""
    w = nn.Parameter(torch.zeros(100, dtype=torch.float16))
    opt = torch.optim.SGD([w], lr=0.0)
    model = nn.Module()
    model.w = w
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            (w * 10000.0).sum().backward()
            opt.step()
    report = scope.report()
    assert "nonfinite-grad" not in {f.check for f in report.findings}
    assert report.trace.gradients["grad_norms"]["model.w"] == pytest.approx([100000.0] * 2,
                                                                           rel=1e-3)


def test_float64_and_complex_gradients_have_norms_in_watch_and_trace():
    """torch will not narrow float64 or complex tensors to a float32 norm: each dtype keeps
    its own precision and only the result is cast (a float64 model must not lose its steps)."""
    model = nn.Linear(4, 2).double()
    model.phase = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(3, 4, dtype=torch.float64)
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            (model(x).sum() + model.phase.abs().sum()).backward()
            opt.step()
    assert scope._capture.internal_errors == []
    norms = scope.report().trace.gradients["grad_norms"]
    assert norms["model.phase"] == pytest.approx([3 ** 0.5] * 2, rel=1e-5)
    assert len(norms["model.weight"]) == 2 and all(v > 0 for v in norms["model.weight"])
    traced = gradscope.trace(nn.Linear(4, 2).double(), x)
    assert all(p["grad_norm"] > 0 for p in traced.trace.parameters)
