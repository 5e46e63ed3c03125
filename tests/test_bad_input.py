"""Every row of docs/bad-input.md not already covered in test_cli.py: what the user sees and the
exit code."""
import json
import os
import textwrap

import pytest
import torch
from click.testing import CliRunner

from gradscope_cli.main import main

from conftest import global_hook_counts


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    before = global_hook_counts()
    result = CliRunner().invoke(main, list(args))
    assert global_hook_counts() == before
    return result


def test_script_that_spawns_threads(cwd):
    (cwd / "threads.py").write_text(textwrap.dedent('''
        import threading
        import torch
        from torch import nn
        model = nn.Linear(4, 2)
        def work():
            for _ in range(25):
                model(torch.randn(3, 4)).sum().backward()
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("done")
    '''))
    r = run("trace", "threads.py", "--json", "t.json")
    assert r.exit_code == 0, r.output
    assert "done" in r.output
    d = json.load(open("t.json"))
    assert d["backward_calls"] == 100  # every thread's calls, none lost to a race


def test_script_whose_loss_is_not_a_scalar(cwd):
    (cwd / "vector.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        model = nn.Linear(4, 2)
        model(torch.randn(3, 4)).backward()  # not a scalar, no gradient given
    '''))
    r = run("trace", "vector.py", "--json", "t.json")
    assert r.exit_code == 3
    assert "grad can be implicitly created only for scalar outputs" in r.output
    d = json.load(open("t.json"))
    assert d["run"]["status"] == "error" and d["backward_calls"] == 1
    assert d["graph"]["nodes"]  # the graph was captured before torch refused


def test_a_failure_while_rendering_keeps_the_json(cwd, monkeypatch):
    (cwd / "ok.py").write_text("import torch\nm = torch.nn.Linear(2, 2)\n"
                               "m(torch.randn(1, 2)).sum().backward()\n")
    import gradscope.report

    def broken(self, **options):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(gradscope.report.Report, "to_dot", broken)
    r = run("trace", "ok.py", "--out", "rep")
    assert r.exit_code == 4 and "internal error while writing the report" in r.output
    assert json.load(open("rep/trace.json"))["backward_calls"] == 1
    assert not os.path.exists("rep/graph.dot")
    assert [f for f in os.listdir("rep") if f.startswith(".gradscope-")] == []


def test_ctrl_c_while_rendering(cwd, monkeypatch):
    (cwd / "ok.py").write_text("import torch\nm = torch.nn.Linear(2, 2)\n"
                               "m(torch.randn(1, 2)).sum().backward()\n")
    import gradscope.report

    def interrupted(self, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradscope.report.Report, "to_svg", interrupted)
    r = run("trace", "ok.py", "--out", "rep")
    assert r.exit_code == 130 and "interrupted while writing" in r.output
    assert os.path.exists("rep/trace.json") and os.path.exists("rep/graph.dot")
    assert not os.path.exists("rep/graph.svg")


def test_not_a_python_file(cwd):
    (cwd / "notes.txt").write_text("this is not python at all\n")
    r = run("trace", "notes.txt")
    assert r.exit_code == 2 and "notes.txt:1: syntax error" in r.output


@pytest.mark.parametrize("device, says", [
    ("gpu", "is not a device torch knows"),
    ("cuda:99", "--device cuda:99: "),  # CPU-only torch, no GPU, or too few GPUs: all exit 2
    ("mps", "cannot place a tensor there") if not torch.backends.mps.is_available() else
    ("mps:99", "--device mps:99"),
])
def test_a_device_that_cannot_be_used_is_a_usage_error_before_the_model_runs(cwd, device, says):
    (cwd / "model.py").write_text("import torch\nfrom torch import nn\n"
                                  "class Net(nn.Linear):\n"
                                  "    def __init__(self):\n"
                                  "        super().__init__(4, 2)\n"
                                  "        print('model built')\n")
    r = run("trace", "model.py:Net", "--input", "2,4", "--device", device, "--json", "t.json")
    assert r.exit_code == 2, r.output
    assert says in r.output
    assert "leave --device out" in r.output.lower() or "use one of those" in r.output.lower()
    assert "model built" not in r.output and "Traceback" not in r.output


def test_device_errors_for_cuda_builds_without_a_gpu_or_with_too_few(monkeypatch):
    from gradscope.errors import InputError
    from gradscope.usercode import check_device

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="built with CUDA but sees no GPU.*nvidia-smi"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2")
    assert check_device("cuda:1") == "cuda:1"
    assert check_device("cpu") == "cpu" and check_device("meta") == "meta"


@pytest.mark.parametrize("target, inputs, says", [
    ("model.py:Net", ["--input", "4,8:long"], "its constructor needs arguments (vocab)"),
    ("model.py:Square", [], "no example inputs"),
])
def test_a_target_that_cannot_be_run_is_one_usage_error_and_writes_nothing(
        cwd, target, inputs, says):
    (cwd / "model.py").write_text(textwrap.dedent('''
        from torch import nn
        class Net(nn.Module):
            def __init__(self, vocab):
                super().__init__()
                self.emb = nn.Embedding(vocab, 4)
        class Square(nn.Linear):
            def __init__(self):
                super().__init__(4, 4)
    '''))
    r = run("trace", target, *inputs)
    assert r.exit_code == 2, r.output
    assert r.output.count(says) == 1 and "gradscope.errors" not in r.output
    assert not os.path.exists("gradscope-report")  # nothing captured: no empty report


def test_a_factory_that_runs_a_forward_then_lacks_inputs_writes_no_report(cwd):
    (cwd / "lazy.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        def build():
            model = nn.Sequential(nn.LazyLinear(4), nn.ReLU())
            model(torch.randn(2, 8))   # materialises the lazy weights
            return model
    '''))
    r = run("trace", "lazy.py:build", "--out", "out")
    assert r.exit_code == 2 and "no example inputs" in r.output
    assert not os.path.exists("out")
