"""Issue 9: gradscope never changes, breaks or leaks into the user's program."""
import gc
import json
import random
import textwrap
import weakref

import pytest
import torch
import torch.utils.checkpoint as ckpt
from torch import nn

import gradscope
from gradscope import Report

from conftest import independent_walk


# -- coexistence -------------------------------------------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self, reentrant):
        super().__init__()
        self.reentrant = reentrant
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        h = ckpt.checkpoint(lambda t: torch.relu(self.a(t)), x, use_reentrant=self.reentrant)
        return self.b(h)


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing(reentrant, no_leaks):
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8, requires_grad=reentrant)
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
    t = scope.report().trace
    assert t.backward_calls == 2 and all(p["grad_seen"] for p in t.parameters)
    assert scope.report().findings_at_or_above("warning") == []
    # a reentrant segment is one node that hides its parameters: the report says so
    assert any("reentrant checkpoint" in n for n in t.notes) == reentrant


def test_users_saved_tensors_hooks_still_run(no_leaks):
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        report = gradscope.trace(model, torch.randn(2, 4))
    assert packed and report.graph.nodes


def test_functional_call_and_custom_function(no_leaks):
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    model = nn.Linear(3, 3)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    with gradscope.watch(model) as scope:
        out = torch.func.functional_call(model, params, (torch.randn(2, 3),))
        Double.apply(out).sum().backward()
    t = scope.report().trace
    assert t.backward_calls == 1
    assert any(n.op == "DoubleBackward" for n in scope.report().graph.nodes)
    # the parameters functional_call used are not the module's: gradscope says so
    assert {leaf["origin"] for leaf in t.leaves} == {"unknown"}


def test_inference_mode_forward(no_leaks):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    model.eval()
    with gradscope.watch(model) as scope:
        with torch.inference_mode():
            model(torch.randn(2, 3))
    forwards = [e for e in scope.report().trace.events if e["kind"] == "forward"]
    assert forwards and forwards[0]["grad"] is False
    assert scope.report().findings == []


def test_data_parallel_wrapper(no_leaks):
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    model = nn.DataParallel(inner)  # on CPU it runs the module directly
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        opt.zero_grad()
        model(torch.randn(4, 4)).sum().backward()
        opt.step()
    t = scope.report().trace
    assert {p["name"] for p in t.parameters} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert scope.report().findings_at_or_above("warning") == []


def test_nested_watch_blocks(no_leaks):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as outer:
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        with gradscope.watch(model, opt) as inner:
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    assert outer.report().trace.backward_calls == 3 and outer.report().trace.optimizer_steps == 3
    assert inner.report().trace.backward_calls == 1 and inner.report().trace.optimizer_steps == 1
    assert outer.report().findings_at_or_above("warning") == []


def test_an_internal_error_is_reported_not_raised(monkeypatch, no_leaks):
    from gradscope.tracing.gradients import GradientRecorder

    def broken(self, optimizer, step, *args):
        raise RuntimeError("bug in gradscope")

    monkeypatch.setattr(GradientRecorder, "on_step", broken)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(gradscope.GradscopeWarning, match="could not record an optimizer step"):
        with gradscope.watch(model, opt) as scope:
            for _ in range(2):
                opt.zero_grad()
                model(torch.randn(2, 2)).sum().backward()
                opt.step()  # the user's training goes on
    assert any("bug in gradscope" in n for n in scope.report().trace.notes)


def test_exception_inside_a_users_backward(no_leaks):
    class Fails(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise ValueError("backward failed")

    model = nn.Linear(2, 2)
    model.train()
    with pytest.raises(ValueError, match="backward failed"):
        with gradscope.watch(model) as scope:
            Fails.apply(model(torch.randn(1, 2))).sum().backward()
    assert scope.report().trace.run["status"] == "error" and model.training


WARNING_SCRIPT = """
import warnings
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, y):
        out = self.fc(x)
        return F.mse_loss(out, y)          # broadcasting warning, inside a module


x = torch.randn(2, 3, 4, requires_grad=True)
copy = torch.tensor(x)                 # a warning raised in C++
for _ in range(3):
    F.softmax(x)                       # a Python-level warning: shown once for this line
F.softmax(x)                           # ... and once for this one
loss = Net()(torch.randn(2, 4), torch.randn(2, 1))
loss.backward()
warnings.simplefilter("error")
try:
    F.softmax(x)
except UserWarning as e:
    print("raised at", e.__traceback__.tb_lineno)
"""


def test_warnings_keep_the_users_location_and_filters(tmp_path):
    """Under the op watch torch calls the user's functions from gradscope's frame: the warnings
    must still name the user's lines, repeat as often, and obey the user's filters."""
    import subprocess
    import sys

    from conftest import REPO
    script = tmp_path / "warns.py"
    script.write_text(WARNING_SCRIPT)

    def run(*cmd):
        out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO)
        lines = [line for line in out.stderr.splitlines()
                 if "Warning:" in line and "NumPy" not in line]
        return out.returncode, lines, [line for line in out.stdout.splitlines()
                                       if line.startswith("raised")]

    plain = run(str(script))
    traced = run("-m", "gradscope", "trace", str(script), "--json", str(tmp_path / "t.json"),
                 "-q")
    assert plain[0] == 0 and traced[0] == 0
    assert len(plain[1]) == 4 and all(line.startswith(str(script)) for line in plain[1])
    assert traced[1] == plain[1]
    assert traced[2] == plain[2] and plain[2]


class BufferOutsideCheckpoint(nn.Module):
    """BERT's position_ids (an index buffer saved by the embedding's backward) and a BatchNorm
    outside the checkpointed segment (its backward saves running_mean), one inside it."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.register_buffer("position_ids", torch.arange(16).unsqueeze(0), persistent=False)
        self.outer_bn = nn.BatchNorm1d(5)
        self.inner = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(5), nn.ReLU())

    def forward(self, x):
        h = self.outer_bn(x + self.emb(self.position_ids[:, : x.shape[1]]))
        return ckpt.checkpoint(self.inner, h, use_reentrant=False).sum()


@pytest.mark.parametrize("how", ["plain", "watch", "trace"])
def test_checkpoint_with_saved_buffers_outside_the_segment(how, tmp_path, no_leaks):
    """The walk's checkpoint replay moves the inner BatchNorm's statistics and gradscope puts
    them back; writing the other buffers too bumped their versions, and autograd then refused
    the user's backward ("modified by an inplace operation")."""
    def train():
        torch.manual_seed(0)
        model = BufferOutsideCheckpoint()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(2, 5, 8)
        for _ in range(3):
            opt.zero_grad()
            model(x).backward()
            opt.step()
        return model

    if how == "trace":
        from gradscope.runner import trace_script
        path = tmp_path / "train.py"
        path.write_text("import torch\n" + "from test_reliability import "
                        "BufferOutsideCheckpoint as M\n" + """
torch.manual_seed(0)
model = M()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(2, 5, 8)
for _ in range(3):
    opt.zero_grad()
    model(x).backward()
    opt.step()
torch.save(model.state_dict(), __file__ + ".pt")
""")
        outcome = trace_script(str(path))
        assert outcome.error is None, outcome.error
        assert outcome.report.findings_at_or_above("warning") == []
        state = torch.load(str(path) + ".pt")
    elif how == "watch":
        torch.manual_seed(0)
        model = BufferOutsideCheckpoint()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(2, 5, 8)
        with gradscope.watch(model, opt) as scope:
            for _ in range(3):
                opt.zero_grad()
                model(x).backward()
                opt.step()
        assert scope.report().findings_at_or_above("warning") == []
        state = model.state_dict()
    else:
        state = train().state_dict()
    reference = train().state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


# -- no retention ------------------------------------------------------------------------------
def test_model_optimizer_inputs_and_graph_are_collectable_after_a_session():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(8, 4, requires_grad=True)
    with gradscope.watch(model, opt) as scope:
        for _ in range(3):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
    refs = [weakref.ref(o) for o in (model, opt, x, loss)]
    report = scope.report()
    del model, opt, x, loss
    gc.collect()
    assert [r() is None for r in refs] == [True] * len(refs)
    assert report.trace.optimizer_steps == 3  # the report itself is plain data


def test_trace_keeps_no_reference_to_the_model():
    model = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    report = gradscope.trace(model, x)
    refs = [weakref.ref(model), weakref.ref(x)]
    del model, x
    gc.collect()
    assert all(r() is None for r in refs) and report.graph.nodes


# -- robustness fuzz ---------------------------------------------------------------------------
class RandomDAG(nn.Module):
    """A random DAG of common layers: branches, residual adds, a shared module, tuple/dict out."""

    def __init__(self, rng, width=8):
        super().__init__()
        kinds = [lambda: nn.Linear(width, width), lambda: nn.Sequential(
            nn.Linear(width, width), nn.GELU()), lambda: nn.LayerNorm(width),
            lambda: nn.Dropout(0.1), lambda: nn.Tanh()]
        self.n = rng.randint(3, 9)
        self.blocks = nn.ModuleList(rng.choice(kinds)() for _ in range(self.n))
        self.inputs = [rng.sample(range(i + 1), k=min(i + 1, rng.randint(1, 2)))
                       for i in range(self.n)]
        self.shared = nn.Linear(width, width)
        self.use_shared = [rng.random() < 0.3 for _ in range(self.n)]
        self.out_kind = rng.choice(["tensor", "tuple", "dict"])

    def forward(self, x):
        values = [x]
        for i, block in enumerate(self.blocks):
            h = sum(values[j] for j in self.inputs[i])  # residual/branch merge
            h = block(h)
            if self.use_shared[i]:
                h = self.shared(h)
            values.append(h)
        if self.out_kind == "tuple":
            return values[-1], values[len(values) // 2]
        if self.out_kind == "dict":
            return {"out": values[-1], "mid": values[1]}
        return values[-1]


@pytest.mark.parametrize("seed", range(25))
def test_random_models(seed, tmp_path, no_leaks):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = RandomDAG(rng)
    x = torch.randn(4, 8)
    report = gradscope.trace(model, x)
    # the same graph, walked independently (gradscope restores RNG, so dropout repeats)
    torch.manual_seed(seed)
    model2 = model
    out = model2(x)
    parts = out if isinstance(out, tuple) else (out.values() if isinstance(out, dict) else [out])
    total = None
    for t in parts:
        if t.requires_grad:  # gradscope's default loss sums the outputs that require grad
            total = t.sum() if total is None else total + t.sum()
    nodes, edges = independent_walk(total)
    assert len(report.graph.nodes) == nodes and len(report.graph.edges) == edges
    used = {p["name"] for p in report.trace.parameters if p["in_graph"]}
    leaves = {n.param for n in report.graph.nodes if n.param}
    assert used == leaves
    assert all(n.leaf == "parameter" for n in report.graph.nodes if n.op == "AccumulateGrad")
    path = str(tmp_path / "t.json")
    report.save(path)
    assert Report.load(path).trace.to_dict() == report.trace.to_dict()
    assert json.loads(open(path).read())["summary"]["nodes"] == nodes


def test_ctrl_c_inside_a_hook_of_ours(monkeypatch, no_leaks):
    from gradscope.tracing.gradients import GradientRecorder

    def interrupted(self, optimizer, step, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(GradientRecorder, "on_step", interrupted)
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        with gradscope.watch(model, opt) as scope:
            model(torch.randn(1, 2)).sum().backward()
            opt.step()
    assert scope.report().trace.run["status"] == "interrupted"
    assert model.training is False


def test_sessions_closed_out_of_order_restore_torch(no_leaks):
    from gradscope.tracing.capture import Capture

    original = torch.autograd.backward
    a, b = Capture(intercept_backward=True), Capture(intercept_backward=True)
    a.__enter__()
    b.__enter__()
    x = torch.ones(2, requires_grad=True)
    x.sum().backward()
    a.close()  # the first one opened closes first
    x.sum().backward()
    b.close()
    assert torch.autograd.backward is original
    assert a.backward_calls == 1 and b.backward_calls == 2
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None  # nothing of ours keeps a closed capture alive


def test_graph_walk_over_checkpointed_batchnorm_leaves_training_identical(no_leaks):
    """Reading a checkpointed node's saved tensors re-runs its forward (BatchNorm statistics
    move): the walk stops at the first one, restores the buffers and records no extra calls."""
    from torch.utils.checkpoint import checkpoint

    def run(watch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(16, 8)
        scope = gradscope.watch(model, opt) if watch else None
        if scope:
            scope.__enter__()
        for _ in range(3):
            opt.zero_grad()
            checkpoint(model, x, use_reentrant=False).sum().backward()
            opt.step()
        if scope:
            scope.__exit__(None, None, None)
        return model, scope

    plain, _ = run(False)
    watched, scope = run(True)
    assert int(watched[1].num_batches_tracked) == int(plain[1].num_batches_tracked)
    for a, b in zip(list(plain.parameters()) + list(plain.buffers()),
                    list(watched.parameters()) + list(watched.buffers())):
        assert torch.equal(a, b)
    calls = {m["name"]: m["calls"] for m in scope.report().trace.modules}
    assert calls["1"] == 6  # 3 forwards + 3 recomputes in the user's own backward, none of ours


def test_changed_buffers_sees_new_versions_and_kernel_side_updates():
    from gradscope.tracing.capture import buffer_copies, changed_buffers
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    model.register_buffer("ids", torch.arange(4))
    buffers = buffer_copies([model])
    versions = [b._version for b, _ in buffers]
    model[0].running_mean.data.add_(1)   # like batch_norm's kernel: values, no version
    model[1].num_batches_tracked += 1     # a version bump
    changed = {id(b) for b, _ in changed_buffers(buffers, versions)}
    assert changed == {id(model[0].running_mean), id(model[1].num_batches_tracked)}


def test_the_walk_never_runs_an_unpack_hook(no_leaks):
    """Under saved-tensor hooks (save_on_cpu offloading on a GPU: every unpack is a copy back
    to the device), gradscope sizes what the hooks packed without unpacking anything."""
    counts = {"unpack": 0}

    def pack(t):
        return ("kept", t.detach().clone())

    def unpack(packed):
        counts["unpack"] += 1
        return packed[1]

    def run(watched):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        counts["unpack"] = 0

        def loop():
            for _ in range(2):
                opt.zero_grad()
                with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                    loss = model(torch.randn(8, 16)).square().mean()
                loss.backward()
                opt.step()
        if not watched:
            loop()
            return counts["unpack"], None
        with gradscope.watch(model, opt) as scope:
            loop()
        return counts["unpack"], scope.report()

    (plain, _), (watched, report) = run(False), run(True)
    assert watched == plain
    saved = [s for n in report.trace.graph.nodes for s in n.saved]
    assert saved and all("(packed by a hook)" in s.name for s in saved)
    assert report.trace.graph.saved_bytes > 0
    assert any("saved-tensor hooks" in n for n in report.trace.notes)


def test_checkpointed_segments_are_not_replayed_by_the_walk(no_leaks):
    calls = [0]

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(8, 8), nn.BatchNorm1d(8)

        def forward(self, x):
            calls[0] += 1
            return torch.tanh(self.bn(self.lin(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.segs = nn.ModuleList([Seg() for _ in range(3)])

        def forward(self, x):
            for seg in self.segs:
                x = ckpt.checkpoint(seg, x, use_reentrant=False)
            return x

    def run(watched):
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        calls[0] = 0

        def step():
            opt.zero_grad()
            model(torch.randn(16, 8)).square().mean().backward()
            opt.step()
        if watched:
            with gradscope.watch(model, opt):
                step()
        else:
            step()
        return calls[0], [t.detach().clone() for t in (*model.parameters(), *model.buffers())]

    (plain_calls, plain), (watched_calls, watched) = run(False), run(True)
    assert watched_calls == plain_calls == 6  # 3 forwards + 3 recomputes in backward, no more
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))


def test_custom_function_saved_tensors_are_not_unpacked_by_the_walk(no_leaks):
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    unpacks = [0]

    def unpack(t):
        unpacks[0] += 1
        return t

    def run(watched):
        torch.manual_seed(0)
        lin = nn.Linear(4, 4)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        unpacks[0] = 0

        def step():
            opt.zero_grad()
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
                loss = Square.apply(lin(torch.randn(2, 4))).sum()
            loss.backward()
            opt.step()
        if watched:
            with gradscope.watch(lin, opt):
                step()
        else:
            step()
        return unpacks[0]
    assert run(True) == run(False)


def test_an_interrupt_inside_a_parametrization_does_not_mute_the_rest_of_the_run(tmp_path):
    """Ctrl-C (a BaseException, for which torch skips the always-called post hooks) while a
    parametrized weight is read outside forward: later forwards must still be seen."""
    from gradscope.runner import trace_script

    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from torch.nn.utils import parametrize
        class Sym(nn.Module):
            interrupt = False
            def forward(self, w):
                if Sym.interrupt:
                    Sym.interrupt = False
                    raise KeyboardInterrupt
                return (w + w.t()) / 2
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        parametrize.register_parametrization(model[0], "weight", Sym())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for it in range(4):
            if it == 1:
                Sym.interrupt = True
                try:
                    model[0].weight.norm()   # logging, interrupted
                except KeyboardInterrupt:
                    pass
            opt.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            opt.step()
        class Net2(nn.Module):
            def forward(self, x):
                return nn.Linear(8, 1)(x)
        Net2()(torch.randn(2, 8)).sum().backward()
    '''))
    outcome = trace_script(str(path))
    assert outcome.error is None
    calls = {(m["model"], m["name"]): m["calls"] for m in outcome.report.trace.modules}
    assert calls[("model", "")] >= 3  # at most the forward right after the interrupt is lost
    assert "layer-in-forward" in {f.check for f in outcome.report.findings}
