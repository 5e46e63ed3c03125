"""Correct code that looks like the training bugs (each from a review of real training loops):
every one of these must stay quiet, and gradscope must not disturb it."""
import textwrap

import pytest
import torch
from torch import nn

import gradscope
from gradscope.runner import trace_script

from test_training_bugs import HEADER, found, line, run, serious


def quiet(tmp_path, body):
    trace, error, _ = run(tmp_path, body)
    assert error is None, error
    assert serious(trace) == [], [f.message for f in trace.findings if f.severity != "info"]
    return trace


@pytest.mark.parametrize("body", [
    # CLIP's symmetric loss: a square similarity matrix normalised both ways
    """
    a, b = nn.Linear(12, 8), nn.Linear(12, 8)
    opt = torch.optim.Adam([*a.parameters(), *b.parameters()])
    for step in range(2):
        opt.zero_grad()
        logits = a(X[:8]) @ b(X[8:16]).t()
        loss = -(F.log_softmax(logits, dim=0).diagonal().mean()
                 + F.log_softmax(logits, dim=1).diagonal().mean()) / 2
        loss.backward()
        opt.step()
    """,
    # attention MIL: one weight per instance of a bag, (N, 1)
    """
    att, head = nn.Linear(12, 1), nn.Linear(12, 1)
    opt = torch.optim.Adam([*att.parameters(), *head.parameters()])
    for step in range(2):
        opt.zero_grad()
        w = F.softmax(att(X), dim=0)
        F.binary_cross_entropy_with_logits(head((w * X).sum(0)), torch.ones(1)).backward()
        opt.step()
    """,
    # time-first attention pooling, then a Linear (an Addmm) and a loss
    """
    rnn, score, out = nn.LSTM(12, 16), nn.Linear(16, 1), nn.Linear(16, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *score.parameters(), *out.parameters()])
    for step in range(2):
        opt.zero_grad()
        h, _ = rnn(X.view(8, 4, 12))
        w = torch.softmax(score(h).squeeze(-1), dim=0)
        F.mse_loss(out((w.unsqueeze(-1) * h).sum(0)), torch.zeros(4, 1)).backward()
        opt.step()
    """,
    # a pointer network: scores over positions (L, N), transposed for the loss
    """
    enc = nn.Linear(12, 1)
    opt = torch.optim.Adam(enc.parameters())
    for step in range(2):
        opt.zero_grad()
        scores = enc(X.view(8, 4, 12)).squeeze(-1)
        F.nll_loss(F.log_softmax(scores, dim=0).t(), torch.randint(0, 8, (4,))).backward()
        opt.step()
    """,
])
def test_softmax_over_dim_0_where_dim_0_is_right(tmp_path, body):
    quiet(tmp_path, body)


DROPOUT_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out, self.p = nn.Linear(12, 16), nn.Linear(16, 4), 0.3

    def forward(self, x):
        x = self.fc(x)
{dropout}
        return self.out(x)

model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(2):
    opt.zero_grad()
    F.cross_entropy(model(X), Y).backward()
    opt.step()
{evaluate}
"""


@pytest.mark.parametrize("dropout", [
    "        if self.training:\n            x = F.dropout(x, self.p)",
    "        x = F.dropout(x, self.p if self.training else 0.0)",
    "        p = self.p if self.training else 0.0\n"
    "        q = x[None, None]\n"
    "        x = F.scaled_dot_product_attention(q, q, q, dropout_p=p)[0, 0]",
    "        x = F.dropout(x, self.p, training=True)  # Monte Carlo dropout, on purpose",
])
@pytest.mark.parametrize("evaluate", ["", "model.eval()\nwith torch.no_grad():\n    model(X)"])
def test_functional_dropout_that_follows_the_mode(tmp_path, dropout, evaluate):
    quiet(tmp_path, DROPOUT_NET.format(dropout=dropout, evaluate=evaluate))


def test_one_optimizer_per_head_with_alternating_tasks(tmp_path):
    quiet(tmp_path, """
    enc, heads = nn.Linear(12, 16), [nn.Linear(16, 4), nn.Linear(16, 4)]
    opts = [torch.optim.Adam([*enc.parameters(), *heads[0].parameters()]),
            torch.optim.Adam(heads[1].parameters())]
    for step in range(8):
        for o in opts:
            o.zero_grad()
        F.cross_entropy(heads[step % 2](enc(X)), Y).backward()
        for o in opts:
            o.step()
    """)


def test_reptile_writes_the_meta_gradient_in_place(tmp_path):
    quiet(tmp_path, """
    import copy
    model = mlp()
    meta = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):
        fast = copy.deepcopy(model)
        inner = torch.optim.SGD(fast.parameters(), lr=0.1)
        for _ in range(2):
            inner.zero_grad()
            F.cross_entropy(fast(X), Y).backward()
            inner.step()
        meta.zero_grad(set_to_none=False)
        for p, q in zip(model.parameters(), fast.parameters()):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(p.detach() - q.detach())  # written in place, the same tensor
        meta.step()
    """)


def test_a_logging_sum_reset_every_step_is_not_kept_alive(tmp_path):
    quiet(tmp_path, """
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    for step in range(6):
        opt.zero_grad()
        step_loss = 0.0
        for k in range(4):
            loss = F.cross_entropy(model(X[k * 8:(k + 1) * 8]), Y[k * 8:(k + 1) * 8])
            loss.backward()
            step_loss += loss
        opt.step()
        print(float(step_loss))
    """)


def test_step_order_patterns_that_are_right(tmp_path):
    quiet(tmp_path, """
    G, D = nn.Linear(4, 12), nn.Linear(12, 1)
    g_opt, d_opt = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(g_opt)
    for step in range(3):
        plateau.step(1.0)  # a baseline validation before training: the metric only
        d_opt.zero_grad()
        D(X).mean().backward()
        d_opt.step()
        g_opt.zero_grad()
        D(G(torch.randn(8, 4))).mean().backward()
        D.zero_grad()  # the critic's gradients are not wanted here
        torch.nn.utils.clip_grad_norm_(G.parameters(), 1.0)  # G's, after its backward
        g_opt.step()
        torch.nn.utils.clip_grad_norm_(G.parameters(), float("inf"))  # a norm for the logs
    """)


def test_test_time_adaptation_resets_weights_with_each_optimizer(tmp_path):
    quiet(tmp_path, """
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for sample in range(5):
        model.load_state_dict(state)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        opt.zero_grad()
        F.cross_entropy(model(X[sample:sample + 1]), Y[sample:sample + 1]).backward()
        opt.step()
    """)


def test_a_model_sizing_its_head_in_init(tmp_path):
    trace = quiet(tmp_path, """
    class Net(nn.Module):
        def __init__(self):
            probe = nn.Sequential(nn.Linear(12, 8), nn.Dropout(0.2))
            with torch.no_grad():
                n = probe(torch.zeros(1, 12)).shape[1]  # before super().__init__()
            super().__init__()
            self.feat = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Dropout(0.2))
            with torch.no_grad():
                n = self.feat(torch.zeros(2, 12)).shape[1]  # shape inference, in train mode
            self.head = nn.Linear(n, 4)

        def forward(self, x):
            return self.head(self.feat(x))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()
    """)
    assert [m["label"] for m in trace.models if m["parameters"]] == ["model"]


def test_a_model_zoo_is_not_one_model(tmp_path):
    trace = quiet(tmp_path, """
    zoo = nn.ModuleDict({"a": mlp(), "b": mlp()})
    opt = torch.optim.SGD(zoo["a"].parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        F.cross_entropy(zoo["a"](X), Y).backward()
        opt.step()
    """)
    assert "zoo" not in [m["label"] for m in trace.models]


def test_the_users_locals_dict_is_left_alone(no_leaks):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sizes = []

    def train():
        x = torch.randn(3, 4)
        with gradscope.watch(model, opt):
            for _ in range(6):
                env = locals()
                before = len(env)
                out = model(x)  # gradscope looks at this frame now and then
                sizes.append((before, len(env)))
                opt.zero_grad()
                out.sum().backward()
                opt.step()
    train()
    assert all(after >= before > 0 for before, after in sizes)


def test_a_compiled_clip_and_step_compile_as_without_gradscope(no_leaks):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)

    @torch.compile(backend="eager", fullgraph=True)
    def clip():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)

    with gradscope.watch(model, opt) as scope:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            clip()  # fullgraph: any Python of ours traced there would raise
            opt.step()
            sched.step()
    assert serious(scope.report().trace) == []


def test_schedulers_that_override_step(no_leaks):
    from torch.optim import lr_scheduler as L

    def first_scheduler_event(make):
        model = nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt) as scope:
            sched = make(opt)
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(3, 4)).sum().backward()
                sched.step()  # before the optimizer: the bug, for each kind of scheduler
                opt.step()
        trace = scope.report().trace
        events = [e["scheduler"] for e in trace.events if e["kind"] == "scheduler_step"]
        return events, [f.data.get("scheduler") for f in found(trace, "scheduler-before-step")]

    with pytest.warns(UserWarning):
        assert first_scheduler_event(lambda o: L.CosineAnnealingWarmRestarts(o, 2)) == (
            ["CosineAnnealingWarmRestarts"] * 3, ["CosineAnnealingWarmRestarts"])
        assert first_scheduler_event(lambda o: L.SequentialLR(
            o, [L.ConstantLR(o, 0.5, total_iters=2), L.ExponentialLR(o, 0.9)],
            milestones=[2])) == (["SequentialLR"] * 3, ["SequentialLR"])


def test_optimizers_built_per_step_do_not_pile_up_in_the_registry(no_leaks):
    import gc
    model = nn.Linear(4, 2)
    with gradscope.watch(model) as scope:
        for _ in range(50):
            opt = torch.optim.Adam(model.parameters())
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
        gc.collect()
        assert len(list(scope._capture.optimizers.live())) <= 2
        assert len(scope._capture.optimizers._live) <= 2  # dead ones dropped, not skipped
    assert len(scope.report().trace.optimizers) == 50


def test_a_state_kept_on_the_module_and_detached_each_forward(tmp_path):
    quiet(tmp_path, """
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = nn.LSTM(12, 16, batch_first=True), nn.Linear(16, 4)
            self.hidden = None

        def forward(self, x):
            if self.hidden is not None:
                self.hidden = tuple(h.detach() for h in self.hidden)
            out, self.hidden = self.rnn(x, self.hidden)
            return self.out(out[:, -1])

    model = LM()
    opt = torch.optim.Adam(model.parameters())
    for step in range(4):
        opt.zero_grad()
        F.cross_entropy(model(X.view(4, 8, 12)), Y[:4]).backward()
        opt.step()
    """)
