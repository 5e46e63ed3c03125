"""GradscopeCallback on a real lightning.Trainer: CPU, a tiny MLP, 2 optimizer steps."""
import json
import logging
import os

import pytest
import torch
from torch import nn

from conftest import import_extra

L = import_extra("lightning")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from gradscope.integrations.lightning import GradscopeCallback  # noqa: E402

THIS_FILE = os.path.basename(__file__)
# lightning 2.6 on torch 2.13: its own deprecation notice, not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")


class Regressor(L.LightningModule):
    def __init__(self, unused_head=False, crash_at=None, error=ValueError):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        if unused_head:  # seeded bug: a head that the loss never reaches
            self.aux = nn.Linear(8, 3)
        self.crash_at, self.steps, self.error = crash_at, 0, error

    def training_step(self, batch, batch_idx):
        self.steps += 1
        if self.crash_at is not None and self.steps >= self.crash_at:
            raise self.error("boom in training_step")
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n=16):
    g = torch.Generator().manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g),
                                          torch.randn(n, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=2)


def trainer_for(tmp_path, callback, accumulate=1, steps=2, logger=False):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps,
                     accumulate_grad_batches=accumulate, enable_progress_bar=False,
                     enable_checkpointing=False, enable_model_summary=False, logger=logger,
                     log_every_n_steps=1,
                     default_root_dir=str(tmp_path), callbacks=[callback])


def test_accumulate_grad_batches_reads_as_deliberate(tmp_path, no_leaks, caplog):
    callback = GradscopeCallback()
    model = Regressor()
    trainer = trainer_for(tmp_path, callback, accumulate=2,
                          logger=CSVLogger(str(tmp_path), name="logs"))
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer.fit(model, loader())  # the line every Lightning-made event points at
    report = callback.report
    found = {f.check: f for f in report.findings}
    assert found["grad-accumulation"].severity == "info"
    assert "missing-zero-grad" not in found
    assert report.trace.optimizer_steps == 2 and report.trace.backward_calls == 4
    locations = [e["location"] for e in report.trace.events if e.get("location")]
    locations += [f.location for f in report.findings if f.location]
    assert locations and all(THIS_FILE in loc for loc in locations), locations
    out = tmp_path / "gradscope"
    assert sorted(os.listdir(out)) == ["report.html", "summary.txt", "trace.json"]
    assert "grad-accumulation" in (out / "summary.txt").read_text()
    assert any("gradscope:" in r.getMessage() for r in caplog.records)
    trainer.loggers[0].save()
    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "gradscope/findings" in metrics
    assert model.training  # Lightning's own state handling, untouched by us


def test_unused_head_is_found(tmp_path, no_leaks):
    callback = GradscopeCallback(out_dir=str(tmp_path / "gs"))
    trainer_for(tmp_path, callback).fit(Regressor(unused_head=True), loader())
    found = {f.check: f for f in callback.report.findings}
    assert found["unused-parameter"].severity == "warning"
    assert "aux.weight" in found["unused-parameter"].message
    saved = json.loads((tmp_path / "gs" / "trace.json").read_text())
    assert "unused-parameter" in [f["check"] for f in saved["findings"]]


def test_numbers_are_identical_with_and_without_the_callback(tmp_path, no_leaks):
    weights = []
    for callbacks in ([], [GradscopeCallback()]):
        model = Regressor()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False, logger=False,
                            default_root_dir=str(tmp_path), callbacks=callbacks)
        trainer.fit(model, loader())
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_exception_closes_the_session_and_writes_the_partial_report(tmp_path, no_leaks,
                                                                       error):
    import signal

    callback = GradscopeCallback()
    sigint = signal.getsignal(signal.SIGINT)
    # Lightning turns Ctrl-C into a graceful shutdown that ends in sys.exit(1)
    raised = SystemExit if error is KeyboardInterrupt else error
    try:
        with pytest.raises(raised):
            trainer_for(tmp_path, callback, steps=5).fit(Regressor(crash_at=3, error=error),
                                                         loader())
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from then on
    report = callback.report
    status = "interrupted" if error is KeyboardInterrupt else "error"
    assert report.trace.run["status"] == status
    assert "boom in training_step" in report.trace.run["error"]
    assert report.trace.optimizer_steps == 2
    saved = json.loads((tmp_path / "gradscope" / "trace.json").read_text())
    assert saved["run"]["status"] == status


def test_an_unwritable_report_folder_is_a_warning_not_a_failed_fit(tmp_path, no_leaks):
    from gradscope import GradscopeWarning

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    callback = GradscopeCallback(out_dir=str(blocker / "gradscope"))
    model = Regressor()
    with pytest.warns(GradscopeWarning, match="could not write its report to .*a-file"):
        trainer_for(tmp_path, callback).fit(model, loader())
    assert callback.report.trace.optimizer_steps == 2 and callback.paths == []


DDP_SCRIPT = '''
import sys
import torch
from torch import nn
import lightning as L
from gradscope.integrations.lightning import GradscopeCallback


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        self.aux = nn.Linear(8, 3)  # seeded bug: the loss never reaches it

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    g = torch.Generator().manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g),
                                          torch.randn(16, 1, generator=g))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                        max_steps=3, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, logger=False, default_root_dir=sys.argv[1],
                        callbacks=[GradscopeCallback()])
    trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=2))
'''


def test_ddp_on_two_cpu_ranks_writes_one_folder_per_rank_and_merges(tmp_path):
    # a real 2-process DDP run (gloo): Lightning launches the second rank itself
    import sys

    from conftest import free_port, run_ranks

    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONWARNINGS": "ignore"}
    traces, merged, merge_exit, output = run_ranks(
        tmp_path, [sys.executable, str(script), str(tmp_path / "run")], env)
    for rank, d in enumerate(traces):
        assert d["optimizer_steps"] == 3
        assert "unused-parameter" in {f["check"] for f in d["findings"]}
        # each rank's log line names its own report, not a shared path that does not exist
        assert f"rank-{rank}{os.sep}report.html" in output
    assert merge_exit == 1  # --fail-on warning: the unused head
    assert "unused-parameter" in {f["check"] for f in merged["findings"]}
