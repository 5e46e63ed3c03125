"""No side effects: after gradscope, no hook of ours remains, the user's hooks still fire (in
order), training mode is restored and training numbers are identical — also on errors and Ctrl-C."""
import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope_cli.main import main

from conftest import global_hook_counts

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 2))
    order = []
    model[0].register_forward_pre_hook(lambda m, i: order.append("pre"))
    model[0].register_forward_hook(lambda m, i, o: order.append("fwd"))
    model[0].weight.register_hook(lambda g: order.append("grad"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_post_hook(lambda o, a, k: order.append("step"))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    out = {"order": order, "params": [p.detach().flatten().tolist() for p in model.parameters()],
           "training": model.training}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
''')


def test_script_numbers_and_user_hooks_identical_with_and_without_gradscope(tmp_path,
                                                                              monkeypatch):
    import json
    import runpy
    import sys

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(SCRIPT)
    monkeypatch.setattr(sys, "argv", ["train.py", str(tmp_path / "plain.json")])
    runpy.run_path("train.py", run_name="__main__")
    before = global_hook_counts()
    result = CliRunner().invoke(main, ["trace", "train.py", "--json", "t.json", "-q", "--",
                                       str(tmp_path / "traced.json")])
    assert result.exit_code == 0, result.output
    assert global_hook_counts() == before
    plain = json.loads((tmp_path / "plain.json").read_text())
    traced = json.loads((tmp_path / "traced.json").read_text())
    assert traced == plain  # same parameters to the bit, same hook order, same mode
    assert plain["order"][:4] == ["pre", "fwd", "grad", "step"]


def test_keyboard_interrupt_inside_a_forward_leaves_nothing_behind(no_leaks):
    class Interrupts(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            self.fc(x)
            raise KeyboardInterrupt

    model = Interrupts()
    model.eval()
    with pytest.raises(KeyboardInterrupt):
        gradscope.trace(model, torch.randn(1, 2))
    assert model.training is False
    assert not model._forward_hooks and not model.fc._forward_hooks
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters()
               if getattr(p, "_post_accumulate_grad_hooks", None) is not None)


def test_no_parameter_hooks_survive_a_trace(no_leaks):
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    gradscope.trace(model, torch.randn(2, 3))
    for p in model.parameters():
        hooks = getattr(p, "_post_accumulate_grad_hooks", None)
        assert not hooks
        assert not p._backward_hooks


def test_user_patch_on_top_of_ours_is_left_alone(no_leaks):
    """If the user wraps torch.autograd.backward while we are active, we do not undo theirs."""
    from gradscope.tracing.capture import Capture

    original = torch.autograd.backward
    cap = Capture(intercept_backward=True)
    with cap:
        ours = torch.autograd.backward
        torch.autograd.backward = lambda *a, **k: ours(*a, **k)
        theirs = torch.autograd.backward
    try:
        assert torch.autograd.backward is theirs
        x = torch.ones(2, requires_grad=True)
        x.sum().backward()  # our wrapper is a pass-through once closed
        assert torch.equal(x.grad, torch.ones(2))
    finally:
        torch.autograd.backward = original


def test_a_closed_capture_cannot_be_reused():
    from gradscope.tracing.capture import Capture

    cap = Capture()
    with cap:
        pass
    with pytest.raises(gradscope.SessionClosedError, match="records one run"):
        with cap:
            pass


def test_trace_and_reports_leave_the_garbage_collector_as_they_found_it():
    # gradscope pauses the cyclic collector while it builds plain data in bulk (gradscope._gc)
    import gc

    model = nn.Linear(3, 2)
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            gradscope.trace(model, torch.randn(4, 3))
            with gradscope.watch(model):
                model(torch.randn(4, 3)).sum().backward()
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
