"""The HTML report: self-contained, every user string inert, and working in a real browser."""
import os
import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

import gradscope
from gradscope.render.html import _json_for_script

from conftest import REPO

EVIL = '<script>alert(1)</script>"\'{}\\\n'
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")


def _evil_report():
    Evil = type("Evil<img src=x onerror=alert(2)>", (nn.Module,), {
        "forward": lambda self, x: self.stash[0](getattr(self, EVIL)(x))})
    model = Evil()
    model.add_module(EVIL, nn.Linear(3, 3))
    model.stash = [nn.Linear(3, 2)]  # a plain list: findings with nodes to highlight
    return gradscope.trace(model, torch.randn(2, 3))


def test_json_in_a_script_element_cannot_close_it():
    text = _json_for_script({"x": "</script><script>alert(1)</script>", "y": "\u2028<!--"})
    assert "<" not in text and ">" not in text and "\u2028" not in text
    import json
    assert json.loads(text)["x"] == "</script><script>alert(1)</script>"


@pytest.mark.dot
def test_report_is_self_contained_and_escapes_user_strings():
    html = _evil_report().to_html()
    # nothing is fetched: no external scripts, styles, fonts or images
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "@import" not in html and "url(" not in html
    # exactly our two script elements, and no user string became markup
    assert html.count("<script") == 2
    assert "<img" not in html and "onerror=alert(2)>" not in html
    assert "alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "default-src 'none'" in html  # a CSP forbids any fetch even if something slipped


@pytest.mark.dot
def test_cli_writes_the_html_report(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from gradscope_cli.main import main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["trace", os.path.join(REPO, "samples", "forgot_zero_grad.py"),
                                  "--out", "rep", "-q"])
    assert r.exit_code == 1
    html = open("rep/report.html").read()
    for part in ("missing-zero-grad", "Gradient flow", "Gradient accumulation per optimizer step",
                 "net.0.weight", "id=\"gs-graph\""):
        assert part in html
    assert os.path.exists("rep/gradflow.svg")


def _chromium(args, user_dir, timeout=90):
    cmd = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
           f"--user-data-dir={user_dir}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.dot
@pytest.mark.browser
def test_report_renders_and_clicks_in_headless_chromium(tmp_path):
    report = _evil_report()
    assert report.findings and report.findings[0].nodes
    page = tmp_path / "report.html"
    report.save(str(page))
    url = f"file://{page}#finding=0"  # the page clicks finding 0 itself on load
    dom = _chromium(["--dump-dom", url], tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-gs-ready="1"' in dom.stdout, "the page script did not finish"
    highlighted = re.search(r'data-gs-highlighted="(\d+)"', dom.stdout)
    assert highlighted and int(highlighted.group(1)) == len(
        [n for n in report.findings[0].nodes])
    assert 'class="node gs-hl"' in dom.stdout
    assert "<svg" in dom.stdout and 'class="gs-finding error active"' in dom.stdout
    errors = [line for line in dom.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert errors == []
    # no user string ran: the injected alerts never executed (no dialog was opened)
    assert "alert" not in "".join(line for line in dom.stderr.splitlines() if "CONSOLE" in line)
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "report.png")
    _chromium([f"--screenshot={shot}", "--window-size=1400,1000", url], tmp_path / "profile2")
    assert os.path.getsize(shot) > 10_000  # kept as an artefact, not compared byte for byte


def _notebook_page(*reports):
    """What Jupyter does with rich output: each repr's HTML inserted into the page as it is.
    The harness script only listens; it never reaches into the iframes."""
    cells = "".join(f'<div class="output_html">{r._repr_html_()}</div>' for r in reports)
    harness = ("<pre id='seen'></pre><script>var seen = [];"
               "window.addEventListener('message', function (ev) {"
               " if (ev.data && ev.data.gradscope === 'ready') { seen.push(ev.data);"
               "  document.getElementById('seen').textContent = JSON.stringify(seen); } });"
               "</script>")
    return f"<!DOCTYPE html><html><body>{harness}{cells}</body></html>"


def test_notebook_repr_is_self_contained_and_escaped():
    report = _evil_report()
    html = report._repr_html_()
    assert html.startswith('<iframe sandbox="allow-scripts" ') and html.endswith("</iframe>")
    # the whole page is inside one attribute: no markup of it (or of a user string) is live
    assert html.count("<") == 2 and "<script" not in html and "<img" not in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    import html as htmllib

    page = htmllib.unescape(html.split('srcdoc="', 1)[1].rsplit('"', 1)[0])
    assert page == report.to_html()  # the same self-contained page as report.save("x.html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_findings_print_readably():
    report = _evil_report()
    text = repr(report.findings)
    assert text.splitlines()[0].startswith("findings (")
    assert "fix:" in text and str(report.findings) == text
    assert report.findings is report.findings and report.findings == report.trace.findings
    assert str(report.findings[0]).lstrip().startswith("ERROR")


@pytest.mark.dot
@pytest.mark.browser
def test_two_reports_render_side_by_side_in_a_notebook_page(tmp_path):
    clean = gradscope.trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)),
                            torch.randn(2, 3), label="clean")
    evil = _evil_report()
    page = tmp_path / "notebook.html"
    page.write_text(_notebook_page(clean, evil))
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", f"file://{page}"],
                    tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    import html as htmllib
    import json

    found = re.search(r'<pre id="seen">([^<]*)</pre>', dom.stdout)
    assert found and found.group(1), "no report in the notebook page said it was ready"
    reports = {r["title"]: r for r in json.loads(htmllib.unescape(found.group(1)))}
    assert len(reports) == 2  # both scripts ran, each in its own frame: no id clash
    assert reports.pop("gradscope: clean") == {
        "gradscope": "ready", "title": "gradscope: clean", "findings": 0,
        "boxes": len(clean.graph.nodes)}  # the graph is drawn: every node a clickable box
    (title, other), = reports.items()
    assert title.startswith("gradscope: Evil<img")  # the user's string, inert text
    assert other["findings"] == len(evil.findings) > 0
    assert other["boxes"] == len(evil.graph.nodes)
    errors = [line for line in dom.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert errors == []
    assert "alert" not in "".join(line for line in dom.stderr.splitlines() if "CONSOLE" in line)
