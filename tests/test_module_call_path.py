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
