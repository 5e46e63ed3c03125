"""The module hooks' fast path (a named submodule inside a running forward) records exactly what
the full hooks record: the same trace with the fast path off (the benchmark's self-timing mode
sends every call through the full hooks) must give the same JSON."""
import json

import pytest
import torch

import gradscope
from gradscope.tracing import selftime

from models import zoo


def _json(report) -> dict:
    data = json.loads(report.to_json())
    data.get("run", {}).pop("wall_seconds", None)
    return data


def _traced(model, inputs, slow: bool):
    torch.manual_seed(0)
    if slow:
        selftime.reset()  # every hook call then goes through the full hooks (and is timed)
    try:
        return _json(gradscope.trace(model, *inputs))
    finally:
        selftime.stop()


@pytest.mark.parametrize("name", [name for name, _, _ in zoo()])
def test_fast_path_records_what_the_full_hooks_record(name):
    model, inputs = {n: (m, i) for n, m, i in zoo()}[name]
    assert _traced(model, inputs, slow=False) == _traced(model, inputs, slow=True)


def test_fast_path_over_several_watched_steps():
    def run(slow: bool) -> dict:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                                    torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 3)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if slow:
            selftime.reset()
        try:
            with gradscope.watch(model, opt) as scope:
                for _ in range(5):
                    opt.zero_grad()
                    model(torch.randn(16, 6)).pow(2).mean().backward()
                    opt.step()
        finally:
            selftime.stop()
        return _json(scope.report())
    assert run(slow=False) == run(slow=True)
