"""The training bugs users post (dead training, cut graphs, graphs kept alive, step order, ops
that silently do the wrong thing, forward called directly), as users write them, each beside
the correct code that looks like it. Scripts run through ``trace_script`` (script mode, op
watch on) or ``gradscope.watch`` (no op watch); lines are found by a ``# <-`` marker."""
import textwrap

import pytest
import torch
from torch import nn

import gradscope
from gradscope.runner import trace_script

HEADER = """\
import torch
from torch import nn
import torch.nn.functional as F
torch.manual_seed(0)
X, Y = torch.randn(32, 12), torch.randint(0, 4, (32,))
def mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
"""


def run(tmp_path, body, name="train.py"):
    source = HEADER + textwrap.dedent(body)
    path = tmp_path / name
    path.write_text(source)
    outcome = trace_script(str(path))
    return outcome.report.trace, outcome.error, source


def line(source, marker):
    for k, text in enumerate(source.splitlines(), 1):
        if marker in text:
            return k
    raise AssertionError(marker)


def found(trace, check):
    return [f for f in trace.findings if f.check == check]


def serious(trace):
    return [(f.check, f.severity) for f in trace.findings if f.severity != "info"]


# -- dead training --------------------------------------------------------------------------------
LOOP = """
model = mlp()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(3):
    opt.zero_grad()
{body}
    loss.backward()
    opt.step()
"""


def loop(body):
    return LOOP.format(body=textwrap.indent(textwrap.dedent(body), "    "))


@pytest.mark.parametrize("body, words", [
    (["loss = torch.tensor(F.cross_entropy(model(X), Y).item(), requires_grad=True)  # <-"],
     "`.item()`"),
    (["values = model(X).tolist()  # <-",
      "loss = torch.tensor(values, requires_grad=True).mean()"], "`.tolist()`"),
    (["with torch.inference_mode():",
      "    out = model(X)  # <-",
      "loss = F.cross_entropy(out.clone(), Y).requires_grad_()"], "torch.inference_mode()"),
    (["loss = F.cross_entropy(model(X).data, Y)  # <-",
      "loss.requires_grad = True"], "`.data`"),
])
def test_dead_training_names_the_cause_and_its_line(tmp_path, body, words):
    marker = "# <-"
    trace, error, source = run(tmp_path, loop("\n".join(body)))
    assert error is None
    [f] = found(trace, "dead-training")
    assert f.severity == "error" and words in f.message and "all 3 steps" in f.message
    assert f.location.endswith(f"train.py:{line(source, marker)}")
    assert f.module == "model"
    # (a tensor made with requires_grad=True feeding the loss is also unregistered-parameter)
    assert {c for c, _ in serious(trace)} - {"unregistered-parameter"} == {"dead-training"}
    assert not any("No backward() call was seen" in n for n in trace.notes)


def test_dead_training_without_any_backward(tmp_path):
    trace, _, source = run(tmp_path, """
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(X), Y)
            opt.step()  # <- loss.backward() forgotten
    """)
    [f] = found(trace, "dead-training")
    assert "No backward() call ran" in f.message and "loss.backward()" in f.hint
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_dead_training_when_the_loss_uses_another_model(tmp_path):
    trace, _, source = run(tmp_path, """
        import copy
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            frozen_copy = copy.deepcopy(model)
            opt.zero_grad()
            loss = F.cross_entropy(frozen_copy(X), Y)
            loss.backward()  # <-
            opt.step()
    """)
    [f] = found(trace, "dead-training")
    assert "does not depend on any parameter this optimizer updates" in f.message
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_the_error_that_requires_grad_silences_is_explained(tmp_path):
    trace, error, source = run(tmp_path, loop("""
        with torch.no_grad():
            out = model(X)  # <-
        loss = F.cross_entropy(out, Y)"""))
    assert isinstance(error, RuntimeError) and trace.failure["kind"] == "no-grad-loss"
    [f] = found(trace, "dead-training")
    assert f.data["explains_failure"] and "element 0 of tensors" in f.message
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_dead_training_under_watch_names_what_it_can(no_leaks):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            with torch.no_grad():
                out = model(torch.randn(8, 4))
            loss = out.pow(2).mean()
            loss.requires_grad_()
            loss.backward()
            opt.step()
    [f] = found(scope.report().trace, "dead-training")
    assert "torch.no_grad()" in f.message and "test_training_bugs.py" in f.location
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            loss = torch.tensor(model(torch.randn(8, 4)).pow(2).mean().item(),
                                requires_grad=True)
            loss.backward()
            opt.step()
    [f] = found(scope.report().trace, "dead-training")
    assert "gradscope trace" in f.message  # no op watch: it says how to find the line


@pytest.mark.parametrize("body", [
    # frozen parameters left in the optimizer; the rest trains
    ["model[0].requires_grad_(False)", "loss = F.cross_entropy(model(X), Y)"],
    # argmax and .item() for metrics beside a real loss
    ["logits = model(X)", "acc = (logits.argmax(1) == Y).float().mean().item()",
     "loss = F.cross_entropy(logits, Y)"],
])
def test_no_dead_training_on_the_code_that_looks_like_it(tmp_path, body):
    trace, error, _ = run(tmp_path, loop("\n".join(body)))
    assert error is None and serious(trace) == []


def test_one_step_before_training_is_not_dead_training(tmp_path):
    trace, _, _ = run(tmp_path, """
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.step()  # warms the scheduler up, say: nothing to update yet
        for step in range(6):
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    """)
    assert found(trace, "dead-training") == []


# -- where the graph was cut ----------------------------------------------------------------------
NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(12, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.enc(x)
{cut}
        return self.head(h)

model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(2):
    opt.zero_grad()
    F.cross_entropy(model(X), Y).backward()
    opt.step()
"""


@pytest.mark.parametrize("cut, op", [
    ("h = torch.tensor(h.tolist())  # <-", "tolist"),
    ("h = h.data  # <-", "data"),
    ("h = torch.tensor(h)  # <-", "torch.tensor"),
    ("import numpy as np\n        h = torch.from_numpy(np.tanh(h.detach().numpy()))  # <-",
     "detach"),
])
def test_graph_cut_names_the_line_where_history_was_dropped(tmp_path, cut, op):
    trace, error, source = run(tmp_path, NET.format(cut="        " + cut))
    assert error is None
    [f] = found(trace, "graph-cut")
    assert f.data["cut"]["op"] == op and f.data["modules"] == ["model.enc"]
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")
    assert found(trace, "unused-parameter") == []  # graph-cut says it, with the line


def test_an_unused_module_without_a_cut_is_still_unused_parameter(tmp_path):
    trace, _, _ = run(tmp_path, NET.format(cut="        h = torch.zeros_like(h)"))
    assert found(trace, "graph-cut") == [] and len(found(trace, "unused-parameter")) == 1


def test_a_detached_branch_that_also_trains_another_way_is_quiet(tmp_path):
    trace, _, _ = run(tmp_path, NET.format(
        cut="        h = h + 0.1 * h.detach()  # both paths: enc still trains"))
    assert serious(trace) == []


# -- graphs kept alive ----------------------------------------------------------------------------
def test_the_rnn_state_crash_without_retain_graph(tmp_path):
    trace, error, source = run(tmp_path, """
        rnn, head = nn.GRU(12, 16, batch_first=True), nn.Linear(16, 4)
        opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-2)
        h = None
        for step in range(3):
            opt.zero_grad()
            out, h = rnn(X.view(4, 8, 12), h)  # <-
            F.cross_entropy(head(out[:, -1]), Y[:4]).backward()
            opt.step()
    """)
    assert isinstance(error, RuntimeError) and trace.failure["kind"] == "graph-freed"
    [f] = found(trace, "graph-kept-alive")
    assert f.severity == "error" and f.data["explains_failure"] and "`h`" in f.message
    assert f.location.endswith(f"train.py:{line(source, '# <-')}") and "detach" in f.hint


def test_a_gan_that_forgets_to_detach_for_the_discriminator(tmp_path):
    trace, error, source = run(tmp_path, """
        G, D = nn.Linear(4, 12), nn.Linear(12, 1)
        g_opt, d_opt = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
        for step in range(2):
            fake = G(torch.randn(8, 4))
            d_opt.zero_grad()
            (D(fake).mean() - D(X[:8]).mean()).backward()
            d_opt.step()
            g_opt.zero_grad()
            (-D(fake).mean()).backward()  # <- G's graph was freed by D's backward
            g_opt.step()
    """)
    assert trace.failure["kind"] == "graph-freed"
    [f] = found(trace, "graph-kept-alive")
    assert "made by G" in f.message and "fake.detach()" in f.hint


STEP = ["    opt.zero_grad()", "    loss = F.cross_entropy(model(X), Y)",
        "    loss.backward()", "    opt.step()"]


@pytest.mark.parametrize("body, variable", [
    (["ema = None", "for step in range(12):", *STEP,
      "    ema = loss if ema is None else 0.9 * ema + 0.1 * loss  # <-"], "ema"),
    (["losses = []", "for step in range(12):", *STEP, "    losses.append(loss)  # <-"],
     "losses"),
])
def test_graph_kept_alive_by_an_ema_or_a_list(tmp_path, body, variable):
    trace, _, source = run(tmp_path, "model = mlp()\n"
                           "opt = torch.optim.Adam(model.parameters(), lr=1e-2)\n"
                           "def train():\n" + textwrap.indent("\n".join(body), "    ")
                           + "\n    return None\ntrain()\n")
    [f] = found(trace, "graph-kept-alive")
    assert f.data["variable"] == variable and f.data["nodes_per_step"] > 0
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_evaluation_without_no_grad_accumulating_a_loss(tmp_path):
    trace, _, source = run(tmp_path, """
        model = mlp().eval()
        total = 0.0
        for i in range(0, 32, 4):
            total += F.cross_entropy(model(X[i:i + 4]), Y[i:i + 4])  # <-
    """)
    [f] = found(trace, "graph-kept-alive")
    assert "no backward() consumes it" in f.message and "torch.no_grad()" in f.hint
    assert f.data["bytes_per_step"] > 0 and f.data["unit"] == "forward"


def test_graph_kept_alive_under_watch(no_leaks):
    model = nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total = 0
    with gradscope.watch(model, opt) as scope:
        for _ in range(8):
            opt.zero_grad()
            loss = model(torch.randn(4, 6)).pow(2).mean()
            loss.backward()
            opt.step()
            total += loss
    [f] = found(scope.report().trace, "graph-kept-alive")
    assert f.data["variable"] == "total" and "test_training_bugs.py" in f.location


@pytest.mark.parametrize("body", [
    # running numbers and detached tensors
    """total, history = 0.0, []
    for step in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(X), Y)
        loss.backward()
        opt.step()
        total += loss.item()
        history.append(loss.detach())""",
    # micro-batch losses summed before one backward (a list and a sum, within one step)
    """for step in range(6):
        opt.zero_grad()
        parts, running = [], 0
        for k in range(4):
            parts.append(F.cross_entropy(model(X[k * 8:(k + 1) * 8]), Y[k * 8:(k + 1) * 8]))
            running = running + parts[-1]
        running.backward()
        opt.step()""",
    # truncated BPTT
    """rnn = nn.GRU(12, 16, batch_first=True)
    opt2 = torch.optim.Adam(rnn.parameters())
    h = None
    for step in range(6):
        opt2.zero_grad()
        out, h = rnn(X.view(4, 8, 12), None if h is None else h.detach())
        out.pow(2).mean().backward()
        opt2.step()""",
    # a gradient penalty through torch.autograd.grad(create_graph=True)
    """for step in range(6):
        opt.zero_grad()
        x = X.clone().requires_grad_(True)
        out = model(x)
        g, = torch.autograd.grad(out.sum(), x, create_graph=True)
        (F.cross_entropy(out, Y) + g.pow(2).mean()).backward()
        opt.step()""",
])
def test_no_graph_kept_alive_on_the_code_that_looks_like_it(tmp_path, body):
    trace, error, _ = run(tmp_path, """
model = mlp()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
""" + textwrap.dedent(body).replace("\n    ", "\n") + "\n")
    assert error is None and serious(trace) == []


# -- step order and optimizer lifetime -----------------------------------------------------------
def test_clip_before_backward(tmp_path):
    trace, error, source = run(tmp_path, """
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            opt.zero_grad()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # <-
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    """)
    [f] = found(trace, "clip-grad-order")
    assert error is None and f.data["why"] == "before-backward"
    assert "clip_grad_norm_" in f.message
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_clipping_seen_when_imported_by_name_after_the_capture_opened(tmp_path):
    trace, _, _ = run(tmp_path, """
        from torch.nn.utils import clip_grad_norm_
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
            clip_grad_norm_(model.parameters(), 1.0)
    """)
    assert found(trace, "clip-grad-order")[0].data["why"] == "after-step"


def test_a_gradscaler_skipping_the_first_step_is_not_scheduler_order(no_leaks):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    scaler = torch.amp.GradScaler("cpu")
    with gradscope.watch(model, opt) as scope:
        for step in range(3):
            opt.zero_grad()
            loss = model(torch.randn(4, 4)).mean() * (float("inf") if step == 0 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)  # skipped at step 0: Inf gradients
            scaler.update()
            sched.step()
    assert found(scope.report().trace, "scheduler-before-step") == []
    assert any(e["kind"] == "scaler_skip" for e in scope.report().trace.events)


def test_a_new_stateless_optimizer_per_step_is_harmless(tmp_path):
    trace, _, _ = run(tmp_path, """
        model = mlp()
        for step in range(4):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    """)
    assert found(trace, "optimizer-recreated") == []


def test_optimizers_built_every_step_are_not_kept_alive(no_leaks):
    import gc
    import weakref
    model = nn.Linear(4, 2)
    refs = []
    with gradscope.watch(model):
        for _ in range(4):
            opt = torch.optim.Adam(model.parameters())
            refs.append(weakref.ref(opt))
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
        del opt
        gc.collect()
        assert sum(r() is not None for r in refs) == 0  # each one let go while watching


# -- ops that silently do the wrong thing ---------------------------------------------------------
def test_implicit_softmax_dim_on_a_sequence_output(no_leaks):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(20, 8), nn.Linear(8, 5)

        def forward(self, ids):
            return self.out(self.emb(ids))  # (N, L, C)

    tokens, tags = torch.randint(0, 20, (4, 6)), torch.randint(0, 5, (4, 6))
    with pytest.warns(UserWarning, match="Implicit dimension"):
        report = gradscope.trace(Tagger(), tokens, loss_fn=lambda out: torch.nn.functional.nll_loss(
            torch.nn.functional.log_softmax(out).reshape(-1, 5), tags.reshape(-1)))
    [f] = found(report.trace, "softmax-batch-dim")
    assert f.data["shape"] == [4, 6, 5] and f.data["dim"] == 0


def test_functional_dropout_without_the_mode_even_if_never_evaluated(tmp_path):
    trace, _, source = run(tmp_path, """
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(12, 12)
                self.p = 0.1

            def forward(self, x):
                x = F.dropout(self.fc(x), p=0.2)  # <- a
                q = k = v = x[None]
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p)  # <- b
                y = F.dropout(y[0], 0.2, self.training)
                return y

        model = nn.Sequential(Block(), nn.Linear(12, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    """)
    got = sorted((f.data["fn"], f.location.rsplit(":", 1)[1]) for f in
                 found(trace, "dropout-ignores-eval"))
    assert got == sorted([("dropout", str(line(source, "# <- a"))),
                          ("scaled_dot_product_attention", str(line(source, "# <- b")))])


# -- forward called directly ----------------------------------------------------------------------
def test_forward_called_directly_is_attributed_and_reported(tmp_path):
    trace, _, source = run(tmp_path, """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 4)

            def forward(self, x):
                return self.b(torch.relu(self.a(x)))

        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            F.cross_entropy(net.forward(X), Y).backward()  # <-
            opt.step()
    """)
    [f] = found(trace, "forward-called-directly")
    assert f.severity == "info" and f.module == "net"
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")
    assert [m["label"] for m in trace.models if m["parameters"]] == ["net"]
    ops = {(n.model, n.module) for n in trace.graph.nodes if n.leaf is None}
    assert {("net", "a"), ("net", "b"), ("net", "")} <= ops  # relu: net's own op


def test_forward_called_directly_skipping_a_weight_norm_hook(tmp_path):
    trace, error, _ = run(tmp_path, """
        import warnings
        warnings.simplefilter("ignore")
        layer = torch.nn.utils.weight_norm(nn.Linear(12, 4))
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            F.cross_entropy(layer.forward(X), Y).backward()
            opt.step()
    """)
    [f] = found(trace, "forward-called-directly")
    assert "WeightNorm" in f.message and f.data["explains_failure"]
    assert trace.failure["kind"] == "graph-freed"


# -- found in review: the same bugs written inside a forward -------------------------------------
def test_a_pruned_head_called_with_forward_inside_the_models_forward(tmp_path):
    trace, error, source = run(tmp_path, """
        import torch.nn.utils.prune as prune
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.head = nn.Linear(12, 16), nn.Linear(16, 4)

            def forward(self, x):
                return self.head.forward(torch.relu(self.body(x)))  # <-

        model = Net()
        prune.l1_unstructured(model.head, "weight", amount=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    """)
    assert trace.failure["kind"] == "graph-freed"
    [f] = found(trace, "forward-called-directly")
    assert f.data["explains_failure"] and f.module == "model.head"
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")
    assert found(trace, "graph-kept-alive") == []  # not blamed on a kept loss


def test_a_user_hook_skipped_by_forward_inside_the_models_forward(tmp_path):
    trace, _, source = run(tmp_path, """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = nn.Sequential(nn.Linear(12, 16), nn.ReLU())
                self.head = nn.Linear(16, 4)

            def forward(self, x):
                return self.head(self.enc.forward(x))  # <-

        model = Net()
        model.enc.register_forward_hook(lambda m, i, o: o * 0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(2):
            opt.zero_grad()
            F.cross_entropy(model(X), Y).backward()
            opt.step()
    """)
    [f] = found(trace, "forward-called-directly")
    assert f.severity == "warning" and f.module == "model.enc"
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_the_line_that_grows_the_variable_is_in_its_own_scope(tmp_path):
    trace, _, source = run(tmp_path, """
        def evaluate(model):
            total = 0.0
            for i in range(2):
                total += F.cross_entropy(model(X), Y).item()
            return total
        model = mlp()
        opt = torch.optim.Adam(model.parameters())
        total = 0
        for step in range(8):
            opt.zero_grad()
            loss = F.cross_entropy(model(X), Y)
            loss.backward()
            opt.step()
            total += loss  # <-
    """)
    [f] = found(trace, "graph-kept-alive")
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_a_nested_tensor_softmax_does_not_stop_the_report(tmp_path):
    trace, error, _ = run(tmp_path, """
        lin = nn.Linear(12, 4)
        nt = torch.nested.nested_tensor([torch.randn(3, 12), torch.randn(5, 12)],
                                        layout=torch.jagged)
        out = torch.softmax(lin(nt), dim=-1)
        out.values().sum().backward()
    """)
    assert error is None
    trace.to_json()  # plain data all the way (no SymInt in the records)


@pytest.mark.parametrize("how", ["norm", "value", "value via the module"])
def test_clip_after_step_under_watch_with_the_usual_import(no_leaks, how):
    from torch.nn.utils import clip_grad_norm_, clip_grad_value_  # imported before the session
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            if how == "norm":
                clip_grad_norm_(model.parameters(), 1.0)
            elif how == "value":
                clip_grad_value_(model.parameters(), 0.5)
            else:
                torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)  # seen once, not twice
    [f] = found(scope.report().trace, "clip-grad-order")
    assert f.data == {"calls": 2, "misplaced": 2, "why": "after-step"}
    assert "test_training_bugs.py" in f.location
    clips = [e for e in scope.report().trace.events if e["kind"] == "clip"]
    assert len(clips) == 2 and all(e["parameters"] == 2 and e["optimizer_ids"] == [1]
                                   for e in clips)


@pytest.mark.parametrize("unscale, enabled, clip, expect", [
    (False, True, "norm", "scaled"),    # the bug: clipping the scaled gradients
    (False, True, "value", "scaled"),   # clip_grad_value_ likewise
    (True, True, "norm", None),         # unscale_ first, as torch's AMP notes say
    (False, False, "norm", None),       # a disabled scaler scales nothing
    (True, True, "inf", None),          # clip_grad_norm_(params, inf): a measured norm
    (False, True, "inf", None),         # (even on scaled gradients: it changes nothing)
])
def test_clipping_gradscalers_scaled_gradients_under_watch(no_leaks, unscale, enabled, clip,
                                                            expect):
    # both imported by name before the session opens: seen through the helpers they call
    from torch.nn.utils import clip_grad_norm_, clip_grad_value_
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    scaler = torch.amp.GradScaler("cpu", enabled=enabled)  # made before the session, too
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with gradscope.watch(model, opt) as scope:
        for _ in range(5):
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            if unscale:
                scaler.unscale_(opt)
            if clip == "value":
                clip_grad_value_(model.parameters(), 0.5)
            else:
                clip_grad_norm_(model.parameters(), float("inf") if clip == "inf" else 1.0)
            scaler.step(opt)
            scaler.update()
    findings = found(scope.report().trace, "clip-grad-order")
    if expect is None:
        assert findings == []
    else:
        [f] = findings
        # (the first clip comes before the scaler's first step, which tells which optimizers
        # it steps: not judged)
        assert f.data["why"] == expect and f.data["misplaced"] == 4
        assert "test_training_bugs.py" in f.location


@pytest.mark.parametrize("second", ["no scaler", "its own scaler"])
def test_a_correct_clip_beside_another_amp_loop_is_quiet(no_leaks, second):
    # a generator under AMP (unscaled before clipping) and a discriminator trained either in
    # fp32 without any scaler, or with a scaler of its own: neither clip is on scaled grads
    torch.manual_seed(0)
    gen, disc = nn.Linear(8, 8), nn.Linear(8, 1)
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
    scaler_g = torch.amp.GradScaler("cpu")
    scaler_d = torch.amp.GradScaler("cpu") if second == "its own scaler" else None
    with gradscope.watch(gen, opt_g) as scope:
        for _ in range(5):
            x = torch.randn(4, 8)
            opt_g.zero_grad()
            scaler_g.scale(gen(x).pow(2).mean()).backward()
            scaler_g.unscale_(opt_g)
            torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
            scaler_g.step(opt_g)
            scaler_g.update()
            opt_d.zero_grad()
            loss = disc(x).pow(2).mean()
            if scaler_d is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
                opt_d.step()
            else:
                scaler_d.scale(loss).backward()
                scaler_d.unscale_(opt_d)
                torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
                scaler_d.step(opt_d)
                scaler_d.update()
    assert found(scope.report().trace, "clip-grad-order") == []


def test_two_optimizers_one_scaler_each_unscaled_is_quiet(no_leaks):
    # a GAN-style loop: one GradScaler, each optimizer unscaled before its own clipping;
    # and a warm-up optimizer over the same parameters, still alive, never unscaled again
    torch.manual_seed(0)
    d, g = nn.Linear(4, 1), nn.Linear(2, 4)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(g.parameters(), lr=0.1)
    warmup_g = torch.optim.SGD(g.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with gradscope.watch(d, opt_d) as scope:
        for _ in range(4):
            for opt, params, loss_of in (
                    (opt_d, d.parameters(), lambda: d(g(torch.randn(8, 2)).detach()).mean()),
                    (opt_g, g.parameters(), lambda: -d(g(torch.randn(8, 2))).mean())):
                opt.zero_grad()
                scaler.scale(loss_of()).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(list(params), 1.0)
                scaler.step(opt)
            scaler.update()
    assert found(scope.report().trace, "clip-grad-order") == []
    assert warmup_g.param_groups  # kept alive on purpose through the loop


@pytest.mark.parametrize("loss, words", [
    ("((torch.round(torch.sigmoid(model(X)[:, 0])) - (Y > 1).float()) ** 2).mean()",
     "`torch.round`"),
    ("F.nll_loss(torch.log(F.softmax(model(X[:1]), dim=0)), Y[:1])", "constant 1"),
])
def test_dead_training_on_gradients_that_are_all_zero(tmp_path, loss, words):
    trace, _, _ = run(tmp_path, loop(f"loss = {loss}"))
    [f] = found(trace, "dead-training")
    assert f.data["zero_gradients"] and words in f.message


def test_a_threshold_loss_names_the_comparison(tmp_path):
    trace, _, source = run(tmp_path, loop(
        "pred = (torch.sigmoid(model(X)[:, 0]) > 0.5).float()  # <-\n"
        "loss = F.mse_loss(pred, (Y > 1).float())\n"
        "loss.requires_grad = True"))
    [f] = found(trace, "dead-training")
    assert "a comparison (`>`" in f.message
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


@pytest.mark.parametrize("accumulate, variable", [
    ("stats['loss'] += loss  # <-", "stats['loss']"),
    ("history['loss'].append(loss)  # <-", "history['loss']"),
    ("meter.update(loss)  # <-", "meter.total"),
    # a list of plain floats that tensors with history join later (read by kinds first)
    ("floats.append(loss)  # <-", "floats"),
    ("attrs.loss += loss  # <-", "attrs.loss"),  # an AttrDict: its own __dict__
    ("total += loss  # <-", "total"),  # beside a list of objects of an unhashable class
])
def test_accumulators_in_dicts_and_objects(tmp_path, accumulate, variable):
    trace, _, source = run(tmp_path, f"""
class Meter:
    def __init__(self):
        self.total = 0.0
    def update(self, value):
        self.total += value
model = mlp()
opt = torch.optim.Adam(model.parameters())
class AttrDict(dict):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__ = self
class Kind(type):
    def __eq__(cls, other):  # (and so no __hash__: the class cannot go into a set)
        return cls is other
class Record(metaclass=Kind):
    pass
stats, history, meter = {{"loss": 0.0}}, {{"loss": []}}, Meter()
floats, attrs, records, total = [0.5] * 100, AttrDict(loss=0.0), [Record(), Record()], 0.0
for step in range(10):
    opt.zero_grad()
    loss = F.cross_entropy(model(X), Y)
    loss.backward()
    opt.step()
    {accumulate}
""")
    [f] = found(trace, "graph-kept-alive")
    assert f.data["variable"] == variable
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


def test_validation_without_no_grad_inside_a_training_script(tmp_path):
    trace, _, source = run(tmp_path, """
        model = mlp()
        opt = torch.optim.Adam(model.parameters())
        def validate():
            model.eval()
            val_loss = 0
            for i in range(0, 32, 4):
                val_loss += F.cross_entropy(model(X[i:i + 4]), Y[i:i + 4])  # <-
            model.train()
            return float(val_loss)
        for epoch in range(2):
            for step in range(3):
                opt.zero_grad()
                F.cross_entropy(model(X), Y).backward()
                opt.step()
            validate()
    """)
    [f] = found(trace, "graph-kept-alive")
    assert "torch.no_grad()" in f.hint and f.data["unit"] == "forward"
    assert f.location.endswith(f"train.py:{line(source, '# <-')}")


@pytest.mark.parametrize("retain", [False, True])
def test_an_rnn_state_kept_on_the_module(tmp_path, retain):
    trace, error, _ = run(tmp_path, f"""
        class LM(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn, self.out = nn.GRU(12, 16, batch_first=True), nn.Linear(16, 4)
                self.hidden = None

            def forward(self, x):
                out, self.hidden = self.rnn(x, self.hidden)  # never detached
                return self.out(out[:, -1])

        model = LM()
        opt = torch.optim.Adam(model.parameters())
        for step in range(3):
            opt.zero_grad()
            F.cross_entropy(model(X.view(4, 8, 12)), Y[:4]).backward(retain_graph={retain})
            opt.step()
    """)
    assert error is not None
    [f] = found(trace, "graph-kept-alive")
    assert f.data["explains_failure"] and "`model.hidden`" in f.message
    assert "self.hidden = tuple(h.detach()" in f.hint
    assert found(trace, "inplace-modified") == [] and found(trace, "plain-container") == []
