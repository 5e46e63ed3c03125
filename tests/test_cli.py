"""The gradscope command: modes, outputs, exit codes and every bad input of the foundation."""
import json
import os
import textwrap

import pytest
from click.testing import CliRunner

from gradscope.checks import registry
from gradscope.checks.registry import Check
from gradscope.findings import Finding
from gradscope_cli.main import main

from conftest import global_hook_counts, graph_nodes

MODEL_PY = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50)

        def forward(self, idx):
            return self.head(self.tok(idx))

    def build():
        return Net(), torch.randn(2, 3, 8, 8)

    def build_kwargs():
        return GPT(), {"idx": torch.zeros(2, 3, dtype=torch.long)}

    def just_model():
        return Net()

    def not_a_model():
        return 42

    instance = Net()
    CONSTANT = 3

    class NoParams(nn.Module):
        def forward(self, x):
            return x * 2

    class ReturnsNone(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            self.fc(x)

    class Explodes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            raise RuntimeError("kaboom in forward")

    if __name__ == "__main__":
        raise SystemExit("importing model.py:NAME must not run this block")
''')

TRAIN_PY = textwrap.dedent('''
    import sys
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs = int(sys.argv[sys.argv.index("--epochs") + 1]) if "--epochs" in sys.argv else 2
    for _ in range(epochs):
        opt.zero_grad()
        loss = model(torch.randn(3, 4)).pow(2).mean()
        loss.backward()
        opt.step()
    print("argv", sys.argv[1:], "name", __name__)
''')


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text(MODEL_PY)
    (tmp_path / "train.py").write_text(TRAIN_PY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    before = global_hook_counts()
    result = CliRunner().invoke(main, list(args))
    assert global_hook_counts() == before, "a CLI run left a global hook behind"
    return result


def _json(path):
    with open(path) as f:
        return json.load(f)


def test_script_mode_runs_as_main_with_args_and_writes_everything(project, no_leaks):
    r = run("trace", "train.py", "--out", "rep", "--", "--epochs", "3")
    assert r.exit_code == 0, r.output
    assert "argv ['--epochs', '3'] name __main__" in r.output
    d = _json("rep/trace.json")
    assert d["backward_calls"] == 3 and d["optimizer_steps"] == 3
    assert d["run"]["mode"] == "script" and d["run"]["args"] == ["--epochs", "3"]
    assert d["run"]["graph_from"] == "train.py:12"
    assert {p["name"] for p in d["parameters"]} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(p["in_optimizer"] for p in d["parameters"])
    assert os.path.getsize("rep/graph.dot") > 0
    if os.path.exists("rep/graph.svg") or not os.environ.get("CI"):
        pass
    assert "model model: Sequential" in r.output
    assert "backward calls: 3" in r.output


@pytest.mark.dot
def test_out_writes_svg(project):
    r = run("trace", "train.py", "--out", "rep")
    assert r.exit_code == 0, r.output
    assert open("rep/graph.svg").read().lstrip().startswith("<?xml")


def test_default_output_folder(project):
    r = run("trace", "train.py", "-q")
    assert r.exit_code == 0, r.output
    assert os.path.exists("gradscope-report/trace.json")
    assert "wrote gradscope-report/trace.json" in r.output


@pytest.mark.parametrize("target,inputs,expect_op", [
    ("model.py:Net", ["--input", "2,3,8,8"], "ConvolutionBackward0"),
    ("model.py:GPT", ["--input", "4,16:long"], "EmbeddingBackward0"),
    ("model.py:build", [], "ConvolutionBackward0"),
    ("model.py:build_kwargs", [], "EmbeddingBackward0"),
    ("model.py:just_model", ["--input", "1,3,8,8"], "AddmmBackward0"),
    ("model.py:instance", ["--input", "1,3,8,8"], "AddmmBackward0"),
])
def test_model_targets(project, target, inputs, expect_op):
    r = run("trace", target, *inputs, "--json", "t.json")
    assert r.exit_code == 0, r.output
    d = _json("t.json")
    assert expect_op in {n["op"] for n in graph_nodes(d)}
    assert d["run"]["mode"] == "model" and d["backward_calls"] == 1
    assert all(p["in_graph"] for p in d["parameters"])


def test_inputs_go_where_a_factory_put_the_model(tmp_path, monkeypatch):
    """A factory may return Net().cuda(): without --device, --input tensors are made on the
    device of the model's weights (meta stands in for the GPU here), not on the CPU."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)).to('meta')\n")
    r = run("trace", "model.py:build", "--input", "8,16", "--json", "t.json")
    assert r.exit_code == 0, r.output
    d = _json("t.json")
    assert {n["device"] for n in graph_nodes(d) if n["op"] != "AccumulateGrad"} == {"meta"}
    assert d["findings"] == []


def test_long_inputs_stay_below_the_embedding_size(project):
    r = run("trace", "model.py:GPT", "--input", "64,64:long", "--json", "t.json")
    assert r.exit_code == 0, r.output  # ids >= 50 would crash nn.Embedding(50, 8)


def test_python_dash_m_and_console_script_exist():
    import shutil
    import subprocess
    import sys

    from conftest import REPO
    exe = shutil.which("gradscope") or os.path.join(os.path.dirname(sys.executable), "gradscope")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert "gradscope" in out.stdout
    out = subprocess.run([sys.executable, "-m", "gradscope", "trace", "samples/clean_lstm.py:build",
                          "--json", os.devnull, "-q"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- exit codes and --fail-on ----------------------------------------------------------------
@pytest.fixture
def fake_check(monkeypatch):
    def run_check(trace):
        return [Finding("fake-check", "warning", "something looks off", "do better",
                        module="0", nodes=[trace.graph.nodes[0].id] if trace.graph.nodes else [])]
    check = Check("fake-check", "warning", "a check for the tests", run_check)
    monkeypatch.setattr(registry, "all_checks", lambda: [check])
    return check


def test_fail_on_thresholds(project, fake_check):
    assert run("trace", "train.py", "--json", "t.json").exit_code == 0           # default: error
    assert run("trace", "train.py", "--json", "t.json", "--fail-on", "warning").exit_code == 1
    assert run("trace", "train.py", "--json", "t.json", "--fail-on", "info").exit_code == 1
    assert run("trace", "train.py", "--json", "t.json", "--fail-on", "never").exit_code == 0
    d = _json("t.json")
    assert d["findings"][0]["check"] == "fake-check" and d["findings"][0]["nodes"] == ["n0"]
    r = run("trace", "train.py", "--json", "t.json", "--fail-on", "warning",
            "--disable", "fake-check")
    assert r.exit_code == 0 and _json("t.json")["findings"] == []
    r = run("trace", "train.py", "--json", "t.json", "--only", "nope")
    assert r.exit_code == 2 and "unknown check id 'nope'" in r.output


def test_checks_command_lists_checks(fake_check):
    r = run("checks")
    assert r.exit_code == 0 and "fake-check" in r.output and "warning" in r.output


def test_script_that_raises_exits_3_with_partial_report(project, no_leaks):
    (project / "bad.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        model = nn.Linear(3, 3)
        model(torch.randn(2, 3)).sum().backward()
        raise KeyError("missing label")
    '''))
    r = run("trace", "bad.py", "--out", "rep")
    assert r.exit_code == 3
    assert "KeyError: 'missing label'" in r.output and 'bad.py", line 6' in r.output
    assert "gradscope/runner.py" not in r.output  # our frames are cut from the traceback
    d = _json("rep/trace.json")
    assert d["run"]["status"] == "error" and "KeyError" in d["run"]["error"]
    assert d["backward_calls"] == 1 and d["graph"]["nodes"] > 0


def test_model_that_raises_exits_3(project):
    r = run("trace", "model.py:Explodes", "--input", "2,4", "--json", "t.json")
    assert r.exit_code == 3 and "kaboom in forward" in r.output
    d = _json("t.json")
    assert next(m for m in d["modules"] if m["name"] == "fc")["calls"] == 1


def test_sys_exit_code_is_kept(project):
    (project / "exits.py").write_text("import sys\nsys.exit(7)\n")
    r = run("trace", "exits.py", "--json", "t.json")
    assert r.exit_code == 7
    (project / "exits0.py").write_text("import sys\nsys.exit(0)\n")
    assert run("trace", "exits0.py", "--json", "t.json").exit_code == 0


def test_keyboard_interrupt_exits_130_and_writes_the_report(project, no_leaks):
    (project / "ctrlc.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        m = nn.Linear(2, 2)
        m(torch.randn(1, 2)).sum().backward()
        raise KeyboardInterrupt
    '''))
    r = run("trace", "ctrlc.py", "--json", "t.json")
    assert r.exit_code == 130
    d = _json("t.json")
    assert d["run"]["status"] == "interrupted" and d["backward_calls"] == 1


def test_script_without_backward_gets_a_report_and_a_note(project):
    (project / "fwd.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        m = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
        with torch.no_grad():
            m(torch.randn(4, 2))
    '''))
    r = run("trace", "fwd.py", "--json", "t.json")
    assert r.exit_code == 0
    assert "No backward() call was seen" in r.output
    d = _json("t.json")
    assert d["graph"]["nodes"] == 0 and d["modules"][1]["output"] == "(4, 3)"


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("args,code,needle", [
    (["trace", "nope.py"], 2, "no such file: 'nope.py'"),
    (["trace", "model.py:Missing", "--input", "1,3,8,8"], 2, "It defines: "),
    (["trace", "model.py:CONSTANT"], 2, "is a int, not an nn.Module"),
    (["trace", "model.py:NeedsArgs"], 2, "needs arguments (width)"),
    (["trace", "model.py:not_a_model"], 2, "returned int"),
    (["trace", "model.py:Net", "--input", "2,x,8"], 2, "sizes must be whole numbers"),
    (["trace", "model.py:Net", "--input", "2,3:complex9"], 2, "unknown dtype 'complex9'"),
    (["trace", "model.py:Net", "--input", "2,3:float:9"], 2, "an upper bound goes with an int"),
    (["trace", "model.py:Net"], 2, "no example inputs. Pass --input"),
    (["trace", "model.py:ReturnsNone", "--input", "2,4"], 2, "returned None"),
    (["trace", "model.py:NoParams", "--input", "2,4"], 2, "holds no floating-point tensor"),
    (["trace", "train.py", "--input", "2,4"], 2, "go with FILE.py:NAME"),
    (["trace", "model.py:Net", "--", "--epochs"], 2, "passed to scripts"),
    (["trace", "."], 2, "is a directory"),
])
def test_bad_input(project, args, code, needle):
    r = run(*args, "--json", "t.json") if "--" not in args else run(*args)
    assert r.exit_code == code, r.output
    assert needle in r.output


def test_model_name_not_found_lists_what_the_file_defines(project):
    r = run("trace", "model.py:Nett", "--input", "1,3,8,8")
    assert r.exit_code == 2
    for name in ("Net", "GPT", "build", "instance"):
        assert name in r.output
    assert "Use 'model.py:NAME'" in r.output


def test_syntax_error_names_file_and_line(project):
    (project / "broken.py").write_text("import torch\ndef f(:\n    pass\n")
    for target in ("broken.py", "broken.py:f"):
        r = run("trace", target)
        assert r.exit_code == 2 and "broken.py:2: syntax error" in r.output


def test_binary_and_empty_files(project):
    (project / "blob.py").write_bytes(b"\x00\x01\x02binary")
    r = run("trace", "blob.py")
    assert r.exit_code == 2 and "binary file" in r.output
    (project / "empty.py").write_text("")
    r = run("trace", "empty.py", "--json", "t.json")
    assert r.exit_code == 0 and "No nn.Module forward ran" in r.output
    r = run("trace", "empty.py:Net")
    assert r.exit_code == 2 and "defines no names" in r.output


def test_import_error_in_user_module(project):
    (project / "imports.py").write_text("import not_a_real_package_xyz\n")
    r = run("trace", "imports.py")
    assert r.exit_code == 3 and "No module named 'not_a_real_package_xyz'" in r.output


def test_svg_requested_without_dot_names_the_install_command(project, monkeypatch):
    import graphviz

    def missing(*a, **k):
        raise graphviz.ExecutableNotFound(["dot"])

    monkeypatch.setattr(graphviz, "pipe_string", missing)
    r = run("trace", "train.py", "--svg", "g.svg", "--json", "t.json")
    assert r.exit_code == 2 and "apt-get install graphviz" in r.output
    assert os.path.exists("t.json") and not os.path.exists("g.svg")
    r = run("trace", "train.py", "--out", "rep")  # implied SVG: skipped with a note, exit 0
    assert r.exit_code == 0 and "SVG skipped" in r.output and os.path.exists("rep/graph.dot")


def test_render_command_redraws_a_saved_trace(project):
    assert run("trace", "train.py", "--json", "t.json").exit_code == 0
    r = run("render", "t.json", "--dot", "again.dot", "--depth", "0")
    assert r.exit_code == 0 and "backward calls: 2" in r.output
    assert "box3d" in open("again.dot").read()
    (project / "junk.json").write_text("{}")
    r = run("render", "junk.json")
    assert r.exit_code == 2 and "not a gradscope trace" in r.output
