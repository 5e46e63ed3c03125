"""gradscope.trace(): outputs of every shape, loss choice, errors, and no side effects."""

import pytest
import torch
from torch import nn

import gradscope
from gradscope.graph import LEAF_INPUT

from models import CNN, DataclassOut, DictOut, HFStyle, LSTMModel, MLP, TwoHeads


def test_scalar_output_is_the_loss_and_non_scalar_is_summed():
    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(x).mean()

    r = gradscope.trace(Scalar(), torch.randn(4, 3))
    assert r.graph.nodes[0].op == "MeanBackward0"
    r = gradscope.trace(MLP(), torch.randn(4, 8))
    assert r.graph.nodes[0].op == "SumBackward0"
    assert r.trace.backward_calls == 1


@pytest.mark.parametrize("model,inputs", [
    (TwoHeads(), (torch.randn(2, 6),)),
    (DictOut(), (torch.randn(2, 4),)),
    (DataclassOut(), (torch.randn(2, 4),)),
    (HFStyle(), (torch.randint(0, 10, (2, 3)),)),
])
def test_structured_outputs(model, inputs):
    r = gradscope.trace(model, *inputs)
    assert any(n.param for n in r.graph.nodes)
    assert all(p["in_graph"] for p in r.trace.parameters)


def test_hf_style_loss_entry_and_kwargs():
    ids = torch.randint(0, 10, (2, 3))
    r = gradscope.trace(HFStyle(), ids, labels=ids)
    assert r.graph.nodes[0].op == "NllLossBackward0"
    assert "loss" in next(m for m in r.trace.modules if m["name"] == "")["output"]


def test_loss_fn_and_bad_loss_fn():
    r = gradscope.trace(HFStyle(), torch.randint(0, 10, (2, 3)),
                        loss_fn=lambda out: out.logits.mean())
    assert r.graph.nodes[0].op == "MeanBackward0"
    with pytest.raises(gradscope.InputError, match="one-element tensor"):
        gradscope.trace(MLP(), torch.randn(2, 8), loss_fn=lambda out: out)


def test_non_tensor_output_is_a_clear_error_with_a_partial_report(no_leaks):
    class NoneOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            self.fc(x)

    with pytest.raises(gradscope.InputError, match="returned None") as info:
        gradscope.trace(NoneOut(), torch.randn(1, 2))
    report = info.value.report
    assert next(m for m in report.trace.modules if m["name"] == "fc")["calls"] == 1


def test_no_parameters_is_noted():
    r = gradscope.trace(nn.Tanh(), torch.randn(3, requires_grad=True))
    assert any("no parameters" in n for n in r.trace.notes)
    assert [n.leaf for n in r.graph.nodes if n.op == "AccumulateGrad"] == [LEAF_INPUT]


def test_rejects_what_is_not_a_module():
    with pytest.raises(gradscope.InputError, match="expects an nn.Module"):
        gradscope.trace(lambda x: x, torch.randn(2))


def test_integer_only_inputs_work():
    r = gradscope.trace(LSTMModel(), torch.randint(0, 20, (2, 4)))
    assert any(n.op.startswith("Embedding") for n in r.graph.nodes if n.op)


# -- no side effects ----------------------------------------------------------------------------
def test_hooks_removed_and_model_state_restored(no_leaks):
    model = CNN()
    model.features.eval()              # mixed modes must come back exactly
    fired = []
    model.head.register_forward_hook(lambda m, i, o: fired.append("fwd"))
    model.head.weight.register_hook(lambda g: fired.append("grad"))
    model.head.weight.grad = torch.full_like(model.head.weight, 7.0)
    before_bn = model.features[1].running_mean.clone()
    model.features[1].train()
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    gradscope.trace(model, x)
    assert torch.equal(torch.rand(3), expected_next)        # RNG stream untouched
    assert fired == ["fwd", "grad"]                          # the user's hooks still fire
    assert torch.all(model.head.weight.grad == 7.0)          # the user's .grad is back
    assert model.features[0].bias.grad is None
    assert torch.equal(model.features[1].running_mean, before_bn)  # BatchNorm stats restored
    assert model.training is True and model.features[0].training is False
    assert model.features[1].training is True
    assert not model.head._forward_hooks or len(model.head._forward_hooks) == 1
    assert len(model._forward_pre_hooks) == 0 and len(model._forward_hooks) == 0


def test_training_numbers_identical_with_and_without_a_trace():
    def train(use_gradscope):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
        for step in range(5):
            if use_gradscope and step == 2:
                gradscope.trace(model, x)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train(False), train(True)):
        assert torch.equal(a, b)


def test_gradient_norms_are_recorded():
    r = gradscope.trace(MLP(), torch.randn(4, 8))
    norms = {p["name"]: p["grad_norm"] for p in r.trace.parameters}
    assert all(isinstance(v, float) and v > 0 for v in norms.values())


def test_report_repr_and_save_rejects_unknown_extension(tmp_path):
    r = gradscope.trace(MLP(), torch.randn(4, 8))
    assert "nodes" in repr(r)
    with pytest.raises(ValueError, match="extension"):
        r.save(str(tmp_path / "graph.png"))
    assert not list(tmp_path.iterdir())


def test_module_parameter_counts_are_the_modules_own_under_a_renaming_wrapper():
    """checkpoint_wrapper lists its parameters without its own prefix: a module's count is
    read from its ``_parameters`` (found in review: counts from the listing's names were 0)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    t = gradscope.trace(checkpoint_wrapper(body), torch.randn(3, 4)).trace
    counts = {m["name"]: m["parameters"] for m in t.modules}
    assert counts["_checkpoint_wrapped_module.0"] == 40
    assert counts["_checkpoint_wrapped_module.2"] == 18
    assert counts["_checkpoint_wrapped_module.1"] == 0 and counts[""] == 0


def test_tied_weights_count_in_every_module_that_holds_them():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.emb(x))

    t = gradscope.trace(Tied(), torch.randint(0, 10, (2, 3))).trace
    counts = {m["name"]: m["parameters"] for m in t.modules}
    assert counts == {"": 0, "emb": 80, "head": 80}
