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
from gradscope.tracing import lightmode, uniform

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


LOOPS = [_plain, _keep_grads, _accumulate, _forgets_zero_grad_sometimes, _shapes_change,
         _eval_forward_between, _first_layer_frozen_late]


def _report(loop, fast: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(lightmode.LightForwards, "start", lambda self: None)
            m.setattr(uniform.UniformSteps, "start", lambda self: None)
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        with gradscope.watch(model, opt) as scope:
            for k in range(STEPS):
                loop(model, opt, x, y, k)
        d = json.loads(scope.report().trace.to_json())
        return d, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("loop", LOOPS, ids=[f.__name__.strip("_") for f in LOOPS])
def test_fast_paths_record_what_the_general_paths_record(loop, monkeypatch, no_leaks):
    fast, fast_params = _report(loop, True, monkeypatch)
    slow, slow_params = _report(loop, False, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(fast_params, slow_params))
    for key in ("findings", "accumulation", "modules", "events", "gradients", "parameters",
                "notes", "backward_calls", "optimizer_steps"):
        assert fast[key] == slow[key], key
    assert fast["graph"] == slow["graph"]


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
