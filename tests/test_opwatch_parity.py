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
    """A layer function called while one of torch's own layers runs (nn.Linear, nn.Conv2d
    through its _conv_forward helper) is that layer's call: no frame is read. Every layer
    function has such a class in this torch; subclasses are not trusted (they may override a
    helper or a property the forward calls): their frame decides, as before."""
    for name in oppatches.LAYER_FUNCS:
        assert oppatches._torch_forwards(name), name

    class Kept(nn.Linear):
        pass

    trusted = oppatches._torch_forwards("linear")
    assert nn.Linear in trusted and Kept not in trusted
    assert nn.Conv2d in oppatches._torch_forwards("conv2d") and nn.Conv2d not in trusted


class _Adapter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return F.linear(x, self.w)


class _PreHooked(nn.Module):
    """A forward pre-hook on a torch layer runs another module's forward directly."""
    def __init__(self):
        super().__init__()
        self.fc, self.adapter = nn.Linear(4, 4), _Adapter()
        self.fc.register_forward_pre_hook(lambda m, a: (a[0] + self.adapter.forward(a[0]),))

    def forward(self, x):
        return self.fc(x)


class _Patched(nn.Module):
    """A torch layer whose forward was replaced on the instance."""
    def __init__(self):
        super().__init__()
        self.fc, self.adapter = nn.Linear(4, 4), _Adapter()
        orig = self.fc.forward
        self.fc.forward = lambda x: orig(x) + self.adapter.forward(x)

    def forward(self, x):
        return self.fc(x)


class _HelperConv(nn.Conv2d):
    """Keeps Conv2d's forward, overrides the helper it calls."""
    def __init__(self):
        super().__init__(2, 2, 1)
        self.other = nn.Conv2d(2, 2, 1)

    def _conv_forward(self, x, w, b):
        return super()._conv_forward(x, w, b) + self.other.forward(x)


class _WithHelperConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.m = _HelperConv()

    def forward(self, x):
        return self.m(x)


@pytest.mark.parametrize("model, x, call", [
    (_PreHooked, (2, 4), ("adapter", "forward")),
    (_Patched, (2, 4), ("adapter", "forward")),
    (_WithHelperConv, (1, 2, 3, 3), ("m.other", "_conv_forward"))],
    ids=["pre-hook", "instance-forward", "subclass-helper"])
def test_a_direct_call_around_a_trusted_torch_layer_is_still_seen(no_leaks, model, x, call):
    """Code that runs while a torch layer is on top but is not its forward (found in review):
    the direct call inside it is recorded, as the frame check always did."""
    torch.manual_seed(0)
    t = gradscope.trace(model(), torch.randn(*x)).trace
    assert [(c["module"], c["method"]) for c in t.direct_calls] == [call]


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
