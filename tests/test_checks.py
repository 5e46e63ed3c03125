"""Each check as a pure function on a hand-built Trace (no torch), plus no false alarms on the
clean models real users write."""
import pytest
import torch
from click.testing import CliRunner
from torch import nn
import torch.nn.functional as F

import gradscope
from gradscope.checks import all_checks, run_checks, select_checks
from gradscope.graph import Edge, Graph, Node
from gradscope.tracedata import Trace
from gradscope_cli.main import main

from models import zoo

IDS = ["layer-in-forward", "unregistered-parameter", "plain-container", "unregistered-tensor",
       "attribute-keeps-graph", "graph-kept-alive",
       "unused-parameter", "graph-cut", "param-not-in-optimizer", "tied-weights",
       "missing-zero-grad", "zero-grad-before-step", "dead-training",
       "grad-accumulation", "clip-grad-order", "scheduler-before-step", "optimizer-recreated",
       "train-mode-eval", "eval-mode-train", "nonfinite-grad",
       "nonfinite-loss", "vanishing-grad", "exploding-grad", "rank-divergence",
       "double-softmax", "softmax-batch-dim", "dropout-ignores-eval", "loss-broadcast",
       "builtin-sum", "device-copy", "device-mismatch", "inplace-modified",
       "bias-before-norm", "batchnorm-small-batch", "forward-called-directly"]


def _check(check_id):
    return select_checks(only=[check_id])


def _param(name, model="m", **kw):
    row = {"model": model, "name": name, "module": name.rpartition(".")[0], "shape": [4, 4],
           "numel": 16, "requires_grad": True, "in_graph": True, "in_optimizer": True,
           "grad_seen": True, "aliases": []}
    row.update(kw)
    return row


def _module(name, model="m", **kw):
    row = {"model": model, "name": name, "type": "Linear", "registered": True, "calls": 1,
           "output": None, "parameters": 0, "location": None, "init_typo": None}
    row.update(kw)
    return row


def test_registry_ids_are_the_public_ones():
    assert [c.id for c in all_checks()] == IDS
    for c in all_checks():
        assert c.severity in ("error", "warning", "info") and c.summary


def test_layer_in_forward_unit():
    graph = Graph([Node("n0", "AddmmBackward0", "", "m"),
                   Node("n1", "AccumulateGrad", leaf="unregistered", shape=(2, 3))],
                  [Edge("n1", "n0")], ["n0"])
    trace = Trace(graph=graph, modules=[_module("", type="Net", calls=4, init_typo="__int__")],
                  constructions=[{"type": "Linear", "location": "net.py:7", "model": "m",
                                  "module": "", "count": 8, "params": {"weight": [2, 3]},
                                  "assigned": None}],
                  leaves=[{"node": "n1", "origin": "built-in-forward", "construction": 0,
                           "name": "weight"}])
    [f] = run_checks(trace, _check("layer-in-forward"))
    assert (f.severity, f.location, f.module) == ("error", "net.py:7", "m")
    assert "2 times per forward" in f.message and "8 times in this run" in f.message
    assert "Net defines __int__, not __init__" in f.message
    assert f.nodes == ["n1", "n0"] and f.data["parameters"] == 6
    # built once and assigned onto the model: the milder case
    trace.constructions[0].update(count=1, assigned="m.head")
    [f] = run_checks(trace, _check("layer-in-forward"))
    assert f.severity == "warning" and "assigned as m.head" in f.message
    # a parameter-free module rebuilt every call: info
    trace.constructions = []
    trace.modules.append(_module("<ReLU#0>", type="ReLU", registered=False, rebuilt=True,
                                 has_parameters=False, location="net.py:9", parameters=None))
    [f] = run_checks(trace, _check("layer-in-forward"))
    assert f.severity == "info" and "ReLU" in f.message
    # ... unless an installed library does it (transformers builds CrossEntropyLoss() so)
    trace.modules[-1]["location"] = "/usr/lib/python3/dist-packages/transformers/bert.py:9"
    assert run_checks(trace, _check("layer-in-forward")) == []
    trace.modules[-1]["location"] = "net.py:9"
    trace.modules[-1]["rebuilt"] = False  # one shared object, called every time: fine
    assert run_checks(trace, _check("layer-in-forward")) == []


def test_unregistered_parameter_unit():
    graph = Graph([Node("n0", "MulBackward0", "", "m"),
                   Node("n1", "AccumulateGrad", leaf="unregistered", shape=(3,)),
                   Node("n2", "AccumulateGrad", leaf="unregistered", shape=(5,)),
                   Node("n3", "AccumulateGrad", leaf="input", shape=(5,))],
                  [Edge("n1", "n0"), Edge("n2", "n0"), Edge("n3", "n0")], ["n0"])
    trace = Trace(graph=graph, leaves=[
        {"node": "n1", "origin": "attribute", "name": "scales[0]"},
        {"node": "n2", "origin": "unknown", "name": None}],
        attributes=[{"kind": "container", "model": "m", "module": "", "attr": "scales",
                     "container": "list", "modules": [], "parameters": 1, "tensors": 0,
                     "hidden_parameters": 3, "location": "net.py:4", "type": "Net"}])
    found = run_checks(trace, _check("unregistered-parameter"))
    assert len(found) == 2
    assert {f.severity for f in found} == {"error", "info"}  # attribute: error; unknown: info
    named = next(f for f in found if f.data["names"] == ["scales[0]"])
    assert named.location == "net.py:4"
    assert "nn.ParameterList" in named.hint
    anonymous = next(f for f in found if f.data["names"] == [None])
    assert "shape 5" in anonymous.message and anonymous.nodes == ["n2", "n0"]


def test_plain_container_unit():
    rec = {"kind": "container", "model": "m", "module": "enc", "attr": "layers", "type": "Enc",
           "container": "list", "modules": [{"path": "layers[0]", "type": "Linear",
                                             "registered": False}],
           "parameters": 0, "tensors": 0, "hidden_parameters": 20, "location": "enc.py:3"}
    trace = Trace(attributes=[rec])
    [f] = run_checks(trace, _check("plain-container"))
    assert (f.severity, f.module, f.location) == ("error", "m.enc", "enc.py:3")
    assert "nn.ModuleList" in f.hint
    rec.update(hidden_parameters=0, modules=[{"path": "acts[0]", "type": "Dropout",
                                             "registered": False}])
    [f] = run_checks(trace, _check("plain-container"))
    assert f.severity == "warning" and "eval" in f.message
    rec["modules"][0]["registered"] = True  # an alias of registered modules: silent
    assert run_checks(trace, _check("plain-container")) == []


def test_unregistered_tensor_unit():
    def rec(module):
        return {"kind": "tensor", "model": "m", "module": module, "attr": "moving_mean",
                "type": "BN", "shape": [1, 4], "dtype": "float32", "device": "cpu",
                "requires_grad": False, "is_leaf": True, "location": "bn.py:12"}
    trace = Trace(attributes=[rec("bn1"), rec("bn2")])
    [f] = run_checks(trace, _check("unregistered-tensor"))
    assert f.data["paths"] == ["m.bn1.moving_mean", "m.bn2.moving_mean"]
    assert "register_buffer('moving_mean'" in f.hint and f.location == "bn.py:12"
    assert "state_dict()" in f.message and ".to(device)" in f.message


def test_attribute_keeps_graph_unit():
    def rec(module, attr, history, kind="tensor"):
        return {"kind": kind, "model": "m", "module": module, "attr": attr, "type": "BN",
                "shape": [1, 4], "dtype": "float32", "device": "cpu",
                "requires_grad": history > 0, "is_leaf": history == 0, "history": history,
                "backwards_crossed": 5 if history else 0,
                "grad_fn": "AddBackward0" if history else None, "location": "bn.py:12"}
    only = _check("attribute-keeps-graph")
    assert run_checks(Trace(attributes=[rec("bn1", "moving_mean", 0)]), only) == []
    trace = Trace(attributes=[rec("bn1", "moving_mean", 40), rec("bn1", "moving_var", 0),
                              rec("ema", "shadow", 90, kind="buffer")], optimizer_steps=6)
    [f] = run_checks(trace, only)
    assert f.data["paths"] == ["m.bn1.moving_mean", "m.ema.shadow"]  # the history-free one not
    assert "90 autograd nodes, built across 6 backward calls" in f.message
    # one step's history (kept for the loss, or for a plot): not carried over, silent
    one_step = {**rec("head", "aux_logits", 12), "backwards_crossed": 0}
    assert run_checks(Trace(attributes=[one_step]), only) == []
    assert "grad_fn=AddBackward0" in f.message and ".detach()" in f.hint
    # unregistered-tensor must not call history a tensor to train
    [g] = run_checks(Trace(attributes=[rec("bn1", "moving_mean", 40)]),
                     _check("unregistered-tensor"))
    assert "register_buffer" in g.hint and "nn.Parameter" not in g.hint


def test_unused_parameter_unit():
    trace = Trace(parameters=[_param("a.w"), _param("b.w", grad_seen=False),
                              _param("c.w", grad_seen=False, requires_grad=False)],
                  backward_calls=3)
    [f] = run_checks(trace, _check("unused-parameter"))
    assert f.data["parameters"] == ["b.w"] and f.module == "m.b"
    assert "find_unused_parameters" in f.message
    # a model none of whose parameters trained (a frozen teacher used under no_grad): silent
    trace.parameters = [_param("t.w", model="teacher", grad_seen=False)]
    assert run_checks(trace, _check("unused-parameter")) == []
    trace.parameters = [_param("x.w", grad_seen=None)]  # no backward ran: nothing to say
    assert run_checks(trace, _check("unused-parameter")) == []


def test_param_not_in_optimizer_unit():
    trace = Trace(parameters=[_param("body.w"), _param("head.w", in_optimizer=False)],
                  optimizer_steps=2, events=[{"kind": "step", "index": 1, "location": "t.py:9"}])
    [f] = run_checks(trace, _check("param-not-in-optimizer"))
    assert f.data["parameters"] == ["head.w"] and f.location == "t.py:9"
    assert "add_param_group" in f.hint
    trace.optimizer_steps = 0  # no optimizer stepped: membership unknown, nothing to say
    assert run_checks(trace, _check("param-not-in-optimizer")) == []


def test_tied_weights_unit():
    graph = Graph([Node("n0", "MmBackward0", "", "m"), Node("n1", "MmBackward0", "", "m"),
                   Node("n2", "AccumulateGrad", "emb", "m", param="emb.weight",
                        leaf="parameter")],
                  [Edge("n2", "n0"), Edge("n2", "n1")], ["n0"])
    trace = Trace(graph=graph, parameters=[_param("emb.weight", aliases=["head.weight"])])
    [f] = run_checks(trace, _check("tied-weights"))
    assert f.severity == "info" and f.nodes == ["n2"] and f.data["uses"] == 2
    trace.parameters[0]["aliases"] = []
    [f] = run_checks(trace, _check("tied-weights"))
    assert "used at up to 2 places" in f.message


def test_tied_weights_groups_uses_by_module_and_names_a_model_run_twice():
    """A model called twice before one backward uses every parameter twice: one finding for the
    model, not one per parameter; a layer applied twice is one finding for that layer."""
    nodes = [Node("n0", "AddBackward0", "", "m")]
    edges = []
    params = []
    for i, name in enumerate(["a.weight", "a.bias", "b.weight", "b.bias"]):
        nodes.append(Node(f"p{i}", "AccumulateGrad", name.split(".")[0], "m", param=name,
                          leaf="parameter"))
        edges += [Edge(f"p{i}", "n0"), Edge(f"p{i}", "n0")]
        params.append(_param(name))
    trace = Trace(graph=Graph(nodes, edges, ["n0"]), parameters=params)
    [f] = run_checks(trace, _check("tied-weights"))
    assert f.data["whole_model"] and f.data["uses"] == 2 and len(f.nodes) == 4
    assert "ran 2 times" in f.message
    trace.graph = Graph(nodes, [e for e in edges if e.src in ("p0", "p1")]
                        + [Edge("p2", "n0"), Edge("p3", "n0")], ["n0"])
    [f] = run_checks(trace, _check("tied-weights"))  # only layer a is shared: one finding
    assert f.data["names"] == ["a.weight", "a.bias"] and f.module == "m.a"


# -- real models: no false alarms at warning or above -----------------------------------------
class LazyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.LazyLinear(8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


class CachedRotary(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.register_buffer("cos_cached", torch.cos(torch.arange(16.0)), persistent=False)

    def forward(self, x):
        return self.proj(x) * self.cos_cached[: x.size(-1)]


class HFConfig:
    vocab_size = 20
    hidden_size = 8


class HFPreTrained(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.lm_head = nn.Linear(8, config.vocab_size, bias=False)
        self.post_init()

    def post_init(self):
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids, labels=None):
        h = self.wte(input_ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        logits = self.lm_head(h)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


@pytest.mark.parametrize("name,model,inputs", zoo() + [
    ("lazy", LazyNet(), (torch.randn(3, 5),)),
    ("cached", CachedRotary(), (torch.randn(2, 8),)),
], ids=[z[0] for z in zoo()] + ["lazy", "cached"])
def test_no_false_alarms_on_clean_models(name, model, inputs):
    report = gradscope.trace(model, *inputs)
    assert report.findings_at_or_above("warning") == [], [f.message for f in report.findings]


def test_hugging_face_style_model_is_clean():
    ids = torch.randint(0, 20, (2, 5))
    report = gradscope.trace(HFPreTrained(HFConfig()), ids, labels=ids)
    assert report.findings_at_or_above("warning") == []
    assert [f.check for f in report.findings] == ["tied-weights"]


def test_check_selection_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(main, ["checks"])
    for check_id in IDS:
        assert check_id in r.output
    sample = str(__import__("conftest").REPO) + "/samples/layers_in_forward.py"
    assert runner.invoke(main, ["trace", sample, "--json", "t.json", "-q"]).exit_code == 1
    r = runner.invoke(main, ["trace", sample, "--json", "t.json", "-q",
                             "--disable", "layer-in-forward"])
    assert r.exit_code == 0
    r = runner.invoke(main, ["trace", sample, "--json", "t.json", "-q",
                             "--only", "tied-weights,unused-parameter"])
    assert r.exit_code == 0


# -- issue 4 checks on hand-built traces -------------------------------------------------------
def _step(k, summed, carried=(), calls=1):
    return {"step": k, "optimizer": "SGD", "location": f"t.py:{10 + k}", "parameters": 2,
            "backward_calls": calls, "summed": {str(summed): 2}, "carried": list(carried)}


def test_missing_zero_grad_and_grad_accumulation_units():
    trace = Trace(accumulation=[_step(1, 1), _step(2, 2, ["m.w", "m.b"]), _step(3, 3, ["m.w"])],
                  events=[{"kind": "step", "index": 1, "location": "t.py:11"},
                          {"kind": "backward", "index": 2, "location": "t.py:9"},
                          {"kind": "zero_grad", "owner": "SGD", "location": "t.py:5"}])
    [f] = run_checks(trace, _check("missing-zero-grad"))
    assert f.data["steps"] == [2, 3] and f.data["max_summed"] == 3
    assert "between step 1 (t.py:11) and the next backward (t.py:9)" in f.message
    assert "zero_grad() was called only at t.py:5" in f.message
    assert f.module == "m"  # what holds every carried parameter, not the first one's module
    trace.accumulation[1]["carried"] = ["m.bn1.weight", "m.layer1.0.conv1.weight"]
    trace.accumulation[2]["carried"] = ["m.layer1.0.bn1.bias"]
    assert run_checks(trace, _check("missing-zero-grad"))[0].module == "m"
    trace.accumulation[1]["carried"] = ["m.layer1.0.conv1.weight", "m.layer1.1.conv1.weight"]
    assert run_checks(trace, _check("missing-zero-grad"))[0].module == "m.layer1"
    assert run_checks(trace, _check("grad-accumulation")) == []
    # deliberate accumulation: 4 backward calls per step, reset each time
    trace = Trace(accumulation=[_step(k, 4, calls=4) for k in (1, 2, 3)])
    assert run_checks(trace, _check("missing-zero-grad")) == []
    [f] = run_checks(trace, _check("grad-accumulation"))
    assert f.severity == "info" and f.data["factor"] == 4


def test_mode_checks_units():
    fwd = {"kind": "forward", "model": "m", "training": True, "location": "t.py:3"}
    trace = Trace(events=[dict(fwd, grad=False, train_mode=["drop", "bn"], bn_updated=True)])
    [f] = run_checks(trace, _check("train-mode-eval"))
    assert f.data["bn_updated"] and "BatchNorm running statistics were updated" in f.message
    trace.events[0]["train_mode"] = []  # eval() was called: nothing in training mode
    assert run_checks(trace, _check("train-mode-eval")) == []
    trace = Trace(events=[dict(fwd, grad=True, eval_mode=["drop"]),
                          {"kind": "step", "index": 1, "location": "t.py:4"}])
    [f] = run_checks(trace, _check("eval-mode-train"))
    assert f.data["steps"] == 1 and "m.train()" in f.hint
    # an eval-mode forward that no step follows (evaluation with grad, say) is not training
    trace.events = trace.events[:1]
    assert run_checks(trace, _check("eval-mode-train")) == []


def test_mode_checks_spare_deliberate_recipes_and_count_every_module():
    """Frozen BatchNorm while fine-tuning (model.train(), then the norms put in eval) and
    Dropout(p=0) are not mistakes; a real one names the full number of modules."""
    def net(p):
        return nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(4, 4), nn.Dropout(p))],
                             nn.BatchNorm1d(4))

    model = net(0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            model.train()
            model[-1].eval()  # the recipe: keep pretrained statistics
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        with torch.no_grad():
            net_zero = model  # evaluation without eval(): a real mistake
            net_zero.train()
            net_zero(x)
    checks = {f.check: f for f in scope.report().findings}
    assert "eval-mode-train" not in checks
    assert "and 27 more" in checks["train-mode-eval"].message  # 31 modules, 4 named
    zero = net(0.0)  # dropout that drops nothing, and BatchNorm in eval: nothing obeys .training
    zero[-1].eval()
    with gradscope.watch(zero) as scope:
        with torch.no_grad():
            zero(x)
    assert [f.check for f in scope.report().findings] == []


def test_double_softmax_ignores_a_sigmoid_target_of_bce_with_logits():
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    model = nn.ModuleDict({"a": a, "b": b})
    x = torch.randn(16, 8)
    with gradscope.watch(model) as scope:  # mutual learning: one head's probabilities as target
        F.binary_cross_entropy_with_logits(a(x), torch.sigmoid(b(x))).backward()
    assert scope.report().findings_at_or_above("warning") == []
    with gradscope.watch(model) as scope:  # the mistake: a sigmoid on the input
        F.binary_cross_entropy_with_logits(torch.sigmoid(a(x)), torch.rand(16, 4)).backward()
    assert "double-softmax" in [f.check for f in scope.report().findings]


def test_recurrent_weights_used_per_time_step_are_not_shared_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(8, 16, batch_first=True)
            self.cell = nn.LSTMCell(16, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            out, _ = self.gru(x)
            h = c = torch.zeros(x.shape[0], 16)
            for t in range(out.shape[1]):  # a cell unrolled by hand
                h, c = self.cell(out[:, t], (h, c))
            return self.head(h)

    report = gradscope.trace(Net(), torch.randn(3, 6, 8))
    assert [f.check for f in report.findings] == []


def test_nonfinite_units():
    trace = Trace(accumulation=[_step(1, 1)],
                  gradients={"nonfinite_grads": [{"step": 1, "params": ["m.fc.weight"]}],
                             "nonfinite_losses": [{"backward": 1, "location": "t.py:7"}],
                             "nonfinite_origin": {"node": "n3", "op": "LogBackward0",
                                                  "model": "m", "module": "fc",
                                                  "backward": 1, "location": "t.py:7",
                                                  "arrived_nonfinite": False}})
    [g] = run_checks(trace, _check("nonfinite-grad"))
    assert "produced by LogBackward0" in g.message and g.module == "m.fc" and g.nodes == ["n3"]
    [l] = run_checks(trace, _check("nonfinite-loss"))
    assert l.location == "t.py:7"
    assert run_checks(Trace(), _check("nonfinite-grad")) == []


def _norm_trace(series: dict, steps: int) -> Trace:
    params = [{"model": "m", "name": name, "module": name.rsplit(".", 1)[0], "shape": [4, 4],
               "numel": 16, "requires_grad": True} for name in series]
    return Trace(parameters=params, gradients={
        "norm_steps": list(range(1, steps + 1)),
        "grad_norms": {f"m.{k}": v for k, v in series.items()}})


def test_vanishing_and_exploding_units():
    tiny = {"l0.weight": [1e-9] * 6, "l1.weight": [1e-4] * 6, "l2.weight": [0.5] * 6}
    [f] = run_checks(_norm_trace(tiny, 6), _check("vanishing-grad"))
    assert f.data["first"] == "m.l0.weight"
    assert run_checks(_norm_trace(tiny, 6), _check("exploding-grad")) == []
    assert run_checks(_norm_trace({k: v[:3] for k, v in tiny.items()}, 3),
                      _check("vanishing-grad")) == []  # too short a run to call it
    healthy = {"l0.weight": [0.2] * 6, "l1.weight": [0.3] * 6, "l2.weight": [0.5] * 6}
    assert run_checks(_norm_trace(healthy, 6), _check("vanishing-grad")) == []
    assert run_checks(_norm_trace(healthy, 6), _check("exploding-grad")) == []
    growing = {"l0.weight": [1, 10, 1e2, 1e3, 1e4, 1e5], "l1.weight": [1, 2, 4, 8, 16, 32]}
    [f] = run_checks(_norm_trace(growing, 6), _check("exploding-grad"))
    assert f.data["last_total"] > 1e3 and "grew" in f.message


# -- issue 5 graph-pattern checks ----------------------------------------------------------------
def _chain(*ops, model="m", module="head"):
    nodes = [Node(f"n{i}", op, module, model) for i, op in enumerate(ops)]
    edges = [Edge(f"n{i + 1}", f"n{i}") for i in range(len(ops) - 1)]  # n{i+1} feeds n{i}
    return Trace(graph=Graph(nodes, edges, ["n0"]))


def test_double_softmax_unit():
    only = _check("double-softmax")
    [f] = run_checks(_chain("NllLossBackward0", "LogSoftmaxBackward0", "ViewBackward0",
                            "SoftmaxBackward0", "AddmmBackward0"), only)
    assert f.nodes == ["n3", "n1"] and f.module == "m.head"
    [f] = run_checks(_chain("BinaryCrossEntropyWithLogitsBackward0", "SigmoidBackward0"), only)
    assert "sigmoid" in f.message
    # log_softmax then nll_loss, or log_softmax fed to cross_entropy: fine
    assert run_checks(_chain("NllLossBackward0", "LogSoftmaxBackward0", "AddmmBackward0"),
                      only) == []
    assert run_checks(_chain("NllLossBackward0", "LogSoftmaxBackward0", "LogSoftmaxBackward0"),
                      only) == []


def test_double_softmax_on_real_losses():
    x, y = torch.randn(4, 5), torch.randint(0, 5, (4,))

    def losses(model, fn):
        return gradscope.trace(model, x, loss_fn=lambda out: fn(out, y)).findings

    lin = nn.Linear(5, 5)
    ce = nn.functional.cross_entropy
    assert [f.check for f in losses(nn.Sequential(lin, nn.Softmax(1)), ce)] == ["double-softmax"]
    assert losses(nn.Sequential(lin, nn.LogSoftmax(1)), nn.functional.nll_loss) == []
    assert losses(nn.Sequential(lin, nn.LogSoftmax(1)), ce) == []
    assert losses(lin, ce) == []
    bce = nn.functional.binary_cross_entropy_with_logits
    yb = torch.rand(4, 5)
    found = gradscope.trace(nn.Sequential(lin, nn.Sigmoid()), x,
                            loss_fn=lambda out: bce(out, yb)).findings
    assert [f.check for f in found] == ["double-softmax"]
    plain_bce = nn.functional.binary_cross_entropy
    assert gradscope.trace(nn.Sequential(lin, nn.Sigmoid()), x,
                           loss_fn=lambda out: plain_bce(out, yb)).findings == []


def test_builtin_sum_unit_and_near_misses():
    only = _check("builtin-sum")

    class Summer(nn.Module):
        def __init__(self, n, builtin):
            super().__init__()
            self.fc = nn.Linear(4, n)
            self.builtin = builtin

        def forward(self, x):
            t = self.fc(x).mean(0)
            return sum(t) if self.builtin else t.sum()

    x = torch.randn(3, 4)
    [f] = run_checks(gradscope.trace(Summer(32, True), x).trace, only)
    assert f.data["adds"] == 32 and f.module == "Summer"
    assert run_checks(gradscope.trace(Summer(32, False), x).trace, only) == []
    assert run_checks(gradscope.trace(Summer(8, True), x).trace, only) == []  # below threshold

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(20))

        def forward(self, x):
            total = 0
            for i in range(20):
                total = total + self.w[i] * x
            return total.sum()

    [f] = run_checks(gradscope.trace(Loop(), torch.randn(2)).trace, only)
    assert f.data["source"] != "UnbindBackward0" and f.data["adds"] >= 16


def test_unregistered_parameter_respects_optimizers_and_inputs():
    class Weighted(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, scale):
            return self.fc(x) * scale

    class Saliency(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x.requires_grad_()  # input gradients, on purpose
            return self.fc(x)

    def run(model, stray, in_opt, *inputs):
        params = list(model.parameters()) + ([stray] if in_opt else [])
        opt = torch.optim.SGD(params, lr=0.1)
        with gradscope.watch(model, opt) as scope:
            opt.zero_grad()
            model(*inputs).sum().backward()
            opt.step()
        return [f for f in scope.report().findings if f.check == "unregistered-parameter"]

    log_var = torch.zeros(1, requires_grad=True)   # a loss weight handed to the optimizer by hand
    model = Weighted()
    assert run(model, log_var, True, torch.randn(3, 4), log_var * 1.0 + 1) == []
    [f] = run(Weighted(), log_var, False, torch.randn(3, 4), log_var * 1.0 + 1)
    assert f.severity == "error" and f.data["shapes"] == [[1]]
    assert run(Saliency(), None, False, torch.randn(3, 4)) == []


def test_a_buffer_reassigned_with_history_is_found_and_a_detached_one_is_not(no_leaks):
    class EMA(nn.Module):
        def __init__(self, detach):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.detach = detach
            self.register_buffer("ema", torch.zeros(4))

        def forward(self, x):
            h = self.fc(x)
            new = 0.9 * self.ema + 0.1 * h.mean(0)
            self.ema = new.detach() if self.detach else new  # still a registered buffer
            return h

    found = {}
    for detach in (False, True):
        model = EMA(detach)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt) as scope:
            for _ in range(4):
                opt.zero_grad()
                model(torch.randn(8, 4)).square().mean().backward()
                opt.step()
        found[detach] = [f for f in scope.report().findings if f.check == "attribute-keeps-graph"]
    [f] = found[False]
    assert f.data["paths"] == ["model.ema"] and f.data["history"]["model.ema"] >= 4 * 3
    assert found[True] == []


def test_weightless_layer_rebuilt_in_library_code_is_not_the_users_to_fix():
    def module(location):
        return {"model": "model", "name": "<CrossEntropyLoss#0>", "type": "CrossEntropyLoss",
                "registered": False, "has_parameters": False, "rebuilt": True, "calls": 3,
                "location": location}
    only = _check("layer-in-forward")

    def found(location, target="train.py"):
        return run_checks(Trace(modules=[module(location)], run={"target": target}), only)
    assert found("/opt/libs/transformers/models/bert/modeling_bert.py:1131") == []  # --target
    assert found("/usr/lib/python3/dist-packages/lib/m.py:9") == []
    [f] = found("train.py:20")                                   # the user's own file
    assert f.severity == "info" and f.location == "train.py:20"
    assert len(found("/home/u/proj/model.py:9", target="/home/u/proj/train.py")) == 1


def test_zero_grad_before_step_unit():
    only = _check("zero-grad-before-step")
    events = [{"kind": "backward", "index": 1, "location": "t.py:8"},
              {"kind": "zero_grad", "location": "t.py:9"},
              {"kind": "step", "index": 1, "location": "t.py:10"}]
    step = {"step": 1, "location": "t.py:10", "parameters": 0, "backward_calls": 0,
            "summed": {}, "carried": []}
    [f] = run_checks(Trace(events=events, accumulation=[{**step, "cleared": 4,
                                                         "contributed": 4}]), only)
    assert f.location == "t.py:9" and "between loss.backward() and optimizer.step()" in f.message
    # only some of the step's parameters cleared (another model's, say): silent
    assert run_checks(Trace(events=events, accumulation=[{**step, "cleared": 2,
                                                         "contributed": 4}]), only) == []
    assert run_checks(Trace(events=events, accumulation=[step]), only) == []
    # zero_grad(set_to_none=False) in between: all zeros, and the timeline shows the call
    [f] = run_checks(Trace(events=events, accumulation=[{**step, "zeros": 4,
                                                         "contributed": 4}]), only)
    # all zeros without a zero_grad() in between: a dead network, not a reset
    no_call = [e for e in events if e["kind"] != "zero_grad"]
    assert run_checks(Trace(events=no_call, accumulation=[{**step, "zeros": 4,
                                                          "contributed": 4}]), only) == []


def test_a_gan_zeroing_the_other_optimizer_between_backward_and_step_is_fine(no_leaks):
    G, D = nn.Linear(4, 4), nn.Linear(4, 1)
    opt_g, opt_d = torch.optim.SGD(G.parameters(), lr=0.1), torch.optim.SGD(D.parameters(), lr=0.1)
    with gradscope.watch(G, D, opt_g, opt_d) as scope:
        for _ in range(3):
            opt_d.zero_grad()
            D(G(torch.randn(8, 4)).detach()).mean().backward()
            opt_g.zero_grad()                  # the other optimizer: D's gradients stay
            opt_d.step()
            G_loss = -D(G(torch.randn(8, 4))).mean()
            G_loss.backward()
            opt_g.step()
    assert "zero-grad-before-step" not in {f.check for f in scope.report().findings}


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_between_backward_and_step_is_found_either_way(set_to_none, no_leaks):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        for _ in range(3):
            model(torch.randn(8, 4)).square().mean().backward()
            opt.zero_grad(set_to_none=set_to_none)
            opt.step()
    [f] = [f for f in scope.report().findings if f.check == "zero-grad-before-step"]
    assert f.data["steps"] == [1, 2, 3] and f.location.startswith("tests/test_checks.py:")


def test_spectral_norm_and_a_weight_penalty_are_not_tied_weights(tmp_path, no_leaks):
    """spectral_norm's parametrization uses its 'original' twice by design, and runs once at
    registration outside any forward (it was registered as a model of its own); an explicit L2
    penalty over model.parameters() is not a second run of the model."""
    from gradscope.runner import trace_script

    path = tmp_path / "train.py"
    path.write_text(
        "import torch\nfrom torch import nn\n"
        "from torch.nn.utils.parametrizations import spectral_norm\n"
        "torch.manual_seed(0)\n"
        "C = nn.Sequential(spectral_norm(nn.Linear(8, 16)), nn.LeakyReLU(0.2),\n"
        "                  spectral_norm(nn.Linear(16, 1)))\n"
        "opt = torch.optim.Adam(C.parameters(), lr=1e-3)\n"
        "for _ in range(3):\n"
        "    opt.zero_grad()\n"
        "    loss = C(torch.randn(16, 8)).mean()\n"
        "    loss = loss + 1e-4 * sum(p.pow(2).sum() for p in C.parameters())\n"
        "    loss.backward()\n"
        "    opt.step()\n")
    outcome = trace_script(str(path))
    assert outcome.error is None
    assert [m["label"] for m in outcome.report.trace.models] == ["C"]
    assert outcome.report.findings == [], [(f.check, f.message) for f in outcome.report.findings]


def test_grad_accumulation_counts_the_partial_group_apart():
    def step(i, calls):
        return {"step": i, "location": "t.py:9", "parameters": 2, "backward_calls": calls,
                "summed": {str(calls): 2}, "carried": []}
    trace = Trace(accumulation=[step(1, 3), step(2, 3), step(3, 2)])
    [f] = run_checks(trace, _check("grad-accumulation"))
    assert "2 of 3 optimizer steps summed 3 backward calls each (1 summed 2" in f.message


def test_unused_parameter_in_model_mode_says_the_training_loss_is_not_seen():
    params = [_param("a.w"), _param("log_vars", grad_seen=False)]
    [f] = run_checks(Trace(parameters=params, backward_calls=1, run={"mode": "model"}),
                     _check("unused-parameter"))
    assert "FILE.py:NAME run" in f.hint
    [g] = run_checks(Trace(parameters=params, backward_calls=1, run={"mode": "script"}),
                     _check("unused-parameter"))
    assert "FILE.py:NAME" not in g.hint


def test_attribute_keeps_graph_is_silent_on_one_steps_history(no_leaks):
    """Patterns a reviewer found it firing on: a GRU state detached at the start of each
    forward (truncated BPTT), auxiliary logits kept for the training loss, attention weights
    kept for plotting. Each holds only the current step's graph."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.head, self.aux = nn.GRU(4, 8, batch_first=True), nn.Linear(8, 2), \
                nn.Linear(8, 2)
            self.hidden = None

        def forward(self, x):
            h0 = None if self.hidden is None else self.hidden.detach()
            out, self.hidden = self.gru(x, h0)
            self.attn = torch.softmax(out @ out.transpose(1, 2), -1)   # kept for a plot
            self.aux_logits = self.aux(out[:, -1])                       # used by the loss
            return self.head(out[:, -1])

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        for _ in range(4):
            opt.zero_grad()
            y = torch.randint(0, 2, (3,))
            out = model(torch.randn(3, 5, 4))
            (F.cross_entropy(out, y) + 0.3 * F.cross_entropy(model.aux_logits, y)).backward()
            opt.step()
    assert "attribute-keeps-graph" not in {f.check for f in scope.report().findings}


def test_optimizer_parameters_take_their_models_name_once_it_runs_and_fallbacks_are_unique(
        tmp_path, no_leaks):
    from gradscope.runner import trace_script

    path = tmp_path / "train.py"
    path.write_text(
        "import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
        "enc, head = nn.Linear(10, 8), nn.Linear(8, 1)\n"
        "opt = torch.optim.SGD([*enc.parameters(), *head.parameters()], lr=0.01)\n"
        "weights = {'a': nn.Parameter(torch.ones(())), 'b': nn.Parameter(torch.ones(()))}\n"
        "extra = [torch.optim.Adam([w], lr=0.1) for w in weights.values()]\n"
        "for step in range(6):\n"
        "    enc.zero_grad()\n"
        "    [o.zero_grad() for o in extra]\n"
        "    z = enc(torch.randn(16, 10))\n"
        "    loss = z.pow(2).mean() if step < 2 else head(z).pow(2).mean()\n"
        "    (loss * weights['a'] + weights['b']).backward()\n"
        "    opt.step()\n"
        "    [o.step() for o in extra]\n")
    outcome = trace_script(str(path))
    assert outcome.error is None
    norms = outcome.report.trace.gradients["grad_norms"]
    assert {"head.weight", "head.bias", "Adam#2.param_groups[0][0]",
            "Adam#3.param_groups[0][0]"} <= set(norms)
    assert not any(k.startswith("SGD.") for k in norms)
    [f] = [f for f in outcome.report.findings if f.check == "missing-zero-grad"]
    assert sorted(f.data["parameters"]) == ["head.bias", "head.weight"]
    assert "belong(s) to no model" not in f.message


def test_review_fixes_for_small_false_findings(tmp_path, monkeypatch):
    def step(i, calls, **kw):
        return {"step": i, "location": "t.py:10", "parameters": 2, "backward_calls": calls,
                "summed": {str(calls): 2}, "carried": [], **kw}
    # one emptied step in 20 (a guard dropping a non-finite batch): not zero-grad-before-step
    steps = [step(i, 1) for i in range(1, 21)]
    steps[7] = {**steps[7], "cleared": 2, "contributed": 2}
    assert run_checks(Trace(accumulation=steps), _check("zero-grad-before-step")) == []
    # a second optimizer's steps without gradients are not a partial accumulation group
    acc = [step(1, 4), step(2, 4), step(3, 0), step(4, 0)]
    [f] = run_checks(Trace(accumulation=acc), _check("grad-accumulation"))
    assert "summed 0" not in f.message
    # the traced file given as ../proj/lif.py: its folder is the user's, not a library's
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    module = {"model": "model", "name": "<ReLU#0>", "type": "ReLU", "registered": False,
              "has_parameters": False, "rebuilt": True, "calls": 3,
              "location": f"{tmp_path}/proj/lif.py:7"}
    found = run_checks(Trace(modules=[module], run={"target": "../proj/lif.py"}),
                       _check("layer-in-forward"))
    assert [f.severity for f in found] == ["info"]
