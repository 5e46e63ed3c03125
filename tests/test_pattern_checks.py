"""Issue 5's device, in-place and batch-norm checks: each on hand-built traces (no torch), then
on real runs. Without a GPU the ``meta`` device stands in for the accelerator: it has devices,
shapes and copies, but no data."""
import json
import os
import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope.checks import run_checks, select_checks
from gradscope.errors import TracedProgramError
from gradscope.graph import Edge, Graph, Node
from gradscope.runner import trace_script
from gradscope.tracedata import Trace
from gradscope_cli.main import main


def _only(check_id):
    return select_checks(only=[check_id])


def _transfer(**kw):
    row = {"model": "model", "module": "embed", "op": "to", "src": "cpu", "dst": "cuda:0",
           "location": "train.py:12", "count": 6, "bytes": 6 * 4096, "forwards": 3}
    row.update(kw)
    return row


# -- device-copy ---------------------------------------------------------------------------------
def test_device_copy_unit():
    only = _only("device-copy")
    assert run_checks(Trace(), only) == []
    found = run_checks(Trace(transfers=[
        _transfer(), _transfer(op="item", src="cuda:0", dst="host", bytes=12, count=3,
                               location="train.py:15")]), only)
    first, second = found if found[0].data["op"] == "to" else found[::-1]
    assert "2 times per forward" in first.message and "8.0 KiB per forward" in first.message
    assert first.module == "model.embed" and first.location == "train.py:12"
    assert "device=x.device" in first.hint
    assert ".item() reads a value of a cuda:0 tensor into Python" in second.message
    assert "waits" in second.message and "outside forward" in second.hint


def test_device_copy_on_the_meta_device_counts_only_copies_inside_forwards():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            same = x.to(x.device)            # no copy: already there
            half = x.to(torch.float64)       # a dtype change on one device: not a transfer
            bias = torch.ones(8).to(x.device)  # a host->device copy every call
            return self.fc(same + half.float() + bias)

    model = Net().to("meta")
    x = torch.randn(4, 8).to("meta")  # before the forward: the batch, never counted
    report = gradscope.trace(model, x)
    [row] = report.trace.transfers
    assert (row["src"], row["dst"], row["count"], row["bytes"]) == ("cpu", "meta", 1, 32)
    assert row["module"] == "" and row["location"].endswith("test_pattern_checks.py:57")
    [f] = [f for f in report.findings if f.check == "device-copy"]
    assert f.module == "Net"


# -- device-mismatch -----------------------------------------------------------------------------
def _failure(**kw):
    row = {"kind": "device-mismatch", "error": "Expected all tensors to be on the same device",
           "location": "model.py:20", "line": "return self.fc(x) * self.mask", "tensors": [],
           "module": {"model": "model", "module": "head", "type": "Head", "devices": [
               {"name": "weight", "kind": "parameter", "device": "cuda:0"},
               {"name": "mask", "kind": "attribute", "device": "cpu", "unregistered": True},
               {"name": "input 0", "kind": "input", "device": "cuda:0"}]}}
    row.update(kw)
    return row


def test_device_mismatch_unit():
    only = _only("device-mismatch")
    assert run_checks(Trace(), only) == []
    [f] = run_checks(Trace(failure=_failure()), only)
    assert (f.severity, f.module, f.location) == ("error", "model.head", "model.py:20")
    assert "self.mask is on cpu" in f.message and "register_buffer" in f.hint
    assert f.data["main"] == "cuda:0" and [r["name"] for r in f.data["odd"]] == ["mask"]
    # the input is the odd one out: move the batch
    devices = [{"name": "weight", "kind": "parameter", "device": "cuda:0"},
               {"name": "input 0", "kind": "input", "device": "cpu"}]
    [f] = run_checks(Trace(failure=_failure(module={"model": "model", "module": "",
                                                    "type": "Net", "devices": devices})), only)
    assert "Move the inputs" in f.hint and f.module == "model"
    # outside any module (seed 003's a + b): the tensors named on the failing line
    tensors = [{"name": "a", "device": "cpu"}, {"name": "b", "device": "cuda:0"},
               {"name": "model (parameters)", "device": "cpu"}]
    [f] = run_checks(Trace(failure=_failure(module=None, tensors=tensors)), only)
    assert f.module is None and "code outside any model" in f.message
    assert "Put b on cpu" in f.hint
    [f] = run_checks(Trace(failure={"kind": "cuda-unavailable", "location": "t.py:3",
                                    "line": "x = x.cuda()",
                                    "error": "Torch not compiled with CUDA enabled"}), only)
    assert "t.py:3" in f.message and "is_available()" in f.hint


def test_device_mismatch_in_a_module_on_the_meta_device():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.mask = torch.ones(4)  # not moved by .to()

        def forward(self, x):
            return self.fc(x) * self.mask

    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(Net().to("meta"), torch.randn(2, 4).to("meta"))
    report = info.value.report
    [f] = [f for f in report.findings if f.check == "device-mismatch"]
    assert f.module == "Net" and [r["name"] for r in f.data["odd"]] == ["mask"]
    assert f.data["main"] == "meta" and "unregistered-tensor" in f.hint
    assert "unregistered-tensor" in {g.check for g in report.findings}

    # the inputs left on the CPU: named as the odd ones, with the fix
    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(nn.Sequential(nn.Linear(4, 4)).to("meta"), torch.randn(2, 4))
    [f] = [f for f in info.value.report.findings if f.check == "device-mismatch"]
    assert f.module == "Sequential.0" and f.data["odd"][0]["name"] == "input 0"
    assert "Move the inputs" in f.hint


def test_device_mismatch_in_an_lstm_and_in_indexing_is_explained(tmp_path, no_leaks):
    """Two CUDA messages with their own wording: RNNs ('Input and parameter tensors are not at
    the same device') and indexing a CPU tensor with a device index."""
    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(nn.LSTM(4, 4).to("meta"), torch.randn(2, 3, 4))
    [f] = [f for f in info.value.report.findings if f.check == "device-mismatch"]
    assert f.module == "LSTM" and f.data["odd"][0]["name"] == "input 0"
    from gradscope.tracing.failures import classify
    assert classify(RuntimeError("indices should be either on cpu or on the same device as the "
                                 "indexed tensor (cpu)")) == "device-mismatch"


def _script(tmp_path, body):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_device_mismatch_outside_modules_names_the_tensors_on_the_line(tmp_path, no_leaks):
    path = _script(tmp_path, """
        import torch
        a = torch.ones(2, 3)
        b = torch.ones(2, 3).to("meta")
        c = a + b
    """)
    outcome = trace_script(path)
    assert isinstance(outcome.error, RuntimeError)
    [f] = [f for f in outcome.report.findings if f.check == "device-mismatch"]
    assert f.location.endswith("train.py:5") and f.data["line"] == "c = a + b"
    assert {r["name"]: r["device"] for r in f.data["devices"]} == {"a": "cpu", "b": "meta"}


# -- inplace-modified ----------------------------------------------------------------------------
def test_inplace_modified_unit():
    only = _only("inplace-modified")
    assert run_checks(Trace(), only) == []
    detail = {"shape": [4, 8], "producer": "Exp", "version": 1, "expected": 0}
    node = {"op": "ExpBackward0", "saved": "result", "model": "m", "module": "attn", "seq": 3,
            "inputs": []}
    graph = Graph([Node("n0", "ExpBackward0", "attn", "m")], [], ["n0"])
    failure = {"kind": "inplace-modified", "detail": detail, "stale": [node],
               "backward_location": "train.py:30",
               "inplace_op": {"op": "div_", "model": "m", "module": "attn",
                              "location": "model.py:12", "shape": [4, 8], "forward": 1}}
    [f] = run_checks(Trace(graph=graph, failure=failure), only)
    assert (f.location, f.module, f.nodes) == ("model.py:12", "m.attn", ["n0"])
    assert "div_ at model.py:12" in f.message and "ExpBackward0 in m.attn" in f.message
    # weights changed by an optimizer step before a second backward (the GAN mistake)
    step = {"kind": "step", "optimizer": "Adam", "location": "train.py:28", "index": 1}
    [f] = run_checks(Trace(failure={**failure, "inplace_op": None, "parameters": ["m.fc.weight"],
                                    "last_step": step}), only)
    assert "Adam.step() at train.py:28" in f.message and "before optimizer.step()" in f.hint
    # nothing to tie it to: say how to find out
    [f] = run_checks(Trace(failure={**failure, "inplace_op": None, "ops_watched": False}), only)
    assert "re-run it with 'gradscope trace'" in f.message


def test_inplace_error_names_the_line_that_modified_a_saved_tensor(tmp_path, no_leaks):
    path = _script(tmp_path, """
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                h = torch.sigmoid(self.fc(x))
                h[:, 0] = 0.0   # sigmoid saved h: this breaks its backward
                return h

        x = torch.randn(3, 4)
        model = Net()
        for _ in range(3):          # other forwards with the same shapes: the match is exact
            model(x)
        model(x).sum().backward()
    """)
    outcome = trace_script(path)
    [f] = [f for f in outcome.report.findings if f.check == "inplace-modified"]
    assert f.location.endswith("train.py:12") and f.module == "model"
    assert f.data["inplace_op"]["op"] == "__setitem__" and f.data["inplace_op"]["forward"] == 4
    assert f.data["node"]["op"] == "SigmoidBackward0"


def test_inplace_on_weights_by_an_optimizer_step_under_watch():
    gen, disc = nn.Linear(4, 4), nn.Linear(4, 1)
    opt = torch.optim.SGD(disc.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="inplace"):
        with gradscope.watch(gen, disc, opt) as scope:
            fake = torch.tanh(gen(torch.randn(2, 4)))
            score = disc(fake)
            score.mean().backward(retain_graph=True)
            opt.step()                          # disc.weight changes in place...
            (-score).mean().backward()          # ...and this backward needed the old one
    [f] = [f for f in scope.report().findings if f.check == "inplace-modified"]
    assert f.data["parameters"] == ["disc.weight"] and "SGD.step()" in f.message
    assert f.location == f.data["step"]["location"]


# -- bias-before-norm ----------------------------------------------------------------------------
def _norm_trace(layer_op="ConvolutionBackward0", between=None, bias=True, trained=True,
                bias_size=4, norm_shape=(8, 4, 5, 5)):
    nodes = [Node("n0", "NativeBatchNormBackward0", "bn", "m", shape=norm_shape)]
    edges = []
    layer = "n1"
    if between:
        nodes.append(Node("n9", between, "act", "m"))
        edges.append(Edge("n9", "n0"))
        edges.append(Edge(layer, "n9"))
    else:
        edges.append(Edge(layer, "n0"))
    nodes.append(Node(layer, layer_op, "conv", "m"))
    nodes.append(Node("n2", "AccumulateGrad", "conv", "m", param="conv.weight", leaf="parameter"))
    edges.append(Edge("n2", layer))
    if bias:
        nodes.append(Node("n3", "AccumulateGrad", "conv", "m", param="conv.bias",
                          leaf="parameter", shape=(bias_size,)))
        edges.append(Edge("n3", layer))
    stats = [{"batch": 8, "per_channel": 512, "calls": 1}] if trained else None
    modules = [{"model": "m", "name": "bn", "type": "BatchNorm2d", "batch_stats": stats}]
    return Trace(graph=Graph(nodes, edges, ["n0"]), modules=modules)


def test_bias_before_norm_unit():
    only = _only("bias-before-norm")
    [f] = run_checks(_norm_trace(), only)
    assert (f.severity, f.module, f.data["pairs"]) == ("info", "m.conv", [["m.conv", "m.bn"]])
    assert set(f.nodes) == {"n0", "n1", "n3"}
    [f] = run_checks(_norm_trace("AddmmBackward0", norm_shape=(8, 4)), only)  # Linear
    [f] = run_checks(_norm_trace("AddmmBackward0", between="ViewBackward0",
                                 norm_shape=(8, 4, 1)), only)
    # a Linear on (N, L, C) before BatchNorm1d(L), L == C: the bias runs along C, inside
    # each of the norm's channels, and is not cancelled
    assert run_checks(_norm_trace("AddmmBackward0", between="ViewBackward0",
                                  norm_shape=(8, 4, 4)), only) == []
    assert run_checks(_norm_trace(bias=False), only) == []
    assert run_checks(_norm_trace(between="ReluBackward0"), only) == []
    assert run_checks(_norm_trace(trained=False), only) == []  # a frozen, eval-mode norm
    # DCGAN: Linear(16, 100) viewed as (N, 4, 5, 5): the view mixes bias values into
    # channels, so the norm does not cancel them
    assert run_checks(_norm_trace("AddmmBackward0", between="ViewBackward0", bias_size=100),
                      only) == []


# -- batchnorm-small-batch -----------------------------------------------------------------------
def _bn_trace(stats, type_="BatchNorm2d", world=None):
    run = {"world_size": world} if world else {}
    return Trace(modules=[{"model": "m", "name": "bn", "type": type_, "batch_stats": stats}],
                 run=run)


def test_batchnorm_small_batch_unit():
    only = _only("batchnorm-small-batch")
    [f] = run_checks(_bn_trace([{"batch": 1, "per_channel": 1024, "calls": 3},
                                {"batch": 32, "per_channel": 32768, "calls": 97}]), only)
    assert "a batch of 1" in f.message and "3 of 100 calls" in f.message
    assert "drop_last=True" in f.hint and f.module == "m.bn"
    [f] = run_checks(_bn_trace([{"batch": 4, "per_channel": 4, "calls": 2}], "BatchNorm1d"), only)
    assert "only 4 values per channel" in f.message and "every call" in f.message
    assert run_checks(_bn_trace([{"batch": 16, "per_channel": 16, "calls": 2}]), only) == []
    assert run_checks(_bn_trace([{"batch": 2, "per_channel": 2048, "calls": 2}]), only) == []
    # SyncBatchNorm gathers statistics over the ranks: 8 per rank x 4 ranks is enough
    assert run_checks(_bn_trace([{"batch": 8, "per_channel": 8, "calls": 1}], "SyncBatchNorm",
                                world=4), only) == []
    assert run_checks(_bn_trace([{"batch": 8, "per_channel": 8, "calls": 1}], "BatchNorm1d",
                                world=4), only) != []
    # FILE.py:NAME: the batch is the --input shape, maybe not the training batch
    trace = _bn_trace([{"batch": 2, "per_channel": 2, "calls": 1}])
    trace.run["mode"] = "model"
    [f] = run_checks(trace, only)
    assert f.severity == "info" and "--input" in f.message and "--input" in f.hint


def test_batchnorm_small_batch_fires_for_training_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 2))
    found = gradscope.trace(model, torch.randn(1, 3, 16, 16)).findings
    assert [f.check for f in found] == ["batchnorm-small-batch"]
    model.eval()  # inference on one image uses the running statistics: nothing to say
    assert gradscope.trace(model, torch.randn(1, 3, 16, 16)).findings == []
    assert model.training is False


# -- the op watcher itself -----------------------------------------------------------------------
def test_trace_leaves_training_numbers_and_mode_stack_as_they_were(tmp_path, no_leaks):
    body = """
        import torch, json, sys
        from torch import nn
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(inplace=True), nn.Linear(6, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(5):
            x = torch.randn(8, 6)
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            opt.step()
        json.dump([p.tolist() for p in model.parameters()], open(sys.argv[1], "w"))
    """
    path = _script(tmp_path, body)
    plain, traced = tmp_path / "plain.json", tmp_path / "traced.json"
    import subprocess
    import sys
    subprocess.run([sys.executable, path, str(plain)], check=True)
    outcome = trace_script(path, (str(traced),))
    assert outcome.error is None
    assert json.loads(plain.read_text()) == json.loads(traced.read_text())


def test_failing_sample_prints_the_explanation_not_a_traceback(tmp_path):
    from conftest import REPO
    result = CliRunner().invoke(
        main, ["trace", os.path.join(REPO, "samples", "inplace_softmax.py"), "--out",
               str(tmp_path)])
    assert result.exit_code == 3
    assert "the inplace-modified finding above explains it" in result.stderr
    assert "Traceback" not in result.stderr and "inplace_softmax.py:26" in result.stdout
    assert json.loads((tmp_path / "trace.json").read_text())["failure"]["kind"] == \
        "inplace-modified"


def test_unexplained_failure_traceback_hides_gradscope_frames(tmp_path):
    path = _script(tmp_path, """
        import torch
        from torch import nn

        class Net(nn.Module):
            def forward(self, x):
                return x.view(-1, 7)   # a shape error: not ours to explain

        Net()(torch.randn(4, 5))
    """)
    result = CliRunner().invoke(main, ["trace", path, "--out", str(tmp_path)])
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr
    assert "train.py\", line 7" in result.stderr
    assert "gradscope" + os.sep not in result.stderr.split("Traceback", 1)[1]


# -- cases an independent review found ------------------------------------------------------------
def test_inplace_culprit_is_read_before_the_op_replaces_the_node():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.lin2 = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            a = torch.sigmoid(self.lin(x))
            a.mul_(2)                                          # the mistake
            c = nn.functional.relu(self.lin2(x), inplace=True)  # same shape, harmless
            return a + c

    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(Net(), torch.randn(4, 8))
    f = info.value.report.trace.failure
    assert f["inplace_op"]["op"] == "mul_" and f["stale"][0]["op"] == "SigmoidBackward0"


def test_inplace_two_mistakes_report_the_one_torch_failed_on():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            h = self.lin(x)
            a, b = torch.exp(h), torch.sigmoid(h)
            b.mul_(2)
            c = b * 3 * 3 * 3
            a.add_(1)
            return a + c

    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(Net(), torch.randn(4, 8))
    failure = info.value.report.trace.failure
    assert "of Sigmoid" in str(info.value.__cause__)  # what torch failed on...
    assert failure["stale"][0]["op"] == "SigmoidBackward0"  # ...is what we name
    assert failure["inplace_op"]["op"] == "mul_"


def test_inplace_search_does_not_recompute_every_checkpointed_segment(monkeypatch):
    from torch.utils.checkpoint import checkpoint

    import gradscope.tracing.failures as failures

    calls = [0]

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            calls[0] += 1
            return torch.tanh(self.lin(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.segs = nn.ModuleList([Seg() for _ in range(3)])

        def forward(self, x):
            for seg in self.segs:
                x = checkpoint(seg, x, use_reentrant=False)
            y = torch.exp(x)
            y.add_(1)
            return y

    during_search = []
    real = failures.stale_saved

    def counted(*args, **kwargs):
        before = calls[0]
        try:
            return real(*args, **kwargs)
        finally:
            during_search.append(calls[0] - before)

    monkeypatch.setattr(failures, "stale_saved", counted)
    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(Net(), torch.randn(4, 8, requires_grad=True))
    # reading a checkpointed node's saved tensors recomputes its segment: the search reads
    # only nodes made by (or fed by) the op the error names, here exp, so none
    assert during_search == [0]
    assert info.value.report.trace.failure["stale"][0]["op"] == "ExpBackward0"


def test_device_error_caught_by_the_program_does_not_explain_a_later_one(tmp_path):
    path = _script(tmp_path, """
        import torch
        from torch import nn
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
        x = torch.randn(4, 8)
        try:
            model(x.to("meta"))   # a probe on the wrong device, caught
        except RuntimeError:
            pass
        out = model(x)
        loss = ((out - torch.zeros(4, 2, device="meta")) ** 2).mean()
    """)
    [f] = [f for f in trace_script(path).report.findings if f.check == "device-mismatch"]
    assert f.module is None and f.location.endswith("train.py:11")
    assert {r["name"] for r in f.data["devices"]} >= {"out"}


def test_factories_count_only_real_copies():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            same = torch.as_tensor(x, device=x.device)  # nothing moves
            ramp = x.new_tensor([float(i) for i in range(8)])  # Python data to the device
            return self.fc(same + ramp)

    report = gradscope.trace(Net().to("meta"), torch.randn(4, 8).to("meta"))
    assert [(t["op"], t["src"], t["dst"]) for t in report.trace.transfers] == \
        [("new_tensor", "cpu", "meta")]


def test_batch_statistics_without_running_stats_in_eval_and_lazy_norms():
    norm = nn.BatchNorm1d(4, track_running_stats=False).eval()  # batch statistics even in eval
    found = gradscope.trace(nn.Sequential(nn.Linear(4, 4, bias=False), norm),
                            torch.randn(2, 4)).findings
    assert [f.check for f in found] == ["batchnorm-small-batch"]
    lazy = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.LazyBatchNorm2d())
    report = gradscope.trace(lazy, torch.randn(16, 3, 8, 8))  # no crash on the lazy buffers
    assert report.findings == []


# -- loss-broadcast ------------------------------------------------------------------------------
def test_loss_broadcast_unit():
    only = _only("loss-broadcast")
    assert run_checks(Trace(), only) == []
    pairs = {"op": "mse_loss", "location": "t.py:9", "prediction": [8, 1], "target": [8],
             "result": [8, 8], "model": None, "module": None, "calls": 4}
    spread = {"op": "l1_loss", "location": "t.py:12", "prediction": [8, 3], "target": [8, 1],
              "result": [8, 3], "model": "model", "module": "head", "calls": 1}
    found = run_checks(Trace(broadcasts=[pairs, spread]), only)
    by_op = {f.data["op"]: f for f in found}
    assert by_op["mse_loss"].severity == "error" and "(8, 8)" in by_op["mse_loss"].message
    assert "pred.squeeze(-1)" in by_op["mse_loss"].hint and by_op["mse_loss"].module is None
    assert by_op["l1_loss"].severity == "warning" and by_op["l1_loss"].module == "model.head"
    assert "target is broadcast to (8, 3)" in by_op["l1_loss"].message


def test_loss_broadcast_sees_each_form_and_spares_deliberate_pairs(tmp_path, no_leaks):
    path = _script(tmp_path, """
        import torch
        import torch.nn.functional as F
        from torch import nn

        model = nn.Linear(4, 1)
        x, y = torch.randn(6, 4), torch.randn(6)
        pred = model(x)                                      # (6, 1)
        a = F.smooth_l1_loss(pred, y)                        # line 9: F-function form
        b = (y - pred).abs().mean()                          # line 10: reversed subtraction
        c = torch.sub(pred, y).pow(2).mean()                 # line 11: torch.sub
        pairs = (pred - pred.squeeze(-1)).mean()             # both need grad: deliberate
        ok = F.mse_loss(pred.squeeze(-1), y) + (pred.squeeze(-1) - y).abs().mean()
        with torch.no_grad():
            metric = (model(x) - y).abs().mean()             # no gradient: not a loss
        (a + b + c + pairs + ok).backward()
    """)
    report = trace_script(path).report
    found = {(f.location.rsplit(":", 1)[-1], f.data["op"])
             for f in report.findings if f.check == "loss-broadcast"}
    assert found == {("9", "smooth_l1_loss"), ("10", "sub"), ("11", "sub")}
    assert all(r["result"] == [6, 6] for r in report.trace.broadcasts)


def test_builtin_sum_names_the_line_that_iterated_a_tensor_of_as_many_rows():
    nodes = [Node("n0", "UnbindBackward0", outputs=20)]
    nodes += [Node(f"n{k}", "AddBackward0") for k in range(1, 21)]
    edges = [Edge("n0", f"n{k}") for k in range(1, 21)]
    graph = Graph(nodes, edges, ["n20"])
    only = _only("builtin-sum")
    iterations = [{"location": "train.py:9", "rows": 64, "calls": 1},   # another tensor
                  {"location": "train.py:34", "rows": 20, "calls": 5}]
    [f] = run_checks(Trace(graph=graph, iterations=iterations), only)
    assert f.location == "train.py:34" and "at train.py:34" in f.message
    [f] = run_checks(Trace(graph=graph), only)  # watch, or a saved trace from before: no line
    assert f.location is None


def test_builtin_sum_names_a_line_only_when_one_iteration_fits():
    nodes = [Node("n0", "UnbindBackward0", outputs=20, shape=())]
    nodes += [Node(f"n{k}", "AddBackward0") for k in range(1, 21)]
    graph = Graph(nodes, [Edge("n0", f"n{k}") for k in range(1, 21)], ["n20"])
    only = _only("builtin-sum")
    rows_of_vectors = {"location": "m.py:9", "rows": 20, "piece": [8], "model": "model",
                       "module": "", "calls": 2}       # a per-row loop inside the model
    scalars = {"location": "train.py:16", "rows": 20, "piece": [], "model": None,
               "module": None, "calls": 2}            # sum() over a vector outside it
    [f] = run_checks(Trace(graph=graph, iterations=[rows_of_vectors, scalars]), only)
    assert f.location == "train.py:16"
    twin = {**scalars, "location": "train.py:30"}     # two lines that fit: name neither
    [f] = run_checks(Trace(graph=graph, iterations=[scalars, twin]), only)
    assert f.location is None
