"""torch.compile and mixed precision on CPU (the CUDA versions are in test_cuda.py).

Compiled regions run as one autograd node with no module hooks inside: the trace must not crash,
must name the user's model (not OptimizedModule), and must say what it cannot see there."""
import pytest
import torch
from torch import nn

import gradscope


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_model_traces_as_one_node_and_says_so(no_leaks):
    torch.manual_seed(0)
    compiled = torch.compile(Net(), backend="aot_eager")
    report = gradscope.trace(compiled, torch.randn(8, 16))
    ops = {n.op for n in report.graph.nodes if n.leaf is None}
    assert "CompiledFunctionBackward" in ops and "AddmmBackward0" not in ops
    assert report.trace.run["compiled"] == {"Net": [""]}
    assert any("CompiledFunctionBackward" in note and "blind" in note
               for note in report.trace.notes)
    params = {p["name"] for p in report.trace.parameters}
    assert params == {"a.weight", "a.bias", "b.weight", "b.bias"}  # no _orig_mod. prefix
    assert report.findings == []


def test_torchs_warning_about_global_hooks_is_ours_to_hide_only_when_the_hooks_are_ours(no_leaks):
    """torch warns on each call of a compiled module while global module hooks exist. When
    gradscope's are the only ones the warning is noise about gradscope; when the program has its
    own, the program sees it as it would without gradscope."""
    import warnings
    compiled = torch.compile(Net(), backend="aot_eager")
    x = torch.randn(8, 16)

    def hook_warnings(run):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        return [w for w in caught if "global hooks" in str(w.message)]

    assert hook_warnings(lambda: gradscope.trace(compiled, x)) == []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert hook_warnings(lambda: compiled(x))  # the program's own hook: torch warns
        assert hook_warnings(lambda: gradscope.trace(compiled, x))  # and still does
    finally:
        handle.remove()


def test_compiled_submodule_and_watch_training_is_unchanged(no_leaks):
    def train(watch):
        torch.manual_seed(0)
        model = Net()
        model.b.compile(backend="aot_eager")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 16)
        scope = gradscope.watch(model, opt) if watch else None
        if scope:
            scope.__enter__()
        try:
            for _ in range(3):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        finally:
            if scope:
                scope.__exit__(None, None, None)
        return model, scope

    plain, _ = train(False)
    watched, scope = train(True)
    for p, q in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(p, q)
    t = scope.report().trace
    assert t.run["compiled"] == {"model": ["b"]} and t.optimizer_steps == 3
    assert [s["backward_calls"] for s in t.accumulation] == [1, 1, 1]
    assert all(p["grad_seen"] for p in t.parameters)  # gradient hooks see compiled parts too


def test_autocast_dtypes_are_on_the_nodes():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = gradscope.trace(model, torch.randn(4, 16), loss_fn=lambda o: o.float().mean())
    dtypes = {n.dtype for n in report.graph.nodes if n.op == "AddmmBackward0"}
    assert dtypes == {"bfloat16"}
    params = {n.dtype for n in report.graph.nodes if n.leaf == "parameter"}
    assert params == {"float32"}  # weights stay fp32; autocast casts copies


def test_forward_events_through_wrappers_feed_the_mode_checks(no_leaks):
    """A validation pass under no_grad without eval() is caught through DataParallel and
    torch.compile wrappers too (the model's own forward runs nested or compiled)."""
    for wrap in (nn.DataParallel, lambda m: torch.compile(m, backend="aot_eager")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
        wrapped = wrap(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(4, 8)
        with gradscope.watch(wrapped, opt) as scope:
            opt.zero_grad()
            wrapped(x).sum().backward()
            opt.step()
            with torch.no_grad():
                wrapped(x)  # validation, still in training mode
        f = next(f for f in scope.report().findings if f.check == "train-mode-eval")
        assert f.data["modules"] == ["1"]


def test_compiler_internals_are_not_the_users_backward_or_modules(no_leaks):
    """AOTAutograd calls autograd.grad while it compiles, and runs fx GraphModules through
    Module.__call__: neither is the user's (a recompile for a smaller last batch included)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(compiled, opt) as scope:
        for batch in (8, 8, 5):
            opt.zero_grad()
            compiled(torch.randn(batch, 8)).sum().backward()
            opt.step()
    t = scope.report().trace
    assert [e["kind"] for e in t.events if e["kind"] in ("grad", "backward")] == ["backward"] * 3
    assert not any("involved no model" in n for n in t.notes)
    assert not any("GraphModule" in (m["type"] or "") for m in t.modules)
    assert scope.report().findings == [] and t.run["target"] == "Sequential"


def test_compiled_with_the_eager_backend_keeps_ops_named_after_the_model():
    model = torch.compile(nn.Sequential(nn.Linear(5, 5), nn.Softmax(1)), backend="eager")
    y = torch.randint(0, 5, (4,))
    report = gradscope.trace(model, torch.randn(4, 5),
                             loss_fn=lambda out: nn.functional.cross_entropy(out, y))
    [f] = report.findings
    assert f.check == "double-softmax" and f.module == "Sequential"  # not <OptimizedModule>
    assert not any("CompiledFunctionBackward" in n for n in report.trace.notes)  # no region
    assert all(p["grad_norm"] is not None for p in report.trace.parameters)


def test_module_compile_in_place_still_gives_forward_events(no_leaks):
    """model.compile() compiles the whole call, our global hooks included: gradscope wraps
    the compiled call of the models it is given, so the mode checks still see each forward."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.compile(backend="aot_eager")
    original = model._compiled_call_impl
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with gradscope.watch(model, opt) as scope:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        with torch.no_grad():
            model(x)  # validation in training mode
    assert model._compiled_call_impl is original  # put back
    t = scope.report().trace
    assert [e["kind"] for e in t.events].count("forward") == 2
    f = next(f for f in scope.report().findings if f.check == "train-mode-eval")
    assert f.data["modules"] == ["1"]
    assert t.run["compiled"] == {"model": [""]}


@pytest.mark.compiler
@pytest.mark.slow
def test_default_inductor_backend_watch_and_trace(no_leaks):
    """What users run: ``torch.compile(model)`` with inductor (C++ kernels on CPU). Watching
    it must not change a bit of training, nor add graphs or graph breaks; tracing it must show
    the compiled region as one node and say so."""
    from torch._dynamo.utils import counters

    from models import TransformerBlock

    def run(watched):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = TransformerBlock()
        compiled = torch.compile(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(2, 5, 16)

        def loop():
            for _ in range(4):
                opt.zero_grad()
                compiled(x).float().pow(2).mean().backward()
                opt.step()
        scope = None
        if watched:
            with gradscope.watch(compiled, opt) as scope:
                loop()
        else:
            loop()
        graphs = (dict(counters["stats"]).get("unique_graphs"), sum(counters["graph_break"].values()))
        return [p.detach().clone() for p in model.parameters()], graphs, scope

    plain, plain_graphs, _ = run(False)
    watched, watched_graphs, scope = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert watched_graphs == plain_graphs == (1, 0)
    report = scope.report()
    assert report.trace.optimizer_steps == 4 and report.findings == []
    assert report.trace.run["compiled"] == {"compiled": [""]}  # named after the variable

    torch._dynamo.reset()
    torch.manual_seed(0)
    traced = gradscope.trace(torch.compile(TransformerBlock()), torch.randn(2, 5, 16))
    ops = {n.op for n in traced.trace.graph.nodes}
    assert "CompiledFunctionBackward" in ops and "MmBackward0" not in ops
    assert any("CompiledFunctionBackward" in note for note in traced.trace.notes)


def test_data_parallel_replicas_on_several_gpus_are_not_models(no_leaks, monkeypatch):
    """On N GPUs DataParallel rebuilds N replicas per forward and runs each in its own thread.
    torch's real replicate() runs here with only its CUDA broadcast swapped for CPU copies."""
    import importlib
    import threading

    replicate_module = importlib.import_module("torch.nn.parallel.replicate")  # not the function

    class Broadcast(torch.autograd.Function):  # like torch's: one node, a copy per device
        @staticmethod
        def forward(ctx, copies, *tensors):
            ctx.n = len(tensors)
            return tuple(t.clone() for _ in range(copies) for t in tensors)

        @staticmethod
        def backward(ctx, *grads):
            return (None, *(sum(grads[k::ctx.n]) for k in range(ctx.n)))

    def broadcast(tensors, devices, detach=False):
        if detach:
            return [[t.detach().clone() for t in tensors] for _ in devices]
        flat = Broadcast.apply(len(devices), *tensors)
        return [list(flat[i * len(tensors):(i + 1) * len(tensors)]) for i in range(len(devices))]
    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape", broadcast)

    class FourGPUDataParallel(nn.DataParallel):  # torch's class; scatter/gather done by hand
        def forward(self, x):
            replicas = replicate_module.replicate(self.module, [0, 1, 2, 3])
            outs = [None] * 4

            def run(i, chunk):
                with torch.enable_grad():
                    outs[i] = replicas[i](chunk)
            threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(x.chunk(4))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return torch.cat(outs)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    model = FourGPUDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 16)
    with gradscope.watch(model, opt) as scope:
        for _ in range(6):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        kept = [m for m in scope._capture.tracker.models.values() if m is not None]
    assert all(not getattr(m, "_is_replica", False) for m in kept)
    report = scope.report()
    assert [m["label"] for m in report.trace.models] == ["model"]
    assert report.findings == [], [(f.check, f.message[:80]) for f in report.findings]
    assert report.trace.optimizer_steps == 6


def test_a_compiled_optimizer_step_is_not_recompiled_by_watch(no_leaks):
    """PyTorch's compiled-optimizer recipe wraps opt.step() in torch.compile: gradscope's step
    hook must run eagerly, not be traced into more graphs, breaks and recompiles."""
    from torch._dynamo.utils import counters

    def run(watched):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        @torch.compile(backend="eager")
        def step():
            opt.step()
        x = torch.randn(8, 16)

        def loop():
            for _ in range(10):
                opt.zero_grad()
                model(x).square().mean().backward()
                step()
        scope = None
        if watched:
            with gradscope.watch(model, opt) as scope:
                loop()
        else:
            loop()
        graphs = (counters["stats"].get("unique_graphs"), sum(counters["graph_break"].values()))
        return graphs, [p.detach().clone() for p in model.parameters()], scope

    plain_graphs, plain, _ = run(False)
    watched_graphs, watched, scope = run(True)
    assert watched_graphs == plain_graphs
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert scope.report().trace.optimizer_steps == 10
    # the step hook ran, eagerly, at every step (norms are read at each of the first 8 steps,
    # then at every 8th)
    assert [r["step"] for r in scope.report().trace.accumulation] == list(range(1, 11))
    assert scope._capture.gradients.norm_steps == list(range(1, 9))
