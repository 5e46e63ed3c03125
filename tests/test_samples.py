"""Every sample runs through the real CLI; what each one demonstrates is in its graph."""
import ast
import glob
import json
import os
import re

import pytest
from click.testing import CliRunner

from gradscope.checks import all_checks
from gradscope_cli.main import main

from conftest import REPO, graph_nodes

# ddp_*.py run on two ranks through the launcher in test_distributed.py
SAMPLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "samples", "*.py"))
                 if not os.path.basename(p).startswith("ddp_"))


# Samples whose script itself fails (the error is what gradscope explains): exit code 3.
FAILING = {"device_mismatch.py", "device_attribute_not_moved.py", "inplace_softmax.py",
           "rnn_state_not_detached.py", "forward_called_directly.py"}


def trace_sample(name, tmp_path, *extra):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["trace", os.path.join(REPO, "samples", name),
                                       "--json", str(out), "--fail-on", "never", *extra])
    assert result.exit_code == (3 if name in FAILING else 0), result.output
    with open(out) as f:
        d = json.load(f)
    # gradscope's own bookkeeping never failed on the way (it would only warn, and go on)
    assert not [n for n in d["notes"] if "internal errors" in n], d["notes"]
    return d, result.output


def test_every_sample_is_covered_below():
    assert set(SAMPLES) == set(EXPECT), "add the new sample's expectations to EXPECT"


def _ops(d, module=None):
    return [n["op"] for n in graph_nodes(d) if module is None or n["module"] == module]


def expect_layers_in_forward(d):
    unregistered = {m["type"] for m in d["modules"] if not m["registered"]}
    assert unregistered == {"Conv2d", "Linear"}
    leaves = [n for n in graph_nodes(d) if n["op"] == "AccumulateGrad"]
    assert len(leaves) == 4 and all(n["leaf"] == "unregistered" for n in leaves)
    assert d["parameters"] == [] and d["backward_calls"] == 3
    assert any("no parameters" in n for n in d["notes"])
    loc = next(m["location"] for m in d["modules"] if m["type"] == "Conv2d")
    assert loc.endswith("layers_in_forward.py:26")  # where it is called
    # one finding per cause, with the count: not one per forward call
    found = [f for f in d["findings"] if f["check"] == "layer-in-forward"]
    assert [(f["data"]["type"], f["data"]["count"], f["location"].rsplit("/", 1)[-1])
            for f in found] == [("Conv2d", 3, "layers_in_forward.py:24"),
                                ("Linear", 3, "layers_in_forward.py:25")]
    assert "__int__" in found[0]["message"]


def expect_handwritten_batchnorm(d):
    params = {n["param"] for n in graph_nodes(d) if n["leaf"] == "parameter"}
    assert {"bn1.gamma", "bn1.beta", "bn2.gamma", "bn2.beta"} <= params
    assert d["optimizer_steps"] == 3
    assert "MeanBackward1" in _ops(d, "bn1")


def expect_handwritten_batchnorm_no_detach(d):
    [f] = [f for f in d["findings"] if f["check"] == "attribute-keeps-graph"]
    assert sorted(f["data"]["paths"]) == ["model.bn1.moving_mean", "model.bn1.moving_var",
                                          "model.bn2.moving_mean", "model.bn2.moving_var"]
    assert ".detach()" in f["hint"] and "register_buffer" in f["hint"]
    # the chain grows with each of the 3 steps: more nodes than one step's graph holds
    assert max(f["data"]["history"].values()) > 3 * 5
    for g in d["findings"]:
        if g["check"] == "unregistered-tensor":
            assert "register_buffer" in g["hint"] and "nn.Parameter" not in g["hint"]


def expect_forgot_zero_grad(d):
    assert d["backward_calls"] == 6 and d["optimizer_steps"] == 4
    # the gradient at step k holds k backward calls: 1, 2, 3, 4
    assert [list(s["summed"]) for s in d["accumulation"]] == [["1"], ["2"], ["3"], ["4"]]
    assert d["run"]["graph_from"].endswith("forgot_zero_grad.py:50")  # the model's backward
    assert sum(op == "NativeBatchNormBackward0" for op in _ops(d)) == 4


def expect_builtin_sum(d):
    adds = [n for n in graph_nodes(d) if n["op"] == "AddBackward0" and n["module"] == ""]
    unbind = [n for n in graph_nodes(d) if n["op"] == "UnbindBackward0"]
    # iterating a tensor unbinds it once into 64 one-element views, then 64 Python additions
    assert len(adds) == 64 and len(unbind) == 1 and unbind[0]["outputs"] == 64
    [f] = [f for f in d["findings"] if f["check"] == "builtin-sum"]
    assert f["location"].endswith("builtin_sum.py:25")  # the sum(...) line, from the op watch


def expect_softmax_cross_entropy(d):
    f = next(f for f in d["findings"] if f["check"] == "double-softmax")
    assert f["module"] == "model.out" and f["location"].endswith("softmax_cross_entropy.py:35")
    assert _ops(d, "out") == ["SoftmaxBackward0"]
    assert "LogSoftmaxBackward0" in [n["op"] for n in graph_nodes(d)
                                     if n["model"] == "criterion"]


def expect_clean(d):
    assert [f for f in d["findings"] if f["severity"] != "info"] == []
    assert all(p["in_graph"] and p["in_optimizer"] for p in d["parameters"]
               if p["model"] == "model")
    assert d["optimizer_steps"] == 2


def expect_clean_transformer(d):
    expect_clean(d)
    assert [f["check"] for f in d["findings"]] == ["tied-weights"]
    assert "SoftmaxBackward0" in _ops(d, "blocks.0.attn")
    tied = [n for n in graph_nodes(d) if n["param"] in ("tok.weight", "lm_head.weight")]
    assert len(tied) == 1


def expect_clean_cnn(d):
    expect_clean(d)
    assert "AddBackward0" in _ops(d, "layer1.0")  # the residual add


def expect_clean_lstm(d):
    expect_clean(d)
    lstm = [n for n in graph_nodes(d) if n["module"] == "lstm" and n["leaf"] == "parameter"]
    assert len(lstm) == 8  # weight_ih, weight_hh, bias_ih, bias_hh for each of 2 layers


def expect_plain_list_heads(d):
    f = next(f for f in d["findings"] if f["check"] == "plain-container")
    assert f["location"].endswith("plain_list_heads.py:23") and "nn.ModuleList" in f["hint"]
    u = next(f for f in d["findings"] if f["check"] == "unregistered-parameter")
    assert sorted(u["data"]["names"])[:2] == ["heads[0].bias", "heads[0].weight"]


def expect_head_after_optimizer(d):
    f = next(f for f in d["findings"] if f["check"] == "param-not-in-optimizer")
    assert f["data"]["parameters"] == ["fc.weight", "fc.bias"]


def expect_lazy_head_in_forward(d):
    f = next(f for f in d["findings"] if f["check"] == "layer-in-forward")
    assert f["data"]["assigned"] == "model.head" and f["nodes"]


def expect_unused_branch(d):
    f = next(f for f in d["findings"] if f["check"] == "unused-parameter")
    assert f["data"]["parameters"] == ["aux.weight", "aux.bias"]
    assert "find_unused_parameters" in f["message"]


def expect_clean_registration(d):
    assert [f["check"] for f in d["findings"]] == ["tied-weights"]
    frozen = [p for p in d["parameters"] if not p["requires_grad"]]
    assert {p["module"] for p in frozen} == {"frozen_norm"}
    assert all(p["in_optimizer"] for p in d["parameters"] if p["requires_grad"])
    assert next(p for p in d["parameters"] if p["name"] == "mix.weight")["shape"] == [32, 32]


def _accumulation(d):
    return [(s["step"], s["backward_calls"], bool(s["carried"])) for s in d["accumulation"]]


def expect_grad_data_zero(d):
    assert _accumulation(d) == [(1, 1, False), (2, 1, False), (3, 1, False), (4, 1, False)]


def expect_zero_grad_per_epoch(d):
    carried = [c for _, _, c in _accumulation(d)]
    assert carried == [False, True, True, True, False, True, True, True]
    f = next(f for f in d["findings"] if f["check"] == "missing-zero-grad")
    assert f["data"]["max_summed"] == 4


def expect_grad_accumulation(d):
    assert _accumulation(d) == [(1, 4, False), (2, 4, False), (3, 4, False)]


def expect_validate_without_eval(d):
    f = next(f for f in d["findings"] if f["check"] == "train-mode-eval")
    assert f["data"]["modules"] == ["bn", "drop"] and f["data"]["bn_updated"] is True


def expect_train_in_eval_mode(d):
    f = next(f for f in d["findings"] if f["check"] == "eval-mode-train")
    assert f["data"]["steps"] == 3 and f["data"]["modules"] == ["1", "3"]


def expect_nan_sqrt(d):
    f = next(f for f in d["findings"] if f["check"] == "nonfinite-grad")
    assert f["data"]["parameters"] == ["model.proj.bias", "model.proj.weight"]
    assert "--find-nonfinite" in f["hint"]


def test_find_nonfinite_on_the_sample(tmp_path):
    d, _ = trace_sample("nan_sqrt.py", tmp_path, "--find-nonfinite")
    f = next(f for f in d["findings"] if f["check"] == "nonfinite-grad")
    assert f["data"]["origin"]["op"] == "SqrtBackward0" and f["nodes"] == [f["data"]["origin"]["node"]]


def expect_vanishing_sigmoid(d):
    f = next(f for f in d["findings"] if f["check"] == "vanishing-grad")
    assert f["data"]["first_norm"] < 1e-5 < f["data"]["last_norm"]


def expect_exploding_lr(d):
    f = next(f for f in d["findings"] if f["check"] == "exploding-grad")
    assert f["data"]["last_total"] > 100 * f["data"]["first_total"]


def expect_log_of_relu(d):
    assert d["gradients"]["nonfinite_losses"][0]["location"].endswith("log_of_relu.py:23")


def _finding(d, check):
    [f] = [f for f in d["findings"] if f["check"] == check]
    return f


def expect_nothing(d):
    assert [f for f in d["findings"]] == [] and d["run"]["status"] == "ok"


def expect_device_mismatch(d):
    f = _finding(d, "device-mismatch")
    assert f["location"].endswith("device_mismatch.py:24") and "is_available()" in f["hint"]
    assert f["data"]["cuda_available"] is False  # this runs where CUDA is missing (CI)
    assert d["backward_calls"] == 1 and graph_nodes(d)  # the clean step before it


def expect_device_attribute_not_moved(d):
    f = _finding(d, "device-mismatch")
    assert f["module"] == "model" and f["location"].endswith("device_attribute_not_moved.py:27")
    assert [r["name"] for r in f["data"]["odd"]] == ["scale"]
    assert f["data"]["odd"][0]["device"] == "cpu" and "register_buffer" in f["hint"]
    assert _finding(d, "unregistered-tensor")["data"]["attribute"] == "scale"


def expect_device_copy(d):
    f = _finding(d, "device-copy")
    assert f["location"].endswith("device_copy.py:29") and f["module"] == "model"
    assert (f["data"]["count"], f["data"]["forwards"], f["data"]["src"]) == (3, 3, "cpu")
    assert f["data"]["bytes"] == 3 * 16 * 8  # int64 positions, 16 per forward
    assert all(t["location"].endswith(":29") for t in d["transfers"])  # the batch: not counted


def expect_device_copy_ok(d):
    expect_nothing(d)
    assert d["transfers"] == [] and d["optimizer_steps"] == 3


def expect_inplace_softmax(d):
    f = _finding(d, "inplace-modified")
    assert f["location"].endswith("inplace_softmax.py:26") and f["module"] == "model.attn"
    assert f["data"]["inplace_op"]["op"] == "div_"
    assert f["data"]["node"]["op"] == "ExpBackward0" and len(f["nodes"]) == 1


def expect_conv_bias_before_bn(d):
    f = _finding(d, "bias-before-norm")
    assert f["data"]["pairs"] == [["model.features.0", "model.features.1"],
                                  ["model.features.3", "model.features.4"]]


def expect_batchnorm_batch_of_one(d):
    f = _finding(d, "batchnorm-small-batch")  # one finding for the model, both norms named
    assert f["data"]["modules"] == ["model.bn1", "model.bn2"]
    assert f["data"]["batch"] == 1 and f["data"]["small_calls"] == 8 and f["data"]["calls"] == 8


def expect_batchnorm_ok(d):
    expect_nothing(d)
    bn = next(m for m in d["modules"] if m["name"] == "bn")
    assert bn["batch_stats"] == [{"batch": 32, "per_channel": 32 * 16 * 16, "calls": 2}]


def expect_regression_shape_mismatch(d):
    found = [f for f in d["findings"] if f["check"] == "loss-broadcast"]
    assert sorted((f["location"].rsplit("/", 1)[-1], f["data"]["op"], f["data"]["calls"])
                  for f in found) == [("regression_shape_mismatch.py:28", "mse_loss", 3),
                                      ("regression_shape_mismatch.py:33", "sub", 2)]
    assert all(f["data"]["prediction"] == [64, 1] and f["data"]["target"] == [64]
               and f["data"]["result"] == [64, 64] for f in found)
    assert all("squeeze(-1)" in f["hint"] and f["severity"] == "error" for f in found)


def expect_regression_ok(d):
    expect_nothing(d)
    assert d["broadcasts"] == [] and d["backward_calls"] == 3


def expect_temperature_outside_model(d):
    [f] = [f for f in d["findings"] if f["check"] == "missing-zero-grad"]
    assert f["data"]["parameters"] == ["logit_scale"]  # named after the user's variable
    assert "model.zero_grad() leaves their gradients alone" in f["message"]
    assert d["findings"] == [f]


def expect_temperature_outside_model_ok(d):
    expect_nothing(d)
    assert all(s["carried"] == [] for s in d["accumulation"])


def expect_zero_grad_after_backward(d):
    [f] = [f for f in d["findings"] if f["check"] == "zero-grad-before-step"]
    assert f["location"].endswith("zero_grad_after_backward.py:25")
    assert f["data"]["steps"] == [1, 2, 3, 4] and f["data"]["parameters"] == 4
    assert d["findings"] == [f]


def _only(d, check):
    """The findings of ``check``; every other finding is info at most."""
    found = [f for f in d["findings"] if f["check"] == check]
    assert [f for f in d["findings"] if f["check"] != check and f["severity"] != "info"] == []
    return found


def _at(f):
    return f["location"].rsplit("/", 1)[-1]


def expect_quiet(d):
    """A near miss: nothing above info."""
    assert [f for f in d["findings"] if f["severity"] != "info"] == [], d["findings"]


def expect_dead_no_grad_forward(d):
    [f] = _only(d, "dead-training")
    assert f["severity"] == "error" and f["module"] == "model"
    assert _at(f) == "dead_no_grad_forward.py:30"  # the forward under no_grad
    assert "torch.no_grad()" in f["message"] and "all 4 steps" in f["message"]
    assert "dead_no_grad_forward.py:32" in f["message"]  # the requires_grad = True line
    assert f["data"]["dead_steps"] == [1, 2, 3, 4]
    assert d["backward_calls"] == 4 and not any("No backward() call" in n for n in d["notes"])
    assert any("4 backward call(s) ran" in n for n in d["notes"])


def expect_dead_argmax_loss(d):
    [f] = _only(d, "dead-training")
    assert _at(f) == "dead_argmax_loss.py:35" and "`argmax`" in f["message"]
    assert "requires_grad_()` at samples/dead_argmax_loss.py:37" in f["message"] \
        or "requires_grad_()` at dead_argmax_loss.py:37" in f["message"]
    assert f["module"] == "model"


def expect_detach_in_forward(d):
    [f] = _only(d, "graph-cut")
    assert _at(f) == "detach_in_forward.py:27" and "`.detach()`" in f["message"]
    assert f["data"]["modules"] == ["model.encoder.0", "model.encoder.2"]
    assert f["data"]["cut"]["in_forward"] is True and f["data"]["cut"]["module"] == ""
    assert "features.detach()" in f["message"]  # the source line


def expect_total_loss_keeps_graph(d):
    [f] = _only(d, "graph-kept-alive")
    assert _at(f) == "total_loss_keeps_graph.py:27" and f["data"]["variable"] == "total_loss"
    assert "a local of train_epoch()" in f["message"] and "loss.item()" in f["hint"]
    assert f["data"]["unit"] == "step" and f["data"]["nodes_per_step"] >= 5


def expect_rnn_state_not_detached(d):
    [f] = _only(d, "graph-kept-alive")
    assert f["severity"] == "error" and f["data"]["explains_failure"]
    assert _at(f) == "rnn_state_not_detached.py:44" and "`state`" in f["message"]
    assert "retain_graph=True at samples/rnn_state_not_detached.py:46" in f["message"] \
        or "retain_graph=True at rnn_state_not_detached.py:46" in f["message"]
    assert "s.detach() for s in state" in f["hint"]
    assert d["failure"]["kind"] == "inplace-modified"  # torch's error; not reported as such


def expect_clip_after_step(d):
    [f] = _only(d, "clip-grad-order")
    assert _at(f) == "clip_after_step.py:28" and f["data"] == {
        "calls": 4, "misplaced": 4, "why": "after-step"}
    assert "SGD.step()" in f["message"]


def expect_clip_scaled_grads(d):
    [f] = _only(d, "clip-grad-order")
    assert _at(f) == "clip_scaled_grads.py:33" and f["data"] == {
        "calls": 6, "misplaced": 5, "why": "scaled", "scale": 65536.0}
    assert "scaler.unscale_(optimizer)" in f["message"] and "unscale_" in f["hint"]


def expect_scheduler_before_step(d):
    [f] = _only(d, "scheduler-before-step")
    assert _at(f) == "scheduler_before_step.py:28" and f["data"]["initial_lr"] == 0.001
    assert "AdamW.step()" in f["message"]


def expect_optimizer_in_loop(d):
    [f] = _only(d, "optimizer-recreated")
    assert _at(f) == "optimizer_in_loop.py:24"
    assert f["data"] == {"optimizers": 5, "type": "Adam", "steps_each": 1}


def expect_softmax_over_batch(d):
    [f] = _only(d, "softmax-batch-dim")
    assert _at(f) == "softmax_over_batch.py:27" and f["module"] == "model.2"
    assert f["data"]["shape"] == [64, 5] and "dim=1" in f["hint"]


def expect_functional_dropout(d):
    [f] = _only(d, "dropout-ignores-eval")
    assert _at(f) == "functional_dropout.py:26" and f["module"] == "model"
    assert f["data"]["eval_calls"] == 1 and "training=self.training" in f["hint"]


def expect_forward_called_directly(d):
    [f] = _only(d, "forward-called-directly")
    assert f["severity"] == "error" and f["data"]["explains_failure"]
    assert _at(f) == "forward_called_directly.py:43" and f["module"] == "model.head"
    assert f["data"]["hooks"] == ["torch.nn.utils.prune.L1Unstructured"]
    ops = {(n["model"], n["module"]) for n in graph_nodes(d) if n["leaf"] is None}
    assert ("model", "head") in ops and ("model", "body.0") in ops  # attributed anyway
    assert [m["label"] for m in d["models"]] == ["model", "criterion"]


def expect_forward_super_ok(d):
    expect_nothing(d)
    ops = {(n["model"], n["module"]) for n in graph_nodes(d) if n["leaf"] is None}
    assert ("model", "head") in ops and ("model", "") in ops  # the * 2.0 of Scaled


EXPECT = {
    "dead_no_grad_forward.py": expect_dead_no_grad_forward,
    "dead_argmax_loss.py": expect_dead_argmax_loss,
    "no_grad_eval_ok.py": expect_nothing,
    "detach_in_forward.py": expect_detach_in_forward,
    "stop_gradient_ok.py": expect_quiet,
    "total_loss_keeps_graph.py": expect_total_loss_keeps_graph,
    "loss_item_ok.py": expect_quiet,
    "rnn_state_not_detached.py": expect_rnn_state_not_detached,
    "rnn_tbptt_ok.py": expect_nothing,
    "clip_after_step.py": expect_clip_after_step,
    "clip_scaled_grads.py": expect_clip_scaled_grads,
    "scheduler_before_step.py": expect_scheduler_before_step,
    "optimizer_in_loop.py": expect_optimizer_in_loop,
    "step_order_ok.py": expect_nothing,
    "softmax_over_batch.py": expect_softmax_over_batch,
    "softmax_dim_ok.py": expect_nothing,
    "functional_dropout.py": expect_functional_dropout,
    "functional_dropout_ok.py": expect_nothing,
    "forward_called_directly.py": expect_forward_called_directly,
    "forward_super_ok.py": expect_forward_super_ok,
    "gan_ok.py": expect_nothing,
    "zero_grad_after_backward.py": expect_zero_grad_after_backward,
    "temperature_outside_model.py": expect_temperature_outside_model,
    "temperature_outside_model_ok.py": expect_temperature_outside_model_ok,
    "regression_shape_mismatch.py": expect_regression_shape_mismatch,
    "regression_ok.py": expect_regression_ok,
    "device_mismatch.py": expect_device_mismatch,
    "device_attribute_not_moved.py": expect_device_attribute_not_moved,
    "device_buffer_registered.py": expect_nothing,
    "device_copy.py": expect_device_copy,
    "device_copy_ok.py": expect_device_copy_ok,
    "inplace_softmax.py": expect_inplace_softmax,
    "inplace_ok.py": expect_nothing,
    "conv_bias_before_bn.py": expect_conv_bias_before_bn,
    "batchnorm_batch_of_one.py": expect_batchnorm_batch_of_one,
    "batchnorm_ok.py": expect_batchnorm_ok,
    "log_softmax_nll.py": expect_nothing,
    "tensor_sum.py": expect_nothing,
    "exploding_lr.py": expect_exploding_lr,
    "log_of_relu.py": expect_log_of_relu,
    "grad_data_zero.py": expect_grad_data_zero,
    "zero_grad_per_epoch.py": expect_zero_grad_per_epoch,
    "grad_accumulation.py": expect_grad_accumulation,
    "validate_without_eval.py": expect_validate_without_eval,
    "train_in_eval_mode.py": expect_train_in_eval_mode,
    "nan_sqrt.py": expect_nan_sqrt,
    "vanishing_sigmoid.py": expect_vanishing_sigmoid,
    "plain_list_heads.py": expect_plain_list_heads,
    "head_after_optimizer.py": expect_head_after_optimizer,
    "lazy_head_in_forward.py": expect_lazy_head_in_forward,
    "unused_branch.py": expect_unused_branch,
    "clean_registration.py": expect_clean_registration,
    "layers_in_forward.py": expect_layers_in_forward,
    "handwritten_batchnorm.py": expect_handwritten_batchnorm,
    "handwritten_batchnorm_no_detach.py": expect_handwritten_batchnorm_no_detach,
    "forgot_zero_grad.py": expect_forgot_zero_grad,
    "builtin_sum.py": expect_builtin_sum,
    "softmax_cross_entropy.py": expect_softmax_cross_entropy,
    "clean_cnn.py": expect_clean_cnn,
    "clean_transformer.py": expect_clean_transformer,
    "clean_lstm.py": expect_clean_lstm,
}


def documented_findings(name):
    """(check, severity) pairs the sample's docstring promises under "gradscope should report",
    limited to checks that exist so far (later checks are promised by the docstrings already)."""
    with open(os.path.join(REPO, "samples", name)) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    section = doc.split("gradscope should report", 1)[1] if "gradscope should report" in doc else ""
    pairs = set(re.findall(r"^\s*-?\s*([a-z]+(?:-[a-z]+)+) \((error|warning|info)\)", section,
                           flags=re.M))
    known = {c.id for c in all_checks()}
    return {p for p in pairs if p[0] in known}


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_through_the_cli(name, tmp_path):
    d, output = trace_sample(name, tmp_path)
    EXPECT[name](d)
    assert "gradscope script trace" in output
    found = {(f["check"], f["severity"]) for f in d["findings"]}
    assert found == documented_findings(name), "the sample's docstring and its findings differ"


def test_docstrings_promise_what_the_key_samples_show():
    assert documented_findings("layers_in_forward.py") == {("layer-in-forward", "error")}
    assert documented_findings("handwritten_batchnorm.py") == {("unregistered-tensor", "warning")}
    assert documented_findings("clean_cnn.py") == set()


@pytest.mark.parametrize("target,inputs", [
    ("clean_cnn.py:SmallResNet", ["--input", "2,3,32,32"]),
    ("clean_transformer.py:TinyGPT", ["--input", "2,32:long"]),
    ("clean_lstm.py:build", []),
])
def test_samples_as_model_targets(target, inputs, tmp_path):
    d, _ = trace_sample(target, tmp_path, *inputs)
    assert d["backward_calls"] == 1 and all(p["in_graph"] for p in d["parameters"])
