"""The op watch wraps torch functions (oppatches) instead of running a TorchFunctionMode: it must
see what a mode saw, and no more. Each case is a way the two can differ."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradscope
from gradscope.tracing import oppatches
from gradscope.tracing.capture import Capture

from conftest import op_watch_attributes


def _records(run):
    cap = Capture(mode="script", intercept_backward=True)
    with cap:
        run(cap)
    return cap.opwatch.history.records(), cap


def test_functions_imported_by_name_before_the_trace_are_seen(no_leaks):
    from aliased_functions import Aliased

    torch.manual_seed(0)
    report = gradscope.trace(Aliased(), torch.randn(8, 4))
    t = report.trace
    assert [c["fn"] for c in t.dropout_calls] == ["dropout"]
    assert sorted(c["fn"] for c in t.softmax_calls) == ["softmax", "softmax"]
    assert [s["op"] for s in t.loss_sites] == ["cross_entropy"]
    assert [b["op"] for b in t.broadcasts] == ["mse_loss"]
    checks = {f.check for f in report.findings}
    assert {"softmax-batch-dim", "double-softmax", "loss-broadcast"} <= checks
    import aliased_functions
    assert aliased_functions.dropout is F.dropout  # put back


def test_a_print_of_a_tensor_is_no_cut():
    """f"{loss:.3f}" calls .detach() inside Tensor.__format__: a mode saw one call (the
    format), not the detach; neither does the op watch."""
    model = nn.Linear(3, 1)

    def run(cap):
        x = torch.randn(4, 3)
        for _ in range(2):
            out = model(x).mean()
            print(f"loss {out:.3f} {out.mean():.3f} {out!r}")
            out.backward()
    history, _ = _records(run)
    assert history["cuts"] == []


def test_what_torch_functions_do_inside_is_hidden():
    """nn.MultiheadAttention's own softmax, and the calls a checkpointed segment makes again
    during backward, are not the program's calls."""
    from torch.utils.checkpoint import checkpoint

    mha = nn.MultiheadAttention(8, 2)
    lin = nn.Linear(8, 8)

    def run(cap):
        x = torch.randn(5, 2, 8)
        out, _ = mha(x, x, x)
        y = checkpoint(lambda t: lin(t).relu().detach() + lin(t), out, use_reentrant=True)
        y.sum().backward()
        y = checkpoint(lambda t: lin(t).relu().detach() + lin(t), out.detach(),
                       use_reentrant=False)
        y.sum().backward()
    history, _ = _records(run)
    assert history["softmaxes"] == []  # (MHA's is inside F.multi_head_attention_forward)
    # only the segments' own .detach(), at their lines (the forward), never at the backward's
    source = open(__file__).read().splitlines()
    for c in history["cuts"]:
        path, line = c["location"].rsplit(":", 1)
        assert c["op"] == "detach" and "checkpoint(lambda" in source[int(line) - 1], c
    assert history["switches"] == []  # (checkpointing's own requires_grad = True)


def test_a_failed_switch_is_no_switch():
    def run(cap):
        ids = torch.arange(4)
        with pytest.raises(RuntimeError):
            ids.requires_grad = True  # integers cannot require grad
        w = torch.zeros(3)
        w.requires_grad = True  # this one switches
    history, _ = _records(run)
    assert [s["op"] for s in history["switches"]] == ["requires_grad = True"]


def test_torch_compile_internals_are_not_the_programs_calls():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    compiled = torch.compile(m, backend="aot_eager")

    def run(cap):
        for _ in range(2):
            compiled(torch.randn(4, 8)).sum().backward()
    history, _ = _records(run)
    assert history["cuts"] == [] and history["switches"] == []


def test_ops_of_a_module_whose_forward_is_one_childs_call_are_the_childs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            return self.body(x)

    graph = gradscope.trace(Net(), torch.randn(8, 4)).graph
    assert {n.module for n in graph.nodes if n.op == "AddmmBackward0"} == {"body"}


def test_a_modules_output_is_its_first_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            a = self.lin(x)  # queued by the fast hook
            with torch.device("cpu"):  # a mode: the full hook, recorded at once
                b = self.lin(x[:4])
            return a.sum() + b.sum()

    report = gradscope.trace(Net(), torch.randn(8, 4))
    row = next(m for m in report.trace.modules if m["name"] == "lin")
    assert (row["calls"], row["output"]) == (2, "(8, 3)")


def test_an_interrupted_install_leaves_nothing_wrapped(monkeypatch):
    before = op_watch_attributes()
    made = [0]
    real = oppatches._wrap

    def wrap(name, original, at=None):
        made[0] += 1
        if made[0] == 200:
            raise KeyboardInterrupt  # Ctrl-C while the wrappers go in
        return real(name, original, at)
    monkeypatch.setattr(oppatches, "_wrap", wrap)
    monkeypatch.setattr(oppatches.OP_PATCHES, "_targets", None)  # made afresh, with ours
    monkeypatch.setattr(oppatches.OP_PATCHES, "_made", {})
    with pytest.raises(KeyboardInterrupt):
        with Capture(mode="script"):
            pass
    assert op_watch_attributes() == before
    assert not oppatches._STATE


def test_torch_layers_are_trusted_to_call_their_own_function_and_nothing_else_is():
    """A layer function called while a module running torch's own forward is on top (nn.Linear,
    nn.Conv2d through its _conv_forward helper) is that module's own call: no frame is read.
    Every layer function has such a forward in this torch; a subclass that keeps the forward
    is trusted, one that writes its own is not (its frame decides, as before)."""
    for name in oppatches.LAYER_FUNCS:
        assert oppatches._torch_forwards(name), name

    class Kept(nn.Linear):
        pass

    class Own(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight * 2, self.bias)

    trusted = oppatches._torch_forwards("linear")
    assert id(Kept.forward.__code__) in trusted and id(Own.forward.__code__) not in trusted
    assert id(nn.Conv2d.forward.__code__) in oppatches._torch_forwards("conv2d")
    assert id(nn.Conv2d.forward.__code__) not in trusted


def test_a_direct_call_inside_a_torch_layers_subclass_is_still_seen(no_leaks):
    """The shortcut must not hide what the frame check found: a subclass of nn.Linear whose
    forward calls another layer's forward directly."""
    class Head(nn.Linear):
        def __init__(self):
            super().__init__(4, 4)
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            return super().forward(self.inner.forward(x))  # <- the direct call

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = Head()

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)).repeat(1, 2))

    report = gradscope.trace(Net(), torch.randn(2, 1, 6, 6))
    calls = report.trace.direct_calls
    assert [(c["module"], c["method"]) for c in calls] == [("head.inner", "forward")], calls
