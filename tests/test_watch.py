"""gradscope.watch: the session API, accumulation records, silence on clean loops, numerics,
memory and synchronisation budgets."""
import gc

import pytest
import torch
from torch import nn

import gradscope

from conftest import global_hook_counts
from models import CNN, LSTMModel, TransformerBlock


def _loop(model, opt, steps=3, zero=True, set_to_none=True, clip=False, sched=None, x=None,
          y=None):
    x = torch.randn(8, 6) if x is None else x
    y = torch.randint(0, 2, (8,)) if y is None else y
    for _ in range(steps):
        if zero:
            opt.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        if sched is not None:
            sched.step()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 2))


def test_watch_records_the_whole_run_and_removes_everything(no_leaks):
    model = _mlp()
    with gradscope.watch(model) as scope:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)  # created inside: found by step hooks
        _loop(model, opt)
    report = scope.report()
    t = report.trace
    assert t.run["mode"] == "watch" and t.backward_calls == 3 and t.optimizer_steps == 3
    assert [s["backward_calls"] for s in t.accumulation] == [1, 1, 1]
    assert all(p["in_optimizer"] for p in t.parameters)
    assert len(report.graph.nodes) > 0 and report.findings_at_or_above("warning") == []
    assert len(t.gradients["norm_steps"]) == 3
    assert set(t.gradients["grad_norms"]) == {"model.0.weight", "model.0.bias", "model.3.weight",
                                              "model.3.bias"}


def test_forgotten_zero_grad_is_an_error_with_counts():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradscope.watch(model, opt) as scope:
        _loop(model, opt, steps=4, zero=False)
    [f] = scope.report().findings_at_or_above("error")
    assert f.check == "missing-zero-grad" and f.data["steps"] == [2, 3, 4]
    assert f.data["max_summed"] == 4
    assert "test_watch.py" in f.location


@pytest.mark.parametrize("kwargs", [
    {"set_to_none": True}, {"set_to_none": False}, {"clip": True}, {"sched": "step"},
])
def test_clean_loops_are_silent(kwargs):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if kwargs.get("sched"):
        kwargs["sched"] = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    with gradscope.watch(model, opt) as scope:
        _loop(model, opt, steps=6, **kwargs)
    assert scope.report().findings_at_or_above("warning") == []
    assert not any(s["carried"] for s in scope.report().trace.accumulation)


@pytest.mark.parametrize("make", [CNN, TransformerBlock, LSTMModel])
def test_clean_real_models_are_silent(make):
    torch.manual_seed(0)
    model = make()
    x = {CNN: torch.randn(4, 3, 16, 16), TransformerBlock: torch.randn(2, 5, 16),
         LSTMModel: torch.randint(0, 20, (3, 5))}[make]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gradscope.watch(model, opt) as scope:
        for _ in range(6):
            opt.zero_grad()
            model(x).float().pow(2).mean().backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(x)
    assert scope.report().findings_at_or_above("warning") == []


def test_grad_scaler_skipped_inf_steps_are_not_nonfinite_grads():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for step in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            if step == 1:
                loss = loss * float("inf")  # the scaler must see an inf and skip this step
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    found = {f.check for f in scope.report().findings}
    assert "nonfinite-grad" not in found
    assert scope.report().trace.optimizer_steps == 3  # the inf step was skipped


def test_real_nan_gradient_and_nan_loss_are_errors():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 2, (8,)))
        (loss * float("nan")).backward()
        opt.step()
    found = {f.check: f for f in scope.report().findings}
    assert found["nonfinite-grad"].severity == "error"
    assert found["nonfinite-loss"].location.startswith("tests/test_watch.py:")


@pytest.mark.parametrize("shape", ["scalar", "view", "vector"])
def test_a_nan_loss_is_found_whatever_its_shape(shape):
    # a 0-d loss is kept as it is until the read; a view of a larger tensor, or a loss of
    # several values, is reduced first: all three must be checked, at the step it happened
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for step in range(20):
            opt.zero_grad()
            per_sample = nn.functional.cross_entropy(model(x), y, reduction="none")
            if step == 13:
                per_sample = per_sample * float("nan")
            loss = {"scalar": per_sample.mean(), "view": per_sample[:1].mean(0, keepdim=True)[0],
                    "vector": per_sample[:2]}[shape]
            loss.backward(torch.ones_like(loss) if shape == "vector" else None)
            if step != 13:  # (a step on NaN gradients would make every later loss NaN too)
                opt.step()
    losses = scope.report().trace.gradients["nonfinite_losses"]
    assert [l["backward"] for l in losses] == [14]


def test_parameters_registered_late_are_in_the_report(no_leaks):
    # the parameter listing is shared by the end-of-run passes; a registration invalidates it
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for step in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 1:
                model.scale = nn.Parameter(torch.ones(1))  # after a step: listed from then on
        scope._capture.interim_snapshot()  # a listing made now...
        model.bias_late = nn.Parameter(torch.zeros(2))  # ...and a registration after it
    names = {p["name"] for p in scope.report().trace.parameters}
    assert {"scale", "bias_late"} <= names


def test_session_states(no_leaks):
    model = _mlp()
    scope = gradscope.watch(model)
    with pytest.raises(gradscope.SessionClosedError, match="after the block"):
        scope.report()
    with scope:
        pass
    with pytest.raises(gradscope.SessionClosedError, match="records one run"):
        with scope:
            pass
    with pytest.raises(gradscope.InputError, match="takes models"):
        gradscope.watch("model")


def test_exceptions_and_ctrl_c_propagate_and_leave_nothing(no_leaks):
    model = _mlp()
    model.eval()
    with pytest.raises(ValueError, match="user error"):
        with gradscope.watch(model) as scope:
            model(torch.randn(2, 6))
            raise ValueError("user error")
    assert scope.report().trace.run["status"] == "error" and model.training is False
    with pytest.raises(KeyboardInterrupt):
        with gradscope.watch(model) as scope:
            raise KeyboardInterrupt
    assert scope.report().trace.run["status"] == "interrupted"
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) and not p._backward_hooks
               for p in model.parameters())


def _train(make, steps, watched):
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = {CNN: torch.randn(4, 3, 16, 16), TransformerBlock: torch.randn(2, 5, 16),
         LSTMModel: torch.randint(0, 20, (3, 5))}[make]

    def loop():
        for _ in range(steps):
            opt.zero_grad()
            model(x).float().pow(2).mean().backward()
            opt.step()

    if watched:
        with gradscope.watch(model, opt):
            loop()
    else:
        loop()
    return [p.detach().clone() for p in model.parameters()], torch.rand(3)


@pytest.mark.parametrize("make", [CNN, TransformerBlock, LSTMModel])
def test_twenty_watched_steps_are_bit_identical(make):
    (plain, rng_plain), (watched, rng_watched) = _train(make, 20, False), _train(make, 20, True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert torch.equal(rng_plain, rng_watched)  # no random numbers drawn by gradscope


def test_one_host_read_per_optimizer_step_at_most():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        _loop(model, opt, steps=10)
        recorder = scope._capture.gradients
    assert recorder.syncs <= 10 + 1


def test_a_thousand_steps_keep_memory_flat():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 4), torch.randn(4, 1)

    def step():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.Tensor in type(o).__mro__)

    with gradscope.watch(model, opt) as scope:
        for _ in range(100):
            step()
        before = live_tensors()
        # 14 windows of idle steps later (steady.WINDOW = 64): the same number of losses is
        # waiting for the next full step's read as at `before`
        for _ in range(14 * 64):
            step()
        after = live_tensors()
        capture = scope._capture
        assert len(capture.gradients._pending_losses) <= 64
        assert len(capture.events) <= 10_001
        assert len(capture.gradients.norm_steps) < 1000
    assert after - before <= 2, (before, after)
    assert global_hook_counts() == {k: 0 for k in global_hook_counts()}


@pytest.mark.parametrize("steady", [True, False], ids=["steady", "changing-batches"])
def test_norms_go_on_being_kept_after_the_series_is_thinned(steady, monkeypatch):
    """Past MAX_NORM_STEPS kept reads, every other one is dropped and then every second read
    is kept, and so on: the series goes on to the end of the run. (Reads fall at multiples
    of 8, or of 64 in a steady loop: a stride over step numbers kept none of them.)"""
    from gradscope.tracing import gradients
    monkeypatch.setattr(gradients, "MAX_NORM_STEPS", 20)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = 1400 if steady else 400
    every = 64 if steady else 8  # steps between two reads once sampled
    with gradscope.watch(model, opt) as scope:
        for k in range(steps):
            n = 4 if steady else 3 + k % 2  # another batch size each step: never idle
            opt.zero_grad()
            nn.functional.mse_loss(model(torch.randn(n, 4)), torch.randn(n, 1)).backward()
            opt.step()
        recorder = scope._capture.gradients
        stride = recorder._norm_stride
        kept = list(recorder.norm_steps)
        series = [len(v) for v in recorder.norms.values()]
    assert stride >= 2  # the series was thinned at least once
    assert len(kept) < 20 and kept == sorted(set(kept))
    assert kept[-1] > steps - 2 * stride * every, (kept, stride)  # not stuck where it was cut
    assert series == [len(kept)] * len(series)


def test_zero_grad_call_sites_are_in_the_timeline(no_leaks):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for epoch in range(2):
            opt.zero_grad()  # once per epoch: the bug
            for _ in range(3):
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        model.zero_grad()
    t = scope.report().trace
    sites = [e for e in t.events if e["kind"] == "zero_grad"]
    assert [e["owner"] for e in sites] == ["SGD", "SGD", "Sequential"]
    f = next(f for f in scope.report().findings if f.check == "missing-zero-grad")
    assert "zero_grad() was called only at tests/test_watch.py:" in f.message


def test_find_nonfinite_names_the_op_that_made_the_nan(no_leaks):
    class Dist(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 8)
            self.head = nn.Linear(1, 1)

        def forward(self, a, b):
            d = torch.sqrt(((self.enc(a) - self.enc(b)) ** 2).sum(1, keepdim=True))
            return self.head(d)

    torch.manual_seed(0)
    model = Dist()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = torch.randn(4, 4)
    with gradscope.watch(model, opt, find_nonfinite=True) as scope:
        for step in range(2):
            opt.zero_grad()
            b = a.clone() if step == 1 else torch.randn(4, 4)  # the NaN appears at step 2
            model(a, b).mean().backward()
            opt.step()
    t = scope.report().trace
    origin = t.gradients["nonfinite_origin"]
    assert origin["op"] == "SqrtBackward0" and origin["model"] == "model"
    assert origin["backward"] == 2 and origin["module"] == ""
    f = next(f for f in scope.report().findings if f.check == "nonfinite-grad")
    assert "produced by SqrtBackward0" in f.message and "--find-nonfinite" not in f.hint


def test_find_nonfinite_changes_no_number():
    def run(find):
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt, find_nonfinite=find):
            _loop(model, opt, steps=3)
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))


# -- loops the first version misread (found by review) ------------------------------------------
@pytest.mark.parametrize("set_to_none", [True, False])
def test_gan_loop_is_not_a_missing_zero_grad(set_to_none):
    torch.manual_seed(0)
    G, D = nn.Linear(4, 6), nn.Sequential(nn.Linear(6, 1))
    opt_g = torch.optim.SGD(G.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(D.parameters(), lr=0.01)
    with gradscope.watch(G, D, opt_g, opt_d) as scope:
        for _ in range(4):
            fake = G(torch.randn(8, 4))
            opt_g.zero_grad(set_to_none=set_to_none)
            D(fake).mean().backward()        # flows into D's gradients too
            opt_g.step()
            D.zero_grad(set_to_none=set_to_none)  # ...which are reset before D's own update
            (D(torch.randn(8, 6)).mean() - D(fake.detach()).mean()).backward()
            opt_d.step()
    found = {f.check for f in scope.report().findings}
    assert "missing-zero-grad" not in found and "grad-accumulation" not in found


def test_gradient_penalty_before_zero_grad_and_lbfgs_closures():
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lbfgs_model = nn.Linear(5, 1)
    lbfgs = torch.optim.LBFGS(lbfgs_model.parameters(), max_iter=5)
    x, y = torch.randn(16, 5), torch.randn(16, 1)

    def closure():
        lbfgs.zero_grad()
        loss = nn.functional.mse_loss(lbfgs_model(x), y)
        loss.backward()
        return loss

    with gradscope.watch(model, lbfgs_model, opt, lbfgs) as scope:
        for _ in range(3):
            out = model(x)
            torch.autograd.grad(out.sum(), list(model.parameters()), create_graph=False)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            lbfgs.step(closure)
    found = {f.check for f in scope.report().findings}
    assert "missing-zero-grad" not in found and "grad-accumulation" not in found


def test_scaler_skipped_step_then_zero_grad_is_not_accumulation():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for step in range(4):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) * (float("inf") if step == 1 else 1)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    t = scope.report().trace
    assert [s["backward_calls"] for s in t.accumulation] == [1, 1, 1]
    assert {f.check for f in scope.report().findings} <= {"nonfinite-loss"}


def test_zero_element_parameter_and_in_place_zeroing():
    class WithEmpty(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.empty = nn.Parameter(torch.zeros(0))

        def forward(self, x):
            return self.fc(x) + self.empty.sum()

    model = WithEmpty()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        for _ in range(10):
            opt.zero_grad(set_to_none=False)
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
    t = scope.report().trace
    assert t.optimizer_steps == 10 and not any(s["carried"] for s in t.accumulation)
    assert not any("hook" in n for n in t.notes)


def test_fused_optimizer_with_grad_scaler_skips_are_not_nonfinite():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for step in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) * (float("inf") if step == 1 else 1)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "nonfinite-grad" not in {f.check for f in scope.report().findings}


def test_a_loss_module_built_every_step_is_not_kept(no_leaks):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for _ in range(60):
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(x), y).backward()  # a new module object each step
            opt.step()
        assert len(scope._capture.tracker.models) <= 32
    assert scope.report().findings_at_or_above("warning") == []


def test_find_nonfinite_with_gradients_on_two_devices_never_breaks_backward():
    """One autograd node can return gradients on two devices (a CUDA op accepts a 0-d CPU
    tensor; its gradient comes back on the CPU). The meta device stands in for the GPU."""
    from gradscope.tracing.nonfinite import NonfiniteFinder, _all_finite

    flags = _all_finite((torch.randn(4, device="meta"), torch.tensor(1.0), torch.ones(2)))
    assert sorted(f.device.type for f in flags) == ["cpu", "meta"]

    finder = NonfiniteFinder()
    finder._flags = [("n0", [torch.tensor(True)], [torch.tensor(True), torch.tensor(False)])]
    finder.errors = ["non-finite search at n1: RuntimeError('boom')"]
    finder._graph = gradscope.graph_of(nn.Linear(2, 2)(torch.randn(1, 2)).sum())
    finder._index, finder._location = 1, "train.py:3"
    with pytest.raises(RuntimeError, match="boom"):  # raised after backward, for the report
        finder.collect()
    assert finder.found["node"] == "n0"  # the flags were still read: outgoing not finite


def test_steps_inside_cuda_graph_capture_are_not_read_and_the_report_says_so(monkeypatch):
    """Capturing a whole training step in a CUDA graph (torch.cuda.graph) forbids any
    synchronisation, and replays run no Python hooks. The capturing stream is simulated; the
    host-read counter checks that nothing was read while it 'captured'."""
    from gradscope.tracing import gradients

    from hostreads import HostReadCounter

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))

    def step():
        opt.zero_grad()
        for _ in range(2):  # accumulation: the before-accumulation hooks run too
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    with gradscope.watch(model, opt, find_nonfinite=True) as scope:
        step()                                     # warm-up outside the graph: recorded
        monkeypatch.setattr(gradients, "stream_capturing", lambda: True)
        with HostReadCounter() as reads:
            step()                                 # "captured"
        monkeypatch.setattr(gradients, "stream_capturing", lambda: False)
    assert reads.ours() == []
    report = scope.report()
    assert scope._capture.gradients.captured_steps == 1
    assert report.trace.gradients["norm_steps"] == [1]
    assert any("CUDA graph" in n for n in report.trace.notes)
    assert "missing-zero-grad" not in {f.check for f in report.findings}


class _LateLazyHead(nn.Module):
    """A lazy auxiliary head first run at the third step (after the first backward)."""

    def __init__(self):
        super().__init__()
        self.body, self.aux, self.calls = nn.Linear(6, 8), nn.LazyLinear(2), 0

    def forward(self, x):
        self.calls += 1
        h = self.body(x)
        out = h[:, :2]
        return out + self.aux(h) if self.calls >= 3 else out


def test_a_lazy_layer_first_run_after_the_first_backward_is_watched():
    torch.manual_seed(0)
    model = _LateLazyHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # (the lazy ones too: same objects)
    with gradscope.watch(model, opt) as scope:
        _loop(model, opt, steps=12)
    norms = scope.report().trace.gradients["grad_norms"]
    assert {"model.aux.weight", "model.aux.bias"} <= set(norms), sorted(norms)
    # watched from the backward of the step that materialised it (the third), not later
    assert len(norms["model.aux.weight"]) == len(norms["model.body.weight"]) - 2


def test_a_layer_unfrozen_in_the_first_steps_is_watched_from_then_on():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # holds the frozen weight too
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    with gradscope.watch(model, opt) as scope:
        for k in range(12):
            if k == 2:
                model[0].weight.requires_grad_(True)  # no registration: the same parameter
            _loop(model, opt, steps=1, x=x, y=y)
    g = scope.report().trace.gradients
    first = g["norm_steps"][len(g["norm_steps"]) - len(g["grad_norms"]["model.0.weight"])]
    assert first == 3
