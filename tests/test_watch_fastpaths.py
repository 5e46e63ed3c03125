"""The watch session's fast paths must record what the general paths record.

After its first steps a watch session replays recorded forwards instead of hooking every module
call (``lightmode``) and keeps the per-parameter counts of a uniform loop once (``uniform``).
Each loop below runs twice, with the fast paths and with them switched off, and the reports must
be equal: same findings, same accumulation records, modules table, events and norms.
"""
import json

import pytest
import torch
from torch import nn

import gradscope
from gradscope.tracing import lightmode, steady, uniform

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


# Bugs that start while the session is idle (steady.py: steps 11-31 and 34-63 here): each is
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


LATE_BUGS = {_stops_zero_grad_late: "missing-zero-grad",
             _evaluates_in_train_mode_late: "train-mode-eval",
             _clips_after_step_late: "clip-grad-order", _loss_goes_nan_late: "nonfinite-loss"}
LOOPS = [_plain, _keep_grads, _accumulate, _forgets_zero_grad_sometimes, _shapes_change,
         _eval_forward_between, _first_layer_frozen_late, _bad_batch_skipped_late,
         _forward_raises_late, *LATE_BUGS]


def _report(loop, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(lightmode.LightForwards, "start", lambda self: None)
            m.setattr(uniform.UniformSteps, "start", lambda self: None)
            m.setattr(steady.SteadySteps, "learn", lambda self, *a: None)
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
    for key in ("accumulation", "modules", "events", "parameters",
                "notes", "backward_calls", "optimizer_steps"):
        assert fast[key] == slow[key], key
    # Equal findings; but NaN gradients are seen at the next step that reads the norms, which
    # idle steps make rarer: that finding names other steps.
    assert [f for f in fast["findings"] if f["check"] != "nonfinite-grad"] == \
        [f for f in slow["findings"] if f["check"] != "nonfinite-grad"]
    assert [f["check"] for f in fast["findings"]] == [f["check"] for f in slow["findings"]]
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
        assert first["backward"] == 51 and first["location"].endswith("test_watch_fastpaths.py:28")


def test_idle_steps_engage_on_a_steady_loop(monkeypatch):
    report, _ = _report(_plain, True, monkeypatch)
    # 80 steps: idle from the second step that repeats the one before, up to each multiple of
    # 32, the warm-up and the periodic full steps excepted
    assert 55 <= report["idle_steps"] <= 68, report["idle_steps"]
    slow, _ = _report(_plain, False, monkeypatch)
    assert slow["idle_steps"] == 0
