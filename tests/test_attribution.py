"""Module attribution: each op belongs to the innermost module whose forward created it."""
import torch
from torch import nn

import gradscope
from gradscope.tracing.modules import flatten_ranges

from models import CNN, TiedLM, TransformerBlock, TwoHeads


def _ops_by_module(report):
    out = {}
    for n in report.graph.nodes:
        if n.leaf is None:
            out.setdefault(n.module, set()).add(n.op)
    return out


def test_nested_modules_own_their_ops():
    report = gradscope.trace(CNN(), torch.randn(2, 3, 16, 16))
    ops = _ops_by_module(report)
    assert ops["features.0"] == {"ConvolutionBackward0"}
    assert ops["features.1"] == {"NativeBatchNormBackward0"}
    assert "ReluBackward0" in ops["features.2"]
    assert "MaxPool2DWithIndicesBackward0" in ops["features.3"]
    assert ops["head"] >= {"AddmmBackward0"}
    # flatten runs in CNN.forward itself: the model's own ops have module ""
    assert "ViewBackward0" in ops[""] or "ReshapeAliasBackward0" in ops[""] or ops[""]
    # the loss gradscope adds (sum) is outside every module
    assert report.graph.nodes[0].module is None and report.graph.nodes[0].model is None


def test_parameters_belong_to_their_module_and_model():
    report = gradscope.trace(TransformerBlock(), torch.randn(2, 3, 16))
    leaves = {n.param: n for n in report.graph.nodes if n.param}
    assert leaves["attn.qkv.weight"].module == "attn.qkv"
    assert leaves["attn.qkv.weight"].model == "TransformerBlock"
    ops = _ops_by_module(report)
    assert "SoftmaxBackward0" in ops["attn"]       # functional softmax inside Attention.forward
    assert "AddmmBackward0" in ops["mlp.0"] or "MmBackward0" in ops["mlp.0"] or ops["mlp.0"]
    assert "NativeLayerNormBackward0" in ops["ln1"]


def test_tied_weight_is_one_leaf_named_once():
    report = gradscope.trace(TiedLM(), torch.randint(0, 30, (2, 6)))
    tied = [n for n in report.graph.nodes if n.param in ("tok.weight", "lm_head.weight")]
    assert len(tied) == 1 and tied[0].param == "tok.weight"


def test_shared_module_called_twice_owns_both_calls():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    report = gradscope.trace(Shared(), torch.randn(2, 4))
    addmm = [n for n in report.graph.nodes if n.op == "AddmmBackward0"]
    assert len(addmm) == 2 and {n.module for n in addmm} == {"fc"}
    tanh = next(n for n in report.graph.nodes if n.op == "TanhBackward0")
    assert tanh.module == ""
    fc = next(m for m in report.trace.modules if m["name"] == "fc")
    assert fc["calls"] == 2


def test_modules_built_in_forward_are_named_unregistered():
    class Builder(nn.Module):
        def forward(self, x):
            return nn.Linear(4, 2)(x)

    report = gradscope.trace(Builder(), torch.randn(3, 4))
    rows = [m for m in report.trace.modules if not m["registered"]]
    assert [(m["name"], m["type"]) for m in rows] == [("<Linear#0>", "Linear")]
    assert rows[0]["location"].endswith("test_attribution.py:" + str(
        test_modules_built_in_forward_are_named_unregistered.__code__.co_firstlineno + 3))
    leaves = [n for n in report.graph.nodes if n.op == "AccumulateGrad"]
    assert leaves and all(n.leaf == "unregistered" for n in leaves)
    assert {n.module for n in report.graph.nodes if n.op == "AddmmBackward0"} == {"<Linear#0>"}


def test_tuple_outputs_and_a_forward_that_raises_keep_the_stack_balanced(no_leaks):
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

        def forward(self, x):
            self.inner(x)
            raise ValueError("boom")

    try:
        gradscope.trace(Boom(), torch.randn(1, 2))
    except gradscope.TracedProgramError as e:
        assert "ValueError: boom" in str(e)
        assert e.report.trace.run["status"] == "error"
        inner = next(m for m in e.report.trace.modules if m["name"] == "inner")
        assert inner["calls"] == 1 and inner["output"] == "(1, 2)"
    else:
        raise AssertionError("expected TracedProgramError")
    report = gradscope.trace(TwoHeads(), torch.randn(3, 6))
    assert {n.module for n in report.graph.nodes if n.op == "AddmmBackward0"} == {"trunk", "a", "b"}


def test_flatten_ranges_nested_and_disjoint():
    ranges = [(0, 10, "m", ""), (2, 5, "m", "a"), (3, 4, "m", "a.x"), (6, 8, "m", "b"),
              (12, 14, "n", "")]
    bounds, owners = flatten_ranges(ranges)

    def owner(seq):
        import bisect
        i = bisect.bisect_right(bounds, seq) - 1
        return owners[i] if i >= 0 else None

    expect = {0: "", 1: "", 2: "a", 3: "a.x", 4: "a", 5: "", 6: "b", 7: "b", 8: "", 9: "",
              10: None, 11: None, 12: "", 13: "", 14: None}
    for seq, name in expect.items():
        got = owner(seq)
        assert (got[1] if got else None) == name, seq
    assert owner(12)[0] == "n"
