"""On a real CUDA device (marker ``cuda``: skipped where torch.cuda.is_available() is False, which
includes CI). The same checks run on CPU elsewhere with the ``meta`` device standing in."""
import os
import textwrap

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import TracedProgramError
from gradscope.runner import trace_script, trace_target

pytestmark = pytest.mark.cuda


def _script(tmp_path, body):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_trace_on_cuda_carries_devices():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).cuda()
    report = gradscope.trace(model, torch.randn(8, 16, device="cuda"))
    ops = [n for n in report.graph.nodes if n.leaf is None]
    assert ops and all(n.device.startswith("cuda") for n in ops)
    assert all(p["device"].startswith("cuda") for p in report.trace.parameters)


def test_model_target_device_cuda(tmp_path):
    path = _script(tmp_path, """
        from torch import nn
        def build():
            return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    """)
    outcome = trace_target(f"{path}:build", ("4,8",), device="cuda")
    assert outcome.error is None
    assert {n.device for n in outcome.report.graph.nodes if n.leaf is None} == {"cuda:0"}


def test_device_copy_and_host_reads_on_cuda(tmp_path):
    path = _script(tmp_path, """
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 16)

            def forward(self, x):
                pos = torch.arange(16).to(x.device)
                scale = x.abs().max().item()
                return self.fc(x + pos) / scale

        model = Net().cuda()
        for _ in range(2):
            x = torch.randn(4, 16).cuda()
            model(x).sum().backward()
    """)
    outcome = trace_script(path)
    assert outcome.error is None
    found = {f.data["op"]: f for f in outcome.report.findings if f.check == "device-copy"}
    assert set(found) == {"to", "item"}
    assert found["to"].data["src"] == "cpu" and found["to"].data["dst"].startswith("cuda")
    assert found["item"].data["dst"] == "host" and found["item"].data["count"] == 2
    assert found["to"].location.endswith("train.py:11")


def test_device_mismatch_on_cuda_names_the_unmoved_attribute():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.mask = torch.ones(4)

        def forward(self, x):
            return self.fc(x) * self.mask

    with pytest.raises(TracedProgramError) as info:
        gradscope.trace(Net().cuda(), torch.randn(2, 4, device="cuda"))
    [f] = [f for f in info.value.report.findings if f.check == "device-mismatch"]
    assert [r["name"] for r in f.data["odd"]] == ["mask"] and f.data["main"].startswith("cuda")


def test_seed_003_sample_on_a_gpu(tmp_path):
    from conftest import REPO
    outcome = trace_script(os.path.join(REPO, "samples", "device_mismatch.py"))
    [f] = [f for f in outcome.report.findings if f.check == "device-mismatch"]
    devices = {r["name"]: r["device"] for r in f.data["devices"]}
    assert devices["b"].startswith("cuda") and devices["a"] == "cpu"
    assert "Put b on cpu" in f.hint


def test_watch_syncs_at_most_once_per_optimizer_step():
    """torch's sync debug mode warns on every implicit host<->device synchronisation: a watched
    training step may add one (the per-step read of norms and flags), never one per parameter."""
    import warnings

    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)]).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 64, device="cuda")

    def step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    def synchronisations(steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return len([w for w in caught if "synchroniz" in str(w.message)])

    step()  # warm-up outside the count (lazy CUDA init, cuBLAS handles)
    torch.cuda.synchronize()
    steps = 5
    plain = synchronisations(steps)
    with gradscope.watch(model, opt) as scope:
        watched = synchronisations(steps)
    extra = watched - plain
    assert extra <= steps, f"{extra} synchronisations added over {steps} steps"
    assert scope.report().trace.optimizer_steps == steps


def test_autocast_bf16_and_grad_scaler_on_cuda():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 40)  # overflows at first: skipped
    x = torch.randn(16, 32, device="cuda")
    with gradscope.watch(model, opt) as scope:
        for _ in range(4):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(x).float().square().mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert [f.check for f in scope.report().findings if f.check == "nonfinite-grad"] == []
    with torch.autocast("cuda", dtype=torch.bfloat16):
        report = gradscope.trace(model, x, loss_fn=lambda out: out.float().mean())
    assert "bfloat16" in {n.dtype for n in report.graph.nodes if n.op == "AddmmBackward0"}


def test_ddp_over_nccl(tmp_path):
    """Issue 8 on GPUs: the NCCL backend, one rank per GPU (NCCL refuses two ranks on one GPU,
    so a one-GPU machine runs a world of one), through the same launcher and merge as gloo."""
    import json

    from click.testing import CliRunner

    from gradscope_cli.main import main
    ranks = min(2, torch.cuda.device_count())
    path = _script(tmp_path, """
        import os
        import torch
        import torch.distributed as dist
        from torch import nn
        from torch.nn.parallel import DistributedDataParallel as DDP

        dist.init_process_group("nccl")
        rank = dist.get_rank()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.manual_seed(0)
        model = DDP(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).to(device),
                    device_ids=[device.index])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)
        for step in range(3):
            opt.zero_grad()
            x = torch.randn(8, 10, generator=gen).to(device)
            y = torch.randint(0, 3, (8,), generator=gen).to(device)
            with model.no_sync():
                nn.functional.cross_entropy(model(x), y).backward()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        dist.destroy_process_group()
    """)
    out = tmp_path / "rep"
    result = CliRunner().invoke(main, ["trace", "--nproc-per-node", str(ranks), path, "--out",
                                       str(out), "-q"])
    assert result.exit_code == 0, result.output
    with open(out / "trace.json") as f:
        d = json.load(f)
    assert d["run"]["world_size"] == ranks and d["run"]["ranks_reported"] == list(range(ranks))
    assert {(f["check"], f["severity"]) for f in d["findings"]} == {("grad-accumulation", "info")}
    assert all(p["device"] == "cuda:0" and not p["name"].startswith("module.")
               for p in d["parameters"])
    assert all(r["backward_calls"] == 6 and r["optimizer_steps"] == 3 for r in d["ranks"])
