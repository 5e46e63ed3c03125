"""Every row of docs/bad-input.md not already covered in test_cli.py: what the user sees and the
exit code."""
import json
import os
import textwrap

import pytest
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
