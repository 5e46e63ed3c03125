"""The module hooks' fast path (a named submodule inside a running forward) records exactly what
the full hooks record: the same trace with the fast path off (``FULL_HOOKS_ONLY`` sends every
call through the full hooks) must give the same JSON. The watch benchmark's own-time counter
counts the fast path as it runs."""
import json

import pytest
import torch

import gradscope
from gradscope.tracing import modules, selftime

from models import zoo


def _json(report) -> dict:
    data = json.loads(report.to_json())
    data.get("run", {}).pop("wall_seconds", None)
    return data


def _traced(model, inputs, monkeypatch, full: bool):
    torch.manual_seed(0)
    monkeypatch.setattr(modules, "FULL_HOOKS_ONLY", full)
    return _json(gradscope.trace(model, *inputs))


@pytest.mark.parametrize("name", [name for name, _, _ in zoo()])
def test_fast_path_records_what_the_full_hooks_record(name, monkeypatch):
    model, inputs = {n: (m, i) for n, m, i in zoo()}[name]
    assert _traced(model, inputs, monkeypatch, full=False) == \
        _traced(model, inputs, monkeypatch, full=True)


def _watched(monkeypatch, full: bool = False, counted: bool = False) -> tuple:
    torch.manual_seed(0)
    monkeypatch.setattr(modules, "FULL_HOOKS_ONLY", full)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if counted:
        selftime.reset()
    try:
        with gradscope.watch(model, opt) as scope:
            for _ in range(5):
                opt.zero_grad()
                model(torch.randn(16, 6)).pow(2).mean().backward()
                opt.step()
    finally:
        selftime.stop()
    return _json(scope.report()), selftime.totals()


def test_fast_path_over_several_watched_steps(monkeypatch):
    assert _watched(monkeypatch)[0] == _watched(monkeypatch, full=True)[0]


def test_the_benchmarks_counter_counts_the_fast_path_and_records_the_same(monkeypatch):
    """Counting our own time (bench_watch) must not change the path measured: each module call
    of the first steps, recorded in full, is one counted entry of the fast hooks."""
    plain, _ = _watched(monkeypatch)
    counted, (ns, entries) = _watched(monkeypatch, counted=True)
    assert counted == plain
    assert ns > 0 and entries >= 2 * 5 * 4  # pre and post of 4 module calls a step at least
    calls = []  # (a spy of ours is a user frame: the events' locations change, not compared)
    monkeypatch.setattr(modules.ModuleTracker, "_pre_hook",
                        _spy(modules.ModuleTracker._pre_hook, calls))
    _watched(monkeypatch, counted=True)
    # the full pre hook: the model's own calls and batch norms, not the plain layers' calls
    # after the first step (all 30 module calls of the 5 steps when counting skipped the fast
    # path)
    assert calls.count("ReLU") <= 1 and calls.count("Linear") <= 2 and len(calls) < 20


def _spy(fn, calls):
    def spied(self, module, args):
        calls.append(type(module).__name__)
        return fn(self, module, args)
    return spied
