"""Real Hugging Face models (GPT-2, BERT, T5, Llama, built from tiny configs), trained the way
their users write it: zero warnings under ``gradscope trace`` and ``watch``, and the new
training-bug checks fire on the same loops with one line changed. (torchvision ResNet and
MobileNet were checked the same way outside the suite: torchvision cannot be installed beside
the CPU torch the suite uses; see the closing note of issue 15.)"""
import os
import textwrap

import pytest
import torch

import gradscope
from gradscope.runner import trace_script

from conftest import import_extra

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = import_extra("transformers")

CONFIGS = {
    "gpt2": "GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, "
            "n_positions=32))",
    "bert": "BertForSequenceClassification(BertConfig(num_hidden_layers=2, hidden_size=32, "
            "num_attention_heads=2, intermediate_size=64, vocab_size=100, num_labels=3))",
    "t5": "T5ForConditionalGeneration(T5Config(num_layers=2, d_model=32, num_heads=2, d_ff=64, "
          "d_kv=16, vocab_size=100, decoder_start_token_id=0))",
    "llama": "LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, "
             "num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, "
             "vocab_size=100))",
}

SCRIPT = """
import torch
from transformers import *
torch.manual_seed(0)
model = {model}
kind = {kind!r}
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))

def batch():
    ids = torch.randint(0, 100, (2, 12))
    labels = torch.randint(0, 3, (2,)) if kind == "bert" else (
        torch.randint(0, 100, (2, 6)) if kind == "t5" else ids)
    return dict(input_ids=ids, labels=labels)

total = 0.0
for step in range(3):
    model.train()
    opt.zero_grad()
    loss = model(**batch()).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    total += loss.item()
model.eval()
with torch.no_grad():
    val = model(**batch()).loss.item()
"""


def run(tmp_path, kind, edit=lambda s: s):
    path = tmp_path / "train.py"
    path.write_text(edit(SCRIPT.format(model=CONFIGS[kind], kind=kind)))
    outcome = trace_script(str(path))
    assert outcome.error is None, outcome.error
    return outcome.report.trace


def serious(trace):
    return sorted((f.check, f.severity) for f in trace.findings if f.severity != "info")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_correct_training_loop_is_quiet(tmp_path, kind):
    trace = run(tmp_path, kind)
    assert serious(trace) == []
    assert trace.optimizer_steps == 3 and trace.backward_calls == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_same_loop_with_the_bugs_users_post(tmp_path, kind):
    kept = run(tmp_path, kind, lambda s: s.replace("total += loss.item()", "total += loss"))
    assert serious(kept) == [("graph-kept-alive", "warning")]
    order = run(tmp_path, kind, lambda s: s.replace(
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n    opt.step()\n"
        "    sched.step()",
        "    sched.step()\n    opt.step()\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"))
    assert serious(order) == [("clip-grad-order", "warning"),
                              ("scheduler-before-step", "warning")]
    dead = run(tmp_path, kind, lambda s: s.replace(
        "    loss = model(**batch()).loss\n",
        "    with torch.no_grad():\n        loss = model(**batch()).loss\n"
        "    loss.requires_grad = True\n"))
    assert ("dead-training", "error") in serious(dead)


@pytest.mark.slow
def test_watch_on_a_real_model_is_quiet_and_leaves_nothing(no_leaks):
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, num_labels=3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with gradscope.watch(model, opt) as scope:
        for _ in range(3):
            opt.zero_grad()
            out = model(input_ids=torch.randint(0, 100, (2, 12)),
                        labels=torch.randint(0, 3, (2,)))
            out.loss.backward()
            opt.step()
    assert serious(scope.report().trace) == []


def test_script_template_is_what_users_write():
    # (the edits above must hit the template: a typo there would make the bug tests vacuous)
    for needle in ("total += loss.item()", "    loss = model(**batch()).loss\n",
                   "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n    opt.step()\n"
                   "    sched.step()"):
        assert needle in textwrap.dedent(SCRIPT)
