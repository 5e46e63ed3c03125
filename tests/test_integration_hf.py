"""GradscopeCallback on a real transformers.Trainer: tiny config-built models, 2 optimizer steps."""
import copy
import json
import logging
import os

import pytest
import torch
from torch import nn

from conftest import global_hook_counts, import_extra

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # config-built models only: never the network
import_extra("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from gradscope.integrations.hf import GradscopeCallback  # noqa: E402

THIS_FILE = os.path.basename(__file__)
VOCAB = 50


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB,
                                      n_positions=16, bos_token_id=0, eos_token_id=0))


def dataset(n=8):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, VOCAB, (8,), generator=g),
             "labels": torch.randint(0, VOCAB, (8,), generator=g)} for _ in range(n)]


def arguments(out, accumulation=1, steps=2):
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=2,
                             gradient_accumulation_steps=accumulation, max_steps=steps,
                             report_to="none", use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=0)


class BuiltInForward(nn.Module):
    """Seeded bug: the LM head is built inside forward, so it never trains."""

    def __init__(self):
        super().__init__()
        self.gpt = tiny_gpt2().transformer

    def forward(self, input_ids, labels=None):
        hidden = self.gpt(input_ids).last_hidden_state
        head = nn.Linear(hidden.size(-1), VOCAB)  # the bug, on this line
        logits = head(hidden)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


def _findings(report):
    return {f.check: f for f in report.findings}


def test_accumulation_reads_as_deliberate_and_points_at_this_file(tmp_path, no_leaks, caplog):
    callback = GradscopeCallback()
    trainer = Trainer(model=tiny_gpt2(), args=arguments(tmp_path, accumulation=2),
                      train_dataset=dataset(), callbacks=[callback])
    with caplog.at_level(logging.INFO, logger="transformers.trainer"):
        trainer.train()  # the line every Trainer-made event points at
    report = callback.report
    found = _findings(report)
    assert "grad-accumulation" in found and found["grad-accumulation"].severity == "info"
    assert "missing-zero-grad" not in found
    # the Trainer clips (max_grad_norm) and schedules in the right order: seen, and quiet
    kinds = [e["kind"] for e in report.trace.events if e["kind"] in
             ("backward", "clip", "step", "scheduler_step")]
    assert kinds[:5] == ["backward", "backward", "clip", "step", "scheduler_step"]
    assert not {"clip-grad-order", "scheduler-before-step", "dead-training"} & set(found)
    assert report.trace.optimizer_steps == 2 and report.trace.backward_calls == 4
    assert [s["backward_calls"] for s in report.trace.accumulation] == [2, 2]
    # every recorded place is this test file, never accelerate's or transformers' code
    locations = [e["location"] for e in report.trace.events if e.get("location")]
    locations += [f.location for f in report.findings if f.location]
    assert locations and all(THIS_FILE in loc and "site-packages" not in loc
                             for loc in locations), locations
    out = tmp_path / "gradscope"
    assert sorted(os.listdir(out)) == ["report.html", "summary.txt", "trace.json"]
    saved = json.loads((out / "trace.json").read_text())
    assert "grad-accumulation" in [f["check"] for f in saved["findings"]]
    assert "grad-accumulation" in (out / "summary.txt").read_text()
    # the count reached the Trainer's log history and its logger
    logged = [h for h in trainer.state.log_history if "gradscope/findings" in h]
    assert logged and logged[-1]["gradscope/findings"] == len(report.findings)
    assert any("gradscope:" in r.getMessage() and "grad-accumulation" in r.getMessage()
               for r in caplog.records)


def test_seeded_bug_is_found_and_written(tmp_path, no_leaks):
    callback = GradscopeCallback()
    trainer = Trainer(model=BuiltInForward(), args=arguments(tmp_path), train_dataset=dataset(),
                      callbacks=[callback])
    trainer.train()
    found = _findings(callback.report)
    assert found["layer-in-forward"].severity == "error"
    line = BuiltInForward.forward.__code__.co_firstlineno + 2
    assert found["layer-in-forward"].location.endswith(f"{THIS_FILE}:{line}")
    print(callback.report.to_text().split("findings", 1)[1])  # shown with -s: the finding text
    saved = json.loads((tmp_path / "gradscope" / "trace.json").read_text())
    assert [f for f in saved["findings"] if f["check"] == "layer-in-forward"]


def test_numbers_are_identical_with_and_without_the_callback(tmp_path, no_leaks):
    base = tiny_gpt2()
    results = []
    for callbacks in ([], [GradscopeCallback()]):
        model = copy.deepcopy(base)
        Trainer(model=model, args=arguments(tmp_path / str(len(callbacks)), accumulation=2),
                train_dataset=dataset(), callbacks=callbacks).train()
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not torch.equal(results[0]["lm_head.weight"], base.state_dict()["lm_head.weight"])


class Crashes(nn.Module):
    def __init__(self, after, error=RuntimeError):
        super().__init__()
        self.inner, self.calls, self.after, self.error = tiny_gpt2(), 0, after, error

    def forward(self, input_ids, labels=None):
        self.calls += 1
        if self.calls > self.after:
            raise self.error("boom in forward")
        return self.inner(input_ids=input_ids, labels=labels)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_crash_in_training_removes_the_hooks_and_writes_what_was_captured(tmp_path, no_leaks,
                                                                            error):
    callback = GradscopeCallback()
    model = Crashes(after=2, error=error)
    trainer = Trainer(model=model, args=arguments(tmp_path, steps=4), train_dataset=dataset(),
                      callbacks=[callback])
    with pytest.raises(error, match="boom in forward"):
        trainer.train()
    # no_leaks checks the hooks after the test; the report is already there
    report = callback.report
    assert report.trace.run["status"] == ("interrupted" if error is KeyboardInterrupt else "error")
    assert "boom in forward" in report.trace.run["error"]
    assert report.trace.optimizer_steps == 2
    saved = json.loads((tmp_path / "gradscope" / "trace.json").read_text())
    assert saved["run"]["status"] == report.trace.run["status"]
    # the user's own hooks still fire, and ours are gone before the test even ends
    fired = []
    handle = model.inner.register_forward_hook(lambda *a: fired.append(1))
    model.after = 10**6
    model(torch.zeros(1, 4, dtype=torch.long))
    handle.remove()
    assert fired == [1]


def test_added_after_init_still_watches_and_cleans_up(tmp_path, no_leaks, caplog):
    before = global_hook_counts()
    trainer = Trainer(model=tiny_gpt2(), args=arguments(tmp_path), train_dataset=dataset())
    callback = GradscopeCallback(out_dir=str(tmp_path / "elsewhere"))
    trainer.add_callback(callback)
    with caplog.at_level(logging.WARNING, logger="transformers.trainer"):
        trainer.train()
    assert global_hook_counts() == before
    assert callback.report.trace.optimizer_steps == 2
    assert os.path.exists(tmp_path / "elsewhere" / "trace.json")
    assert any("add_callback" in r.getMessage() for r in caplog.records)
    # from now on this trainer is wrapped: a second run is watched afresh
    trainer.train()
    assert callback.report.trace.optimizer_steps == 2


def test_the_optimizer_watched_is_the_one_inside_accelerates_wrapper():
    from accelerate.optimizer import AcceleratedOptimizer

    from gradscope.integrations._run import unwrap_optimizer

    inner = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    assert unwrap_optimizer(AcceleratedOptimizer(inner, device_placement=False)) is inner
    assert unwrap_optimizer(inner) is inner and unwrap_optimizer(None) is None


DDP_SCRIPT = '''
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from gradscope.integrations.hf import GradscopeCallback

VOCAB = 50
if __name__ == "__main__":
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB,
                                       n_positions=16, bos_token_id=0, eos_token_id=0))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, VOCAB, (8,), generator=g),
             "labels": torch.randint(0, VOCAB, (8,), generator=g)} for _ in range(8)]
    args = TrainingArguments(output_dir=sys.argv[1], per_device_train_batch_size=2, max_steps=2,
                             report_to="none", use_cpu=True, save_strategy="no",
                             logging_steps=1, disable_tqdm=True, seed=0, ddp_backend="gloo")
    Trainer(model=model, args=args, train_dataset=data, callbacks=[GradscopeCallback()]).train()
'''


def test_ddp_under_torchrun_writes_one_folder_per_rank_quietly_and_merges(tmp_path):
    # a real 2-process DDP run of the Trainer (torchrun, gloo on CPU): a correct loop stays
    # quiet on every rank (the Trainer wraps the model in DistributedDataParallel)
    import sys

    from conftest import free_port, run_ranks

    script = tmp_path / "train_hf_ddp.py"
    script.write_text(DDP_SCRIPT)
    traces, merged, merge_exit, _ = run_ranks(tmp_path, [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
        f"--master-port={free_port()}", str(script), str(tmp_path / "run")])
    for d in traces:
        assert d["optimizer_steps"] == 2 and d["run"]["mode"] == "watch"
        assert [f["check"] for f in d["findings"]] == ["tied-weights"]  # info: GPT-2's own
    assert merge_exit == 0 and all(f["severity"] == "info" for f in merged["findings"])
