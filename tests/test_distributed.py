"""torch.distributed: two gloo ranks on CPU through torchrun, per-rank records merged."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from gradscope.checks import run_checks, select_checks
from gradscope.tracedata import Trace
from gradscope_cli.main import main

from conftest import REPO
from test_samples import documented_findings

pytestmark = pytest.mark.slow


def launch(target, tmp_path, *extra):
    out = tmp_path / "rep"
    result = CliRunner().invoke(main, ["trace", "--nproc-per-node", "2", target, "--out",
                                       str(out), "-q", *extra])
    with open(out / "trace.json") as f:
        return result, json.load(f), out


@pytest.mark.parametrize("name,code", [("ddp_clean.py", 0), ("ddp_unused_param.py", 3),
                                       ("ddp_rank_branch.py", 1)])
def test_ddp_samples_on_two_ranks(name, code, tmp_path):
    result, d, out = launch(os.path.join(REPO, "samples", name), tmp_path)
    assert result.exit_code == code, result.output
    assert d["run"]["world_size"] == 2 and d["run"]["ranks_reported"] == [0, 1]
    assert set(os.listdir(out)) >= {"graph.dot", "rank-0", "rank-1", "report.html",
                                    "trace.json"}
    found = {(f["check"], f["severity"]) for f in d["findings"]}
    assert found == documented_findings(name)
    # names are the user's model's, not DDP's "module." ones
    assert d["parameters"] and not any(p["name"].startswith("module.") for p in d["parameters"])
    for rank in (0, 1):
        with open(out / f"rank-{rank}" / "trace.json") as f:
            assert json.load(f)["run"]["rank"] == rank


def test_unused_parameter_is_named_when_ddp_fails(tmp_path):
    result, d, _ = launch(os.path.join(REPO, "samples", "ddp_unused_param.py"), tmp_path)
    f = next(f for f in d["findings"] if f["check"] == "unused-parameter")
    assert f["data"]["parameters"] == ["aux.weight", "aux.bias"]
    assert "find_unused_parameters=True" in f["message"]
    assert d["run"]["failed_ranks"] == [0, 1] and "Expected to have finished reduction" in \
        d["run"]["error"]


def test_no_sync_accumulation_is_deliberate(tmp_path):
    _, d, _ = launch(os.path.join(REPO, "samples", "ddp_clean.py"), tmp_path)
    assert [s["backward_calls"] for s in d["accumulation"]] == [2, 2, 2]
    assert not any(s["carried"] for s in d["accumulation"])
    assert all(r["backward_calls"] == 6 and r["optimizer_steps"] == 3 for r in d["ranks"])


def test_a_crashing_rank_keeps_the_others_records(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent('''
        import torch, torch.distributed as dist
        from torch import nn
        from torch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.manual_seed(0)
        model = DDP(nn.Linear(4, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            if rank == 1 and step == 2:
                raise ValueError("rank 1 ran out of data")
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
        dist.destroy_process_group()
    '''))
    result, d, out = launch(str(script), tmp_path)
    assert result.exit_code in (3, 130), result.output
    assert 1 in d["run"]["failed_ranks"]
    rank1 = next(r for r in d["ranks"] if r["rank"] == 1)
    assert rank1["status"] == "error" and "ran out of data" in rank1["error"]
    rank0 = next(r for r in d["ranks"] if r["rank"] == 0)
    assert rank0["optimizer_steps"] >= 2  # rank 0's record survived the crash of rank 1
    assert any("Rank 1 did not finish" in n for n in d["notes"])


def test_watch_inside_torchrun_then_merge(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sample = os.path.join(REPO, "samples", "ddp_clean.py")
    # torch's Gloo worker threads may abort a rank while the interpreter shuts down, after
    # everything ran ("terminate called without an active exception", SIGABRT; see
    # pytorch/pytorch#179291): 3 of 20 plain runs of this sample without gradscope here. That
    # one failure, and only it, is run again.
    for _ in range(3):
        for old in tmp_path.glob("trace.rank*.json"):
            old.unlink()
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                               "--nproc-per-node=2", f"--master-port={port}", sample,
                               "--self-watch"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode == 0 or "terminate called without an active exception" \
                not in proc.stderr or "exitcode  : -6" not in proc.stderr:
            break
        with socket.socket() as sock:  # (the next launch on a fresh port)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.glob("trace.rank*.json"))
    assert files == ["trace.rank0.json", "trace.rank1.json"]
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "trace.rank*.json"), "--out",
                                  str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    d = json.load(open(tmp_path / "merged" / "trace.json"))
    assert [x["rank"] for x in d["ranks"]] == [0, 1] and d["run"]["mode"] == "watch"


def _ranked(norms0, norms1, counts=((3, 3), (3, 3))):
    ranks = [{"rank": k, "status": "ok", "error": None, "backward_calls": c[0],
              "optimizer_steps": c[1], "norm_steps": [1, 2, 3], "grad_norms": {"m.w": n}}
             for k, (n, c) in enumerate(zip((norms0, norms1), counts))]
    return Trace(ranks=ranks)


def test_rank_divergence_unit():
    only = select_checks(only=["rank-divergence"])
    assert run_checks(_ranked([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), only) == []
    [f] = run_checks(_ranked([1.0, 2.0, 3.0], [1.0, 2.5, 3.0]), only)
    assert f.data == {"parameters": ["m.w"], "step": 2}
    [f] = run_checks(_ranked([1.0] * 3, [1.0] * 3, counts=((3, 3), (4, 3))), only)
    assert "different amounts of work" in f.message
    trace = _ranked([1.0] * 3, [2.0] * 3)
    trace.ranks[1]["status"] = "error"  # a failed rank: the notes say so, no divergence claim
    assert run_checks(trace, only) == []
    assert run_checks(Trace(), only) == []
