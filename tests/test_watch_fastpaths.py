"""The watch session's fast paths must record what the general paths record.

After its first steps a watch session replays recorded forwards instead of hooking every module
call (``lightmode``) and keeps the per-parameter counts of a uniform loop once (``uniform``).
Each loop below runs twice, with the fast paths and with them switched off, and the reports must
be equal: same findings, same accumulation records, modules table, events and norms.
"""
import gc
import json
import threading
import weakref

import pytest
import torch
from torch import nn

import gradscope
from gradscope.tracing import capture, gradients, lightmode, steady, uniform

STEPS = 80  # past the warm-up (8) and one periodic full step (64)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.0),
                         nn.Linear(8, 3))


def _plain(model, opt, x, y, k):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _keep_grads(model, opt, x, y, k):
    opt.zero_grad(set_to_none=False)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _accumulate(model, opt, x, y, k):
    opt.zero_grad()
    for half in (x[:4], x[4:]):
        nn.functional.cross_entropy(model(half), y[:4]).backward()
    opt.step()


def _forgets_zero_grad_sometimes(model, opt, x, y, k):
    if k % 10:
        opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def _shapes_change(model, opt, x, y, k):
    opt.zero_grad()
    n = 8 if k % 7 else 3  # a smaller batch now and then: a forward never recorded before
    nn.functional.cross_entropy(model(x[:n]), y[:n]).backward()
    opt.step()


def _eval_forward_between(model, opt, x, y, k):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if k % 16 == 0:
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()


def _first_layer_frozen_late(model, opt, x, y, k):
    if k == 40:
        model[0].weight.grad = None
        model[0].weight.requires_grad_(False)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


# Bugs that start while the session is idle (steady.py: k 11-62 and 65-79 here): each is
# recorded as with every step recorded in full, and found (test_late_bugs_are_found).
def _stops_zero_grad_late(model, opt, x, y, k):
    if k < 50:
        opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _evaluates_in_train_mode_late(model, opt, x, y, k):
    _plain(model, opt, x, y, k)
    if k == 50:
        with torch.no_grad():  # model.eval() forgotten: BatchNorm updates its statistics
            model(x)


def _clips_after_step_late(model, opt, x, y, k):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if k >= 50:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)


def _loss_goes_nan_late(model, opt, x, y, k):
    if k == 50:
        x = x.clone()
        x[0, 0] = float("nan")
    _plain(model, opt, x, y, k)


def _bad_batch_skipped_late(model, opt, x, y, k):
    try:
        _plain(model, opt, x[:, :5] if k == 50 else x, y, k)  # one malformed batch
    except RuntimeError:
        pass  # skipped by the program, which carries on


def _forward_raises_late(model, opt, x, y, k):
    """A forward with the usual inputs that raises (an idle one: its post-hook sees it)."""
    weight = model[4].weight.data
    if k == 50:
        model[4].weight.data = weight[:, :7]
    try:
        _plain(model, opt, x, y, k)
    except RuntimeError:
        pass
    finally:
        model[4].weight.data = weight


def _scaler_loop(model, opt, x, y, k):
    """GradScaler with a plain (not fused) optimizer: no step is skipped."""
    scaler = opt.__dict__.setdefault("_test_scaler", torch.amp.GradScaler("cpu"))
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()


def _loss_rebuilt_without_history_late(model, opt, x, y, k):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    if k >= 50:
        loss = torch.tensor(loss.item(), requires_grad=True)  # the graph is gone
    loss.backward()
    opt.step()


def _submodule_evaluated_first(model, opt, x, y, k):
    if k == 0:
        with torch.no_grad():
            model[0](x)  # a part of the model called on its own once, before training
    _plain(model, opt, x, y, k)


def _state_carried_late(model, opt, x, y, k):
    """From step 50 the input carries the previous step's (freed) history."""
    prev = opt.__dict__.get("_test_prev")
    if k >= 50 and prev is not None:
        x = x + prev.mean()
    opt.zero_grad()
    out = model(x)
    opt.__dict__["_test_prev"] = out
    try:
        nn.functional.cross_entropy(out, y).backward()
    except RuntimeError:
        return  # "backward through the graph a second time": the program skips the batch
    opt.step()


def _batchnorm_frozen_then_unfrozen(model, opt, x, y, k):
    if k == 20:
        model[1].eval()  # the recipe: frozen BatchNorm on small batches
    if k == 50:
        model.train()  # a new epoch's model.train() unfreezes it
    _plain(model, opt, x[:3] if k >= 50 else x, y[:3] if k >= 50 else y, k)


def _checkpointed(model, opt, x, y, k):
    from torch.utils.checkpoint import checkpoint

    opt.zero_grad()
    out = checkpoint(model, x, use_reentrant=False)
    nn.functional.cross_entropy(out, y).backward()
    opt.step()


def _nan_loss_elsewhere(model, opt, x, y):
    return nn.functional.cross_entropy(model(x), y) * float("nan")


def _loss_from_another_line_late(model, opt, x, y, k):
    if k < 50:
        _plain(model, opt, x, y, k)
        return
    opt.zero_grad()
    _nan_loss_elsewhere(model, opt, x, y).backward()
    opt.step()


def _step_from_another_line_late(model, opt, x, y, k):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    if k < 50:
        opt.step()
    else:  # the same step from another line, inside an idle run: its events name this line
        opt.step()


def _group_given_fewer_parameters_late(model, opt, x, y, k):
    if k == 50:
        opt.param_groups[0]["params"] = list(model[4].parameters())  # fine-tune the head only
    _plain(model, opt, x, y, k)


def _nan_gradients_near_the_end(model, opt, x, y, k):
    """From step 70 the gradients are NaN while the loss stays finite (sqrt at 0)."""
    opt.zero_grad()
    out = model(x)
    scale = 0.0 if k >= 70 else 1e-3  # the same ops every step: the loop stays idle
    loss = nn.functional.cross_entropy(out, y) + (out * scale).pow(2).sum().sqrt()
    loss.backward()
    opt.step()


def _total_loss_kept_late(model, opt, x, y, k):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if k >= 40:
        opt.__dict__["_test_total"] = opt.__dict__.get("_test_total", 0) + loss  # not .item()


LATE_BUGS = {_stops_zero_grad_late: "missing-zero-grad",
             _evaluates_in_train_mode_late: "train-mode-eval",
             _clips_after_step_late: "clip-grad-order", _loss_goes_nan_late: "nonfinite-loss",
             _nan_gradients_near_the_end: "nonfinite-grad",
             _batchnorm_frozen_then_unfrozen: "batchnorm-small-batch"}
LOOPS = [_plain, _keep_grads, _accumulate, _forgets_zero_grad_sometimes, _shapes_change,
         _eval_forward_between, _first_layer_frozen_late, _bad_batch_skipped_late,
         _forward_raises_late, _scaler_loop, _loss_rebuilt_without_history_late,
         _submodule_evaluated_first, _state_carried_late, _checkpointed, _loss_from_another_line_late,
         _step_from_another_line_late, _group_given_fewer_parameters_late,
         _total_loss_kept_late, *LATE_BUGS]


def _general_path(m) -> None:
    """Switch the fast paths off (``m``: a monkeypatch context): every call recorded in full."""
    m.setattr(lightmode.LightForwards, "start", lambda self: None)
    m.setattr(uniform.UniformSteps, "start", lambda self: None)
    m.setattr(steady.SteadySteps, "learn", lambda self, *a: None)


def _report(loop, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            _general_path(m)
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        with gradscope.watch(model, opt) as scope:
            for k in range(STEPS):
                loop(model, opt, x, y, k)
        d = json.loads(scope.report().trace.to_json())
        d["idle_steps"] = scope._capture.steady.idle_steps
        return d, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("loop", LOOPS, ids=[f.__name__.strip("_") for f in LOOPS])
def test_fast_paths_record_what_the_general_paths_record(loop, monkeypatch, no_leaks):
    fast, fast_params = _report(loop, True, monkeypatch)
    slow, slow_params = _report(loop, False, monkeypatch)
    assert all(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)  # (NaN after a NaN loss)
               for a, b in zip(fast_params, slow_params))
    for key in ("accumulation", "modules", "events", "parameters", "notes", "backward_calls",
                "optimizer_steps", "direct_calls", "optimizers", "constructions"):
        assert fast[key] == slow[key], key
    # Inputs carrying old history are seen at every forward; the keep-alive watch's looks at
    # the callers' variables come at spread-out forwards, and one due while idle happens at
    # the next full step: other steps looked at.
    assert [g for g in fast["kept_graphs"] if g["kind"] == "carried"] == \
        [g for g in slow["kept_graphs"] if g["kind"] == "carried"]
    # Equal findings; but NaN gradients are seen at the next step that reads the norms, which
    # idle steps make rarer, and a growing graph at the look after: those name other steps.
    sampled = ("nonfinite-grad", "graph-kept-alive")
    assert [f for f in fast["findings"] if f["check"] not in sampled] == \
        [f for f in slow["findings"] if f["check"] not in sampled]
    assert [f["check"] for f in fast["findings"] if f["check"] != "graph-kept-alive"] == \
        [f["check"] for f in slow["findings"] if f["check"] != "graph-kept-alive"]
    assert "nonfinite-grad" not in [f["check"] for f in slow["findings"]] or \
        "nonfinite-grad" in [f["check"] for f in fast["findings"]]
    assert fast["graph"] == slow["graph"]
    _same_gradients(fast["gradients"], slow["gradients"])


def _same_gradients(fast: dict, slow: dict) -> None:
    """Equal, except that idle steps (steady.py) read norms at fewer steps: each norm read by
    the fast session is the one the general path read at that step."""
    series = ("norm_steps", "grad_norms", "grad_maxabs", "nonfinite_grads")
    assert {k: v for k, v in fast.items() if k not in series} == \
        {k: v for k, v in slow.items() if k not in series}
    slow_bad = {r["step"]: r["params"] for r in slow["nonfinite_grads"]}
    assert all(slow_bad.get(r["step"]) == r["params"] for r in fast["nonfinite_grads"])
    assert bool(fast["nonfinite_grads"]) == bool(slow["nonfinite_grads"])
    assert set(fast["norm_steps"]) <= set(slow["norm_steps"])
    at = {s: i for i, s in enumerate(slow["norm_steps"])}
    for kind in ("grad_norms", "grad_maxabs"):
        assert fast[kind].keys() == slow[kind].keys()
        for name, values in fast[kind].items():
            # (a parameter frozen part way has norms for the first steps only)
            steps = fast["norm_steps"][:len(values)]
            assert values == [slow[kind][name][at[s]] for s in steps], (kind, name)


@pytest.mark.parametrize("kept", [150, 203, 250, 254, 290])
def test_the_timeline_is_cut_at_the_same_event_when_idle_steps_are_written_back(kept,
                                                                               monkeypatch):
    """Idle steps' events go into the timeline in one go when the steps end: the cut (the
    note and the mark) falls where the general path, event by event, puts it, inside the
    first idle run (150, 203, 250), in the 64th step, recorded in full (254), or in the
    second idle run (290); past it, the backward calls are still counted."""
    monkeypatch.setattr(capture, "MAX_EVENTS", kept)
    fast, _ = _report(_plain, True, monkeypatch)
    slow, _ = _report(_plain, False, monkeypatch)
    assert fast["idle_steps"] >= 30
    assert fast["events"] == slow["events"] and len(fast["events"]) == kept + 1
    assert fast["events"][-1] == {"kind": "truncated"}
    assert fast["notes"] == slow["notes"] and \
        sum(f"first {kept} events" in n for n in fast["notes"]) == 1
    assert fast["backward_calls"] == slow["backward_calls"] == STEPS


@pytest.mark.parametrize("kept", [20, 45, 64])
def test_the_step_records_end_at_the_same_step_when_idle_steps_are_written_back(kept,
                                                                                monkeypatch):
    """Idle steps' accumulation records are written in bulk when the steps end: the records
    stop (with their mark) at the step where the general path, step by step, stops them,
    inside an idle run (20, 45) or at a full step (64)."""
    monkeypatch.setattr(gradients, "MAX_STEP_RECORDS", kept)
    fast, _ = _report(_plain, True, monkeypatch)
    slow, _ = _report(_plain, False, monkeypatch)
    assert fast["idle_steps"] >= 30
    assert fast["accumulation"] == slow["accumulation"]
    assert len(fast["accumulation"]) == kept + 1
    assert fast["accumulation"][-1]["truncated"] is True
    assert fast["accumulation"][-1]["step"] == kept + 1
    assert fast["findings"] == slow["findings"]


def test_the_fast_paths_do_engage(monkeypatch):
    engaged = {"light": 0, "uniform": 0}
    real_light, real_uniform = lightmode.LightForwards.start, uniform.UniformSteps.start

    def light(self):
        engaged["light"] += 1
        real_light(self)

    def uniform_start(self):
        engaged["uniform"] += 1
        real_uniform(self)
    monkeypatch.setattr(lightmode.LightForwards, "start", light)
    monkeypatch.setattr(uniform.UniformSteps, "start", uniform_start)
    _report(_plain, True, monkeypatch)
    assert engaged["light"] >= 1 and engaged["uniform"] >= 1


@pytest.mark.parametrize("loop", list(LATE_BUGS), ids=[f.__name__.strip("_") for f in LATE_BUGS])
def test_late_bugs_are_found(loop, monkeypatch):
    """The bug's first step falls in a run of idle steps: found, at its step."""
    report, _ = _report(loop, True, monkeypatch)
    assert report["idle_steps"] >= 30  # the steps before it ran idle
    checks = [f["check"] for f in report["findings"]]
    assert LATE_BUGS[loop] in checks, checks
    if loop is _loss_goes_nan_late:
        first = report["gradients"]["nonfinite_losses"][0]
        line = _plain.__code__.co_firstlineno + 2  # _plain's backward line
        assert first["backward"] == 51 and \
            first["location"].endswith(f"test_watch_fastpaths.py:{line}")


def test_idle_steps_engage_on_a_steady_loop(monkeypatch):
    report, _ = _report(_plain, True, monkeypatch)
    # 80 steps: idle from the second step that repeats the one before, up to each multiple of
    # 64 (steady.WINDOW), the warm-up and the periodic full steps excepted
    assert 55 <= report["idle_steps"] <= 68, report["idle_steps"]
    slow, _ = _report(_plain, False, monkeypatch)
    assert slow["idle_steps"] == 0


def test_a_steady_loop_is_recorded_in_full_only_at_its_warm_up_and_periodic_steps():
    """Warm-up (8), the first light forward (9, whose pattern is recorded), two full steps that
    match (10, 11); then each 64th step reads the norms and records its forwards in full, and
    the step after that one is compared with the step before it: idle again at 66."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    full = []
    with gradscope.watch(model, opt) as scope:
        idle = scope._capture.steady
        for k in range(200):
            before = idle.idle_steps
            _plain(model, opt, x, y, k)
            if idle.idle_steps == before:
                full.append(k + 1)
    assert full == [*range(1, 12), 64, 65, 128, 129, 192, 193]


class _BranchLate(nn.Module):
    """Runs an extra layer from its 41st forward on (a schedule in the user's forward)."""

    def __init__(self):
        super().__init__()
        self.a, self.extra, self.b = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.a(x))
        return self.b(self.extra(h) if self.calls > 40 else h)


def _on_both_paths(setup, monkeypatch, row=lambda r: r["calls"]) -> list:
    """``[(module calls, finding checks)]`` of 100 steps of ``setup()``'s loop (it returns the
    model, the optimizer handed to watch, and one step's function of ``k``), with the fast
    paths and then on the general path; ``row``: what is kept of each module's row. No hook
    is left on the model's modules afterwards."""
    out = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                _general_path(m)
            torch.manual_seed(0)
            model, opt, step = setup()
            with gradscope.watch(model, opt) as scope:
                for k in range(100):
                    step(k)
            assert not [sub for sub in model.modules()
                        if sub._forward_pre_hooks or sub._forward_hooks]
            d = json.loads(scope.report().trace.to_json())
        out.append(({(r["model"], r["name"]): row(r) for r in d["modules"]},
                    [f["check"] for f in d["findings"]]))
    return out


def _training(model: nn.Module, params=None):
    """``(model, optimizer, step)`` of a plain training loop of ``model`` (for _on_both_paths),
    its optimizer over ``params`` (default: all of the model's)."""
    opt = torch.optim.SGD(params if params is not None else model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def step(k):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, step


def _late(late_model: bool):
    """A layer (``_BranchLate``), or a second model, first run at step 41."""
    model = _net() if late_model else _BranchLate()
    aux = nn.Linear(6, 3)  # a second model, first called at step 41 (late_model)
    opt = torch.optim.SGD(list(model.parameters()) + list(aux.parameters()), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def step(k):
        opt.zero_grad()
        out = model(x)
        if late_model and k >= 40:
            out = out + aux(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return model, opt, step


@pytest.mark.parametrize("late_model", [False, True], ids=["layer", "model"])
def test_a_module_first_run_after_the_warm_up_is_counted(late_model, monkeypatch):
    """While forwards are replayed (light) no global hook runs. A layer of the model never
    called before has a hook of its own (see the next test): counted from its first call. A
    second model first called after the warm-up is told by its parameters' first gradients,
    and the next step is recorded in full (and becomes the replayed pattern): only its first
    call is missing from the counts (60 calls, 37 or 1 of them counted before either)."""
    (fast, _), (slow, _) = _on_both_paths(lambda: _late(late_model), monkeypatch)
    new = ("aux", "") if late_model else ("model", "extra")
    assert slow[new] == 60 and fast[new] == (59 if late_model else 60)
    assert {k: v for k, v in fast.items() if k != new} == \
        {k: v for k, v in slow.items() if k != new}


class _BranchLateUntrained(nn.Module):
    """From its 41st forward on, runs a layer whose parameters do not train (``frozen``: a
    frozen Linear, ``batchnorm`` a frozen BatchNorm1d; ``none`` a Tanh, which has none;
    ``no_grad``: a Linear run under no_grad)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.extra = nn.Tanh() if kind == "none" else \
            nn.BatchNorm1d(8) if kind == "batchnorm" else nn.Linear(8, 8)
        if kind in ("frozen", "batchnorm"):
            self.extra.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.a(x))
        if self.calls > 40:
            if self.kind == "no_grad":
                with torch.no_grad():
                    h = h + self.extra(h)
            else:
                h = self.extra(h)
        return self.b(h)


@pytest.mark.parametrize("kind", ["frozen", "batchnorm", "none", "no_grad"])
def test_a_module_that_trains_nothing_first_run_after_the_warm_up_is_counted(kind,
                                                                             monkeypatch):
    """No gradient tells of such a module: a hook on each module the replays never saw called
    does (none is called, so they cost nothing), and counts every call from the first, with a
    batch norm's batch statistics. Before, its calls were missing until the next periodic full
    step (at 64: 23 of 60 missing). No hook of ours is left on any module."""
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(
        lambda: _training(_BranchLateUntrained(kind)), monkeypatch,
        row=lambda r: (r["calls"], r.get("batch_stats")))
    assert slow[("model", "extra")][0] == 60
    if kind == "batchnorm":
        assert slow[("model", "extra")][1]
    assert fast == slow and fast_checks == slow_checks


def _shared_layer():
    """Two models that share their first layer, both called every step."""
    shared = nn.Linear(6, 8)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(8, 3))
    other = nn.Sequential(shared, nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD([*model.parameters(), *other[2].parameters()], lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def step(k):
        opt.zero_grad()
        (nn.functional.cross_entropy(model(x), y)
         + nn.functional.cross_entropy(other(x), y)).backward()
        opt.step()
    return model, opt, step


def _encoder_also_called():
    """The loop also calls ``model.a`` itself: two roots of one model."""
    model, opt, step = _training(_BranchLateUntrained("none"))
    x = torch.randn(8, 6)

    def both(k):
        step(k)
        model.a(x)
    return model, opt, both


class _ShortBatchBranch(nn.Module):
    """A short batch (every 10th from step 29) runs through a batch norm without parameters."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.small = nn.BatchNorm1d(8, affine=False)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(self.small(h) if x.shape[0] < 8 else h)


def _short_batches():
    model = _ShortBatchBranch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def step(k):
        n = 4 if k % 10 == 9 and k > 20 else 8
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:n]), y[:n]).backward()
        opt.step()
    return model, opt, step


@pytest.mark.parametrize("setup", [_shared_layer, _encoder_also_called, _short_batches],
                         ids=["shared-layer", "encoder-also-called", "short-batch-branch"])
def test_hooks_on_uncalled_modules_count_each_call_once(setup, monkeypatch):
    """Review cases of the hooks on modules not called yet: a layer shared with a model named
    first (it was hooked at every light start under the other model's name: 245 calls of 200,
    and no step went idle), a model with two roots (two hooks on each uncalled layer: 61 of
    60), a layer first run in a forward recorded in full because it matched no pattern (its
    hook stayed, and counted the replays again: 9 of 8 calls and batch statistics)."""
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(
        setup, monkeypatch, row=lambda r: (r["calls"], r.get("batch_stats")))
    assert fast == slow and fast_checks == slow_checks


def test_a_watched_model_can_be_copied_and_saved_after_the_warm_up(tmp_path):
    """copy.deepcopy(model) (best or EMA weights) and torch.save(model) in the loop, after the
    warm-up, when the light forwards' hooks sit on the model and on its uncalled layers: both
    failed on the session's state (a lock; a local function). The copies hold an inert hook
    in place of ours, which changes nothing they compute, and load without gradscope's code."""
    import copy
    import pickle

    torch.manual_seed(0)
    model, opt, step = _training(_BranchLateUntrained("none"))
    x = torch.randn(8, 6)
    with gradscope.watch(model, opt):
        for k in range(20):
            step(k)
        assert model._forward_pre_hooks and model.extra._forward_pre_hooks  # (light by now)
        twin = copy.deepcopy(model)
        head = copy.deepcopy(model.extra)
        torch.save(model, tmp_path / "model.pt")
        blob = pickle.dumps(model.extra)
    assert b"gradscope" not in blob.replace(b"gradscope.inert_hook", b"")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        for other in (twin, loaded):
            other.calls = model.calls  # (the same branch)
            assert torch.equal(other(x), model(x))
        h = torch.randn(8, 8)
        assert torch.equal(head(h), torch.tanh(h))
        assert torch.equal(pickle.loads(blob)(h), torch.tanh(h))


def _second_model_late():
    """A GAN-like loop: the generator handed to watch with its optimizer, a discriminator with
    its own optimizer (not handed to watch) trained from step 41 on."""
    gen = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
    disc = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.01)
    x = torch.randn(8, 6)

    def step(k):
        opt_g.zero_grad()
        gen(x).pow(2).mean().backward()
        opt_g.step()
        if k >= 40:
            opt_d.zero_grad()
            disc(gen(x).detach()).mean().backward()
            opt_d.step()
    return gen, opt_g, step


def test_a_second_model_with_its_own_optimizer_first_trained_late_is_found(monkeypatch):
    """Neither the model nor its optimizer was handed to watch, and no hook sees its forwards
    after the warm-up: its optimizer's first step over parameters of no known model has the
    next forwards recorded in full, which find it. Only the forward before that first step is
    missing (59 of 60 calls; 49 before, found at the next 64th step only)."""
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(_second_model_late, monkeypatch)
    disc = [key for key in slow if key[0] != "model"]
    assert disc and all(slow[key] == 60 and fast.pop(key) == 59 for key in disc)
    assert fast == {k: v for k, v in slow.items() if k not in disc}
    assert fast_checks == slow_checks


def _head_called_on_its_own():
    """An evaluation head, called from the loop on its own under no_grad from step 31 on."""
    model, opt, step = _training(_BranchLateUntrained("none"))
    head = nn.Linear(8, 2)
    model.head = head

    def both(k):
        step(k)
        if k >= 30:
            with torch.no_grad():
                model.head(torch.randn(4, 8))
    return model, opt, both


def test_an_uncalled_module_first_called_on_its_own_is_counted_without_false_findings(
        monkeypatch):
    """Its hook counts the call and has the forwards after the next step recorded in full
    (which make it a model of its own, then replayed): 70 calls of 70, where none was counted
    before the next 64th step (60 of 70). Recorded in full from inside the call, its own end
    and its submodules' calls were seen without its start: one call too many, and a false
    forward-called-directly."""
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(_head_called_on_its_own,
                                                              monkeypatch)
    assert slow[("model", "head")] == 70
    assert fast == slow and fast_checks == slow_checks


def test_an_optimizer_rebuilt_each_step_keeps_the_light_forwards(monkeypatch):
    """An optimizer built anew at every step (over the model and a learned loss weight) is no
    second model to look for: it did not have every following forward recorded in full."""
    asked = []
    original = lightmode.LightForwards.record_next
    monkeypatch.setattr(lightmode.LightForwards, "record_next",
                        lambda self: (asked.append(self.active), original(self)))
    torch.manual_seed(0)
    model = _net()
    weight = nn.Parameter(torch.zeros(()))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with gradscope.watch(model, torch.optim.SGD([*model.parameters(), weight], lr=0.1)):
        for _ in range(40):
            opt = torch.optim.SGD([*model.parameters(), weight], lr=0.1)
            opt.zero_grad()
            (nn.functional.cross_entropy(model(x), y) * torch.exp(-weight) + weight).backward()
            opt.step()
    assert not any(asked)


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_submodule_can_be_scripted_after_the_warm_up():
    """torch.jit.script(model.enc) in the loop: a ModuleList (never called itself) held one
    of the hooks on uncalled modules, and TorchScript failed on it. Hooks in a module's dicts
    have a __name__, as functions do."""
    torch.manual_seed(0)
    model = nn.Sequential(_Encoder(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with gradscope.watch(model, opt):
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        assert [h.__name__ for h in model._forward_pre_hooks.values()] == ["_pre"]
        scripted = torch.jit.script(model[0])
    assert torch.equal(scripted(x), model[0](x))


def _two_optimizers():
    model = _BranchLate()
    first = torch.optim.SGD([*model.a.parameters(), *model.extra.parameters()], lr=0.1)
    second = torch.optim.SGD(model.b.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def step(k):
        first.zero_grad()
        second.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        first.step()
        second.step()
    return model, first, step


def test_a_late_layer_is_found_with_two_optimizers_stepped_one_after_the_other(monkeypatch):
    """Two optimizer steps per iteration: a window of full recording stays open until a forward
    ran in it (it closed at the second step before: the layer's first call was counted, and
    then none, the replayed pattern being the one without it)."""
    (fast, _), (slow, _) = _on_both_paths(_two_optimizers, monkeypatch)
    assert slow[("model", "extra")] == 60
    assert fast == slow


class _Hooked(nn.Module):
    """Calls ``hook(n)`` in the middle of its n-th forward; ``extra`` from its 62nd forward on
    and a parameterless ``act`` from its 64th (review cases of the light forwards)."""

    def __init__(self, hook):
        super().__init__()
        self.a, self.extra, self.b, self.act = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3), \
            nn.Tanh()
        self.inner = nn.Linear(8, 8)  # (only in _backward_inside_from_70)
        self.hook, self.calls = hook, 0

    def forward(self, x):
        self.calls += 1
        h = torch.relu(self.a(x))
        self.hook(self, self.calls, h)
        if self.calls >= 62:
            h = self.extra(h)
        if self.calls >= 64:
            h = self.act(h)
        return self.b(h)


def _other_thread_at_64(model, calls, h):
    if calls == 64:  # another thread runs modules while this forward is recorded in full
        other = model.__dict__.setdefault("other", nn.Sequential(nn.Linear(6, 6)))
        t = threading.Thread(target=lambda: other(torch.randn(2, 6)))
        t.start()
        t.join()


def _backward_inside_from_70(model, calls, h):
    if calls >= 70:  # a backward inside the forward (an inner adaptation step), first
        # reaching a parameter inside a replayed forward
        model.inner(h.detach()).pow(2).sum().backward()


@pytest.mark.parametrize("hook", [lambda m, c, h: None, _other_thread_at_64,
                                  _backward_inside_from_70],
                         ids=["late-layers", "other-thread", "backward-in-forward"])
def test_late_layers_threads_and_inner_backwards_under_light_forwards(hook, monkeypatch):
    """Each count as on the general path, the late layers' first calls included (the one
    first called at 62 inside a replayed forward, the parameterless one at the periodic full
    step, 64); no pattern takes another thread's calls; no finding of our own making."""
    out = _on_both_paths(lambda: _training(_Hooked(hook)), monkeypatch)
    (fast_calls, fast_found), (slow_calls, slow_found) = out
    assert slow_calls[("model", "extra")] == 39 and slow_calls[("model", "act")] == 37
    if hook is _backward_inside_from_70:
        assert slow_calls[("model", "inner")] == 31
    assert fast_calls == slow_calls and fast_found == slow_found


class _DictNet(nn.Module):
    """Takes a dict batch, as Hugging Face-style models do."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, batch):
        return self.out(torch.relu(self.bn(self.fc(batch["x"]))))


class _BuildsLate(nn.Module):
    """Builds a layer inside forward from step 40 on (layer-in-forward)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out, self.step = nn.Linear(6, 8), nn.Linear(8, 3), 0

    def forward(self, x):
        self.step += 1
        h = self.fc(x)
        if self.step > 40:
            h = nn.Linear(8, 8)(h)
        return self.out(h)


def _custom_report(model, batches, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(steady.SteadySteps, "learn", lambda self, *a: None)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt) as scope:
            for inputs, y in batches:
                opt.zero_grad()
                nn.functional.cross_entropy(model(inputs), y).backward()
                opt.step()
        d = json.loads(scope.report().trace.to_json())
        d["idle_steps"] = scope._capture.steady.idle_steps
        return d


def test_dict_batches_with_a_short_last_batch(monkeypatch):
    """drop_last=False: each epoch of 20 batches of 8 ends with one of 2, inside idle runs."""
    torch.manual_seed(0)
    batches = []
    for epoch in range(4):
        for b in range(21):
            n = 2 if b == 20 else 8
            batches.append(({"x": torch.randn(n, 6)}, torch.randint(0, 3, (n,))))
    reports = []
    for fast in (True, False):
        torch.manual_seed(0)
        reports.append(_custom_report(_DictNet(), batches, fast, monkeypatch))
    fast, slow = reports
    assert fast["idle_steps"] > 30 and slow["idle_steps"] == 0
    assert fast["modules"] == slow["modules"] and fast["findings"] == slow["findings"]
    assert "batchnorm-small-batch" in [f["check"] for f in fast["findings"]]


def test_a_layer_built_in_forward_from_an_idle_step_is_counted(monkeypatch):
    torch.manual_seed(0)
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(70)]
    reports = []
    for fast in (True, False):
        torch.manual_seed(0)
        reports.append(_custom_report(_BuildsLate(), batches, fast, monkeypatch))
    fast, slow = reports
    assert fast["constructions"] == slow["constructions"] and fast["modules"] == slow["modules"]
    found = [f for f in fast["findings"] if f["check"] == "layer-in-forward"]
    assert found and found[0]["data"]["count"] == 30, found


def test_a_nested_tensor_input_does_not_break_training(monkeypatch):
    """A forward whose input has no single shape: recorded in full, never raised into."""
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, nt):
            return self.fc(torch.stack([t.mean(0) for t in nt.unbind()]))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        nt = torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)])
    model = Pool()
    batches = [(nt, torch.tensor([0, 2]))] * 20
    report = _custom_report(model, batches, True, monkeypatch)
    assert report["optimizer_steps"] == 20 and not any(
        "could not record" in n for n in report["notes"])


class _Interruptible(nn.Module):
    """A block whose forward raises KeyboardInterrupt (a Ctrl-C) when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.fire = False
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        if self.fire:
            self.fire = False
            raise KeyboardInterrupt
        return self.lin(x)


@pytest.mark.parametrize("wrapped", [False, True], ids=["model", "in-DataParallel"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_a_forward_interrupted_by_ctrl_c_and_caught_leaves_nothing_behind(fast, wrapped,
                                                                         monkeypatch, no_leaks):
    # torch runs always-called post hooks on Exceptions only: a Ctrl-C caught by the program
    # (a notebook, a loop that stops an epoch early) used to leave the interrupted forward on
    # the module stack, and every later forward looked nested in it: 145 of 200 forwards
    # counted, 4 forward events instead of 201, no mode checks. Interrupted in the warm-up, in
    # a light (replayed) forward and in the periodic full step.
    interrupted = (3, 40, 63)
    with monkeypatch.context() as m:
        if not fast:
            _general_path(m)
        torch.manual_seed(0)
        inner = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), _Interruptible(), nn.Linear(6, 3))
        # (a wrapper is the model's call: "<DataParallel>", one per forward; on a CPU it
        # calls the model itself)
        model = nn.DataParallel(inner) if wrapped else inner
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        with gradscope.watch(model, opt) as scope:
            for k in range(100):
                opt.zero_grad()
                if k in interrupted:
                    inner[2].fire = True
                    with pytest.raises(KeyboardInterrupt):
                        model(x)
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            model.eval()  # a forward after all that is still seen as the model's own
            with torch.no_grad():
                model(x)
        d = json.loads(scope.report().trace.to_json())
    calls = {r["name"]: r["calls"] for r in d["modules"]}
    # every forward that returned is counted; the interrupted ones up to where they stopped
    assert calls[""] == calls["2"] == calls["2.lin"] == calls["3"] == 101
    assert calls.get("<DataParallel>", 101) == 101
    assert 101 <= calls["0"] == calls["1"] <= 101 + len(interrupted)
    forwards = [e for e in d["events"] if e["kind"] == "forward"]
    assert len(forwards) == 101 + len(interrupted)
    assert forwards[-1]["training"] is False and forwards[-1]["grad"] is False
    assert not d["findings"]


def test_what_an_interrupted_forward_kept_alive_is_let_go_at_the_next_call(no_leaks):
    # The interrupted forward's call frame is kept to tell it was unwound; the frames the
    # Ctrl-C unwound (and their locals: a batch, a dataset) go with it at the model's next call.
    class Data:
        pass

    model = nn.Sequential(nn.Linear(6, 6), _Interruptible(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    refs = []

    def epoch():
        data = Data()
        refs.append(weakref.ref(data))
        model[1].fire = True
        try:
            model(x)
        except KeyboardInterrupt:
            return  # stop this epoch early

    with gradscope.watch(model, opt):
        for k in range(12):  # the warm-up, then light forwards
            opt.zero_grad()
            if k in (3, 10):
                epoch()
            nn.functional.cross_entropy(model(x), y).backward()
            gc.collect()
            assert all(r() is None for r in refs), k
            opt.step()


class _Recursive(nn.Module):
    """A model that calls itself (tree- and depth-recursive nets): three calls per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x, depth=2):
        if depth == 0:
            return self.head(x)
        return self(torch.relu(self.lin(x)), depth - 1)


def test_a_model_that_calls_itself_is_counted_as_on_the_general_path(monkeypatch):
    """The model's innermost call returning ended the recorded (or replayed) forward: the
    pattern held one call of the model per forward instead of three (118 of 300 counted)."""
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(lambda: _training(_Recursive()), monkeypatch)
    assert slow[("model", "")] == 300 and slow[("model", "lin")] == 200
    assert fast == slow and fast_checks == slow_checks


class _StepInForward(nn.Module):
    """Trains an auxiliary head inside its forward (an inner optimizer step, as in
    meta-learning inner loops or a critic updated in the forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 1)
        self.inner = torch.optim.SGD(self.aux.parameters(), lr=0.01)

    def forward(self, x):
        h = self.a(x)
        self.inner.zero_grad()
        self.aux(h.detach()).pow(2).mean().backward()
        self.inner.step()
        return self.b(torch.relu(h))


def _step_in_forward():
    model = _StepInForward()
    return _training(model, [*model.a.parameters(), *model.b.parameters()])


def test_an_optimizer_step_inside_a_forward_switches_no_hooks_halfway(monkeypatch):
    """The light forwards' hook switches at an optimizer step (after the warm-up, around the
    periodic full steps) happened inside the forward: the global hooks came in halfway, and
    the rest of the forward looked like calls of its parts from outside (3 forwards too many,
    a false forward-called-directly finding). They wait for the forward to end now."""
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(_step_in_forward, monkeypatch)
    assert slow[("model", "")] == slow[("model", "b")] == 100
    assert fast == slow
    assert "forward-called-directly" not in fast_checks and fast_checks == slow_checks


class _CatchesCtrlC(nn.Module):
    """Catches a Ctrl-C of one of its parts inside its own forward and goes on without it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.f = _Interruptible()
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        try:
            h = self.f(h)
        except KeyboardInterrupt:
            pass
        return self.b(h)


def test_a_forward_that_caught_a_ctrl_c_inside_is_no_pattern_to_replay(monkeypatch):
    """Interrupted at step 63, the periodic full step, whose recording becomes the pattern the
    next steps replay: that forward lacks f's calls, and f was counted 62 times of 98."""
    def setup():
        model, opt, train = _training(_CatchesCtrlC())

        def step(k):
            model.f.fire = k in (5, 63)
            train(k)
        return model, opt, step
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(setup, monkeypatch)
    assert slow[("model", "f")] == slow[("model", "f.lin")] == 98
    assert fast == slow and fast_checks == slow_checks


class _RecursiveCatches(_Recursive):
    """Calls itself, and goes on when its innermost call is cut short by a Ctrl-C."""

    fire = False

    def forward(self, x, depth=2):
        if depth == 0:
            if self.fire:
                self.fire = False
                raise KeyboardInterrupt
            return self.head(x)
        try:
            return self(torch.relu(self.lin(x)), depth - 1)
        except KeyboardInterrupt:
            return self.head(x)


def test_a_model_that_calls_itself_and_catches_a_ctrl_c_of_its_inner_call(monkeypatch):
    """The cut-short inner call left its depth: the outermost return was taken for an inner
    one, and the whole replayed forward went uncounted (3 calls lost each time). A replay still
    counts the cut-short call (it cannot see it), so at most one call too many each time."""
    def setup():
        model, opt, train = _training(_RecursiveCatches())

        def step(k):
            model.fire = k in (20, 40)
            train(k)
        return model, opt, step
    (fast, fast_checks), (slow, slow_checks) = _on_both_paths(setup, monkeypatch)
    assert slow[("model", "")] == 298
    assert 0 <= fast[("model", "")] - slow[("model", "")] <= 2 and fast_checks == slow_checks
