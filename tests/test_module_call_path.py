"""A trace sees module calls through its own ``Module._call_impl`` (modulecall.py), not through
two global forward hooks: the same records, torch's own call path back afterwards, the
program's hooks and replacements respected."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import gradscope
from gradscope.tracing import capture as capture_module, modulecall
from gradscope.tracing.modules import ModuleTracker

from models import zoo

TORCH_CALL_IMPL = nn.Module.__dict__["_call_impl"]


def _json(report) -> dict:
    data = json.loads(report.to_json())
    data.get("run", {}).pop("wall_seconds", None)
    return data


class _HookedTracker(ModuleTracker):
    """The tracker as a watch runs it: two global forward hooks."""
    patch_calls = property(lambda self: False, lambda self, value: None)


@pytest.mark.parametrize("name", [name for name, _, _ in zoo()])
def test_the_call_path_records_what_global_hooks_record(name, monkeypatch):
    model, inputs = {n: (m, i) for n, m, i in zoo()}[name]

    def traced() -> dict:
        torch.manual_seed(0)
        return _json(gradscope.trace(model, *inputs))

    patched = traced()
    monkeypatch.setattr(capture_module, "ModuleTracker", _HookedTracker)
    hooked = traced()
    assert patched == hooked
    assert patched["modules"] and all(m["calls"] for m in patched["modules"])


def test_ours_only_while_the_trace_is_open_also_after_an_error(no_leaks):
    seen = []

    def loss(out):
        seen.append(nn.Module.__dict__["_call_impl"])
        return out.sum()

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    gradscope.trace(model, torch.randn(2, 3), loss_fn=loss)
    assert seen == [modulecall._call_impl]
    assert nn.Module.__dict__["_call_impl"] is TORCH_CALL_IMPL and not modulecall.installed()

    class Fails(nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(gradscope.TracedProgramError) as info:
        gradscope.trace(nn.Sequential(nn.Linear(3, 3), Fails()), torch.randn(2, 3))
    assert nn.Module.__dict__["_call_impl"] is TORCH_CALL_IMPL
    assert [m["name"] for m in info.value.report.trace.modules if m["calls"]] == ["", "0", "1"]


def test_the_programs_hooks_fire_once_and_a_replaced_output_is_what_is_recorded(no_leaks):
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    fired = []
    handles = [
        nn.modules.module.register_module_forward_pre_hook(lambda m, a: fired.append("gpre")),
        nn.modules.module.register_module_forward_hook(lambda m, a, o: fired.append("gpost")),
        model[0].register_forward_pre_hook(lambda m, a: fired.append("pre")),
        model[0].register_forward_hook(lambda m, a, o: o[:, :4]),  # the caller gets 4 columns
    ]
    model[2] = nn.Linear(4, 2)
    try:
        report = gradscope.trace(model, torch.randn(5, 3))
    finally:
        for h in handles:
            h.remove()
    assert fired.count("pre") == 1 and fired.count("gpre") == fired.count("gpost") == 4
    rows = {m["name"]: m for m in report.trace.modules}
    assert rows["0"]["output"] == "(5, 4)" and rows["2"]["output"] == "(5, 2)"
    ops = {n.op.rstrip("0123456789"): n.module for n in report.graph.nodes if n.op}
    assert ops["SliceBackward"] == "0"  # the hook's slice: inside the module's call


def test_a_replacement_put_on_top_of_ours_stays_and_ours_passes_through(no_leaks):
    calls = []

    def wrap(inner):
        def call_impl(self, *args, **kwargs):
            calls.append(type(self).__name__)
            return inner(self, *args, **kwargs)
        return call_impl

    model = nn.Sequential(nn.Linear(3, 3))

    def loss(out):
        nn.Module._call_impl = theirs[0] = wrap(nn.Module.__dict__["_call_impl"])
        return out.sum()

    theirs = [None]
    try:
        gradscope.trace(model, torch.randn(2, 3), loss_fn=loss)
        assert nn.Module.__dict__["_call_impl"] is theirs[0]
        assert torch.equal(model(torch.ones(1, 3)), model[0](torch.ones(1, 3)))
        assert calls == ["Sequential", "Linear", "Linear"]
    finally:
        nn.Module._call_impl = TORCH_CALL_IMPL


def test_jit_trace_inside_a_trace_takes_torchs_tracing_forward(no_leaks):
    traced = []

    def loss(out):
        traced.append(torch.jit.trace(nn.Sequential(nn.Linear(3, 2), nn.Tanh()),
                                      torch.randn(1, 3)))
        return out.sum()

    gradscope.trace(nn.Linear(3, 3), torch.randn(2, 3), loss_fn=loss)
    graph = str(traced[0].inlined_graph)  # (each submodule a method: the _slow_forward path)
    assert "aten::tanh" in graph and "aten::linear" in graph


def test_torch_compile_first_imported_during_a_trace_keeps_its_shortcut(tmp_path):
    """torch._dynamo notes Module._call_impl when first imported (to send calls of modules
    without hooks straight to forward): imported inside a trace, it noted ours; the trace puts
    torch's back there too when it closes. (In a fresh interpreter: dynamo is imported once.)"""
    script = tmp_path / "first_import.py"
    script.write_text(textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        import gradscope
        assert "torch._dynamo" not in sys.modules

        def loss(out):
            import torch._dynamo.variables.nn_module  # noqa: F401
            return out.sum()

        gradscope.trace(nn.Linear(3, 3), torch.randn(2, 3), loss_fn=loss)
        import torch._dynamo.utils as utils
        import torch._dynamo.variables.nn_module as nn_module
        torch_impl = nn.Module.__dict__["_call_impl"]
        assert utils.unpatched_nn_module_call_impl is torch_impl
        assert nn_module.unpatched_nn_module_call_impl is torch_impl
        model = torch.compile(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), backend="eager")
        model(torch.randn(2, 3))
        print("ok")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# -- what an independent review of the first version found ---------------------------------
def test_a_class_with_its_own_call_impl_is_still_seen(no_leaks):
    """torch.compiler.disable on a module class gives the class its own _call_impl (torch's,
    wrapped, as it was then): its calls must not look like direct forward calls."""
    @torch.compiler.disable
    class Eager(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).relu()

    own = Eager.__dict__["_call_impl"]
    model = nn.Sequential(nn.Linear(4, 4), Eager(), nn.Linear(4, 1))
    report = gradscope.trace(model, torch.randn(3, 4))
    assert Eager.__dict__["_call_impl"] is own
    assert report.findings == []
    assert {m["name"]: m["calls"] for m in report.trace.modules} == \
        {"": 1, "0": 1, "1": 1, "1.lin": 1, "2": 1}
    assert [n.module for n in report.graph.nodes if n.op == "ReluBackward0"] == ["1"]


def test_a_call_impl_the_program_set_before_runs_during_the_trace_and_stays(no_leaks):
    seen = []

    def counting(self, *args, **kwargs):
        seen.append(type(self).__name__)
        return TORCH_CALL_IMPL(self, *args, **kwargs)

    nn.Module._call_impl = counting
    try:
        report = gradscope.trace(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), torch.randn(5, 3))
        assert nn.Module.__dict__["_call_impl"] is counting
    finally:
        nn.Module._call_impl = TORCH_CALL_IMPL
    assert seen == ["Sequential", "Linear", "ReLU"]
    assert [m["calls"] for m in report.trace.modules] == [1, 1, 1]


def test_a_second_trace_after_a_replacement_on_top_of_ours_does_not_call_itself(no_leaks):
    def wrap(inner):
        def call_impl(self, *args, **kwargs):
            return inner(self, *args, **kwargs)
        return call_impl

    def loss(out):
        nn.Module._call_impl = wrap(nn.Module.__dict__["_call_impl"])  # a profiler starting
        return out.sum()

    try:
        gradscope.trace(nn.Sequential(nn.Linear(3, 3)), torch.randn(2, 3), loss_fn=loss)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        model[0].register_forward_hook(lambda m, a, o: None)  # (torch's _call_impl for it)
        report = gradscope.trace(model, torch.randn(2, 3))  # recursed before the fix
    finally:
        nn.Module._call_impl = TORCH_CALL_IMPL
    assert [m["calls"] for m in report.trace.modules] == [1, 1, 1]


def test_a_forward_hook_calling_another_layers_forward_is_a_direct_call(no_leaks):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.extra, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)
            self.a.register_forward_hook(lambda m, args, out: out + self.extra.forward(out))

        def forward(self, x):
            return self.b(self.a(x))

    class UsesWeight(Net):  # the hook's own op with another layer's weight: no direct call
        def __init__(self):
            super().__init__()
            self.a._forward_hooks.clear()
            self.a.register_forward_hook(
                lambda m, args, out: out + nn.functional.linear(out, self.extra.weight))

    report = gradscope.trace(Net(), torch.randn(3, 4))
    assert [(c["module"], c["method"]) for c in report.trace.direct_calls] == \
        [("extra", "forward")]
    assert [f.check for f in report.findings] == ["forward-called-directly"]
    ops = [(n.op, n.module) for n in report.graph.nodes if n.op and n.op.startswith("Addmm")]
    assert sorted(ops) == [("AddmmBackward0", "a"), ("AddmmBackward0", "b"),
                           ("AddmmBackward0", "extra")]
    report = gradscope.trace(UsesWeight(), torch.randn(3, 4))
    assert report.trace.direct_calls == []
    assert [f.check for f in report.findings] == ["unused-parameter"]  # (extra.bias: right)
    assert {m["name"]: m["calls"] for m in report.trace.modules}["a"] == 1


def test_a_failed_call_is_described_with_what_its_pre_hooks_passed_on(no_leaks):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model[0].register_forward_pre_hook(lambda m, args: (args[0].to("meta"),))
    with pytest.raises(gradscope.TracedProgramError) as info:
        gradscope.trace(model, torch.randn(2, 4))
    failure = info.value.report.trace.failure
    assert failure["kind"] == "device-mismatch" and failure["module"]["module"] == "0"
    inputs = [d for d in failure["module"]["devices"] if d["kind"] == "input"]
    assert [d["device"] for d in inputs] == ["meta"]  # the input the forward got


def test_a_forward_hook_that_raises_keeps_the_forwards_output(no_leaks):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    def bad(m, args, out):
        raise ValueError("hook boom")

    model[2].register_forward_hook(bad)
    with pytest.raises(gradscope.TracedProgramError):
        gradscope.trace(model, torch.randn(5, 3))
    try:
        gradscope.trace(model, torch.randn(5, 3))
    except gradscope.TracedProgramError as e:
        rows = {m["name"]: (m["calls"], m["output"]) for m in e.report.trace.modules}
    assert rows["2"] == (1, "(5, 2)")


def test_a_class_made_during_a_trace_is_seen_once_in_the_next_trace(no_leaks):
    """A module class decorated with torch.compiler.disable while a trace is open wraps ours
    (it is nn.Module's then): at the next trace its calls must not run our hooks twice."""
    made = []

    def loss(out):
        @torch.compiler.disable
        class Late(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3, 3)

            def forward(self, x):
                return self.lin(x)
        made.append(Late)
        return out.sum()

    gradscope.trace(nn.Linear(3, 3), torch.randn(2, 3), loss_fn=loss)
    late = made[0]
    assert nn.Module.__dict__["_call_impl"] is TORCH_CALL_IMPL
    model = nn.Sequential(late(), nn.ReLU())
    for _ in range(2):  # (the second: the first trace's class wrapper is gone again)
        report = gradscope.trace(model, torch.randn(4, 3))
        assert {m["name"]: m["calls"] for m in report.trace.modules} == \
            {"": 1, "0": 1, "0.lin": 1, "1": 1}
        assert report.findings == []
    assert late()(torch.ones(1, 3)).shape == (1, 3)


def test_a_replacement_undone_during_a_trace_leaves_the_next_traces_whole(no_leaks):
    """The program's _call_impl set before a trace and taken out inside it (torch's own back):
    ours is under nothing then, and the next traces put it in again."""
    def theirs(self, *args, **kwargs):
        return TORCH_CALL_IMPL(self, *args, **kwargs)

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    class Undoes(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            nn.Module._call_impl = TORCH_CALL_IMPL  # the program's patch undone
            return self.inner(x)

    def rows(report):
        return [(m["name"], m["calls"], m["output"]) for m in report.trace.modules]

    clean = gradscope.trace(model, torch.randn(3, 4))
    nn.Module._call_impl = theirs
    try:
        gradscope.trace(Undoes(), torch.randn(3, 4))
    finally:
        nn.Module._call_impl = TORCH_CALL_IMPL
    for _ in range(2):
        report = gradscope.trace(model, torch.randn(3, 4))
        assert rows(report) == rows(clean) and report.findings == clean.findings
        assert [n.module for n in report.graph.nodes] == [n.module for n in clean.graph.nodes]
