"""gradscope diff: the refactor that silently detached a branch, as a CI gate; bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope.diff import diff_traces, load_trace
from gradscope_cli.main import main


class TwoBranches(nn.Module):
    def __init__(self, detach=False, wider=False):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.main = nn.Linear(16, 4)
        self.side = nn.Sequential(nn.Linear(16, 32 if wider else 16), nn.ReLU(),
                                  nn.Linear(32 if wider else 16, 4))
        self.detach = detach

    def forward(self, x):
        h = torch.relu(self.stem(x))
        s = self.side(h)
        if self.detach:  # the refactor's slip: the side branch no longer trains
            s = s.detach()
        return self.main(h) + s


def _save(tmp_path, name, model):
    torch.manual_seed(0)
    path = str(tmp_path / name)
    gradscope.trace(model, torch.randn(4, 8), label="net").save(path)
    return path


@pytest.fixture
def before_after(tmp_path):
    return _save(tmp_path, "before.json", TwoBranches()), \
        _save(tmp_path, "after.json", TwoBranches(detach=True))


def test_a_detached_branch_is_shown_and_fails_the_gate(before_after, tmp_path):
    before, after = before_after
    r = CliRunner().invoke(main, ["diff", before, after, "--fail-on", "warning",
                                  "--json", str(tmp_path / "d.json"),
                                  "--html", str(tmp_path / "d.html")])
    assert r.exit_code == 1, r.output
    text = r.stdout
    assert "lost gradient (4, trainable in both, but no gradient reaches them now): " \
        "net.side.0.weight, net.side.0.bias, net.side.2.weight, net.side.2.bias" in text
    # the branch's autograd ops are gone from the graph
    ops = text.split("autograd ops per module (created by the module itself)\n")[1]
    assert ops.splitlines()[1].split() == ["net.side.2", "2", "0", "-2"]
    assert ops.splitlines()[3].split() == ["net.side.0", "2", "0", "-2"]
    # graph-cut (one finding for both modules, at the .detach() line), not unused-parameter
    assert "NEW     WARNING graph-cut  net.side.0" in text
    assert "s = s.detach()" in text
    assert "ops: 12 -> 7" in text
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["gradscope_diff"] == 1 and d["same_program"] is True
    assert d["parameters"]["lost_gradient"] == ["net.side.0.weight", "net.side.0.bias",
                                                "net.side.2.weight", "net.side.2.bias"]
    assert {f["check"] for f in d["findings"]["new"]} == {"graph-cut"}
    assert d["findings"]["fixed"] == []
    html = (tmp_path / "d.html").read_text()
    assert "net.side.0.weight" in html and "graph-cut" in html and "<script" not in html


def test_the_gate_passes_below_the_threshold_and_the_fix_is_reported(before_after):
    before, after = before_after
    assert CliRunner().invoke(main, ["diff", before, after]).exit_code == 0  # --fail-on error
    r = CliRunner().invoke(main, ["diff", after, before, "--fail-on", "info"])  # the fix
    assert r.exit_code == 0
    assert "gained gradient (4, trainable in both, and now reached by the loss)" in r.stdout
    assert "FIXED   WARNING graph-cut  net.side.0" in r.stdout


def test_same_program_twice_is_no_change(before_after):
    before, _ = before_after
    r = CliRunner().invoke(main, ["diff", before, before, "--fail-on", "info"])
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-1].startswith("no changes: same modules, parameters")


def test_shapes_frozen_added_removed(tmp_path):
    a = load_trace(_save(tmp_path, "a.json", TwoBranches()))
    wider = TwoBranches(wider=True)
    wider.stem.requires_grad_(False)
    wider.extra = nn.Linear(2, 2)  # added and never used
    b = load_trace(_save(tmp_path, "b.json", wider))
    d = diff_traces(a, b, "a.json", "b.json")
    assert d.parameters["frozen"] == ["net.stem.weight", "net.stem.bias"]
    assert [x["parameter"] for x in d.parameters["added"]] == ["net.extra.weight",
                                                               "net.extra.bias"]
    changed = {x["parameter"]: (x["a"], x["b"]) for x in d.parameters["shape_changed"]}
    assert changed["net.side.0.weight"] == ([16, 16], [32, 16])
    assert {"module": "net.extra", "type": "Linear"} in d.modules["added"]
    assert d.summary["trainable_parameters"][1] < d.summary["parameters"][1]
    saved = {r["module"]: (r["a"], r["b"]) for r in d.saved}
    assert saved["net.side.2"][1] == 2 * saved["net.side.2"][0]  # its input got twice as wide
    back = diff_traces(b, a)
    assert [x["parameter"] for x in back.parameters["removed"]] == ["net.extra.weight",
                                                                   "net.extra.bias"]
    assert back.parameters["unfrozen"] == ["net.stem.weight", "net.stem.bias"]


def test_different_programs_are_said_and_still_compared(tmp_path, before_after):
    before, _ = before_after
    torch.manual_seed(0)
    other = str(tmp_path / "other.json")
    gradscope.trace(nn.Linear(3, 1), torch.randn(2, 3)).save(other)
    r = CliRunner().invoke(main, ["diff", before, other])
    assert r.exit_code == 0
    assert "note: these look like traces of different programs" in r.stdout
    assert "BEFORE and AFTER look like traces of different programs" in r.stderr
    assert "removed (" in r.stdout and "net.side.0.weight" in r.stdout


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file: "),
    (lambda p: p.write_text("{not json"), "cannot read"),
    (lambda p: p.write_text('{"nodes": []}'), "is JSON but not a gradscope trace"),
    (lambda p: p.write_text('{"gradscope": "9.0", "schema": 99}'), "newer than this gradscope"),
    (lambda p: p.mkdir(), "is a folder without a trace.json"),
])
def test_bad_input_is_a_usage_error(tmp_path, before_after, make, message):
    bad = tmp_path / "bad.json"
    make(bad)
    r = CliRunner().invoke(main, ["diff", before_after[0], str(bad)])
    assert r.exit_code == 2
    assert message in r.stderr and "AFTER" in r.stderr and str(bad) in r.stderr


def test_a_folder_with_a_trace_json_is_accepted(tmp_path, before_after):
    os.makedirs(tmp_path / "run")
    os.replace(before_after[1], tmp_path / "run" / "trace.json")
    r = CliRunner().invoke(main, ["diff", before_after[0], str(tmp_path / "run"),
                                  "--json", "-", "--fail-on", "warning"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["parameters"]["lost_gradient"]


def test_every_user_string_is_escaped_in_the_html(tmp_path):
    evil = '<script>alert(1)</script>"\''
    a = gradscope.trace(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), label=evil).trace
    model = nn.Sequential(nn.Linear(2, 2))
    model.add_module(evil, nn.Linear(2, 2))  # added, and never used: a new finding
    b = gradscope.trace(model, torch.randn(1, 2), label=evil).trace
    from gradscope.render.diff import render_diff_html

    html = render_diff_html(diff_traces(a, b, evil, evil))
    assert "<script" not in html and "alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "default-src 'none'" in html


def test_diffing_needs_no_torch(before_after):
    code = ("import sys; from gradscope_cli.main import main\n"
            f"try: main(['diff', {before_after[0]!r}, {before_after[1]!r}])\n"
            "except SystemExit as e: code = e.code\n"
            "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "0 False"
