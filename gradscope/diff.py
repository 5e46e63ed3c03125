"""What changed between two traces of the same program: ``gradscope diff before.json after.json``.

A refactor that silently detaches a branch, freezes a block or drops a head changes no output
shape and raises nothing; it shows up only as parameters that no longer get a gradient, modules
whose autograd nodes vanished and a new ``unused-parameter`` finding. :func:`diff_traces`
compares two saved traces as plain data (no torch needed) and says exactly that; the CLI exits 1
when a new finding at or above ``--fail-on`` appeared, which makes it a CI gate.

The JSON form is documented in ``docs/json-schema.md`` ("gradscope diff").
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from .findings import Finding, at_or_above, severity_rank
from .graph import module_path
from .tracedata import SCHEMA_VERSION, Trace

DIFF_SCHEMA = 1


class DiffInputError(ValueError):
    """A diff input that is no readable gradscope trace; the message names the file and fix."""


def load_trace(path: str) -> Trace:
    """The trace in ``path`` (a ``trace.json``, or a folder holding one), or DiffInputError."""
    if os.path.isdir(path):
        inner = os.path.join(path, "trace.json")
        if not os.path.isfile(inner):
            raise DiffInputError(f"{path!r} is a folder without a trace.json; pass the trace.json "
                                 "that 'gradscope trace --out DIR' or report.save() wrote.")
        path = inner
    if not os.path.exists(path):
        raise DiffInputError(f"no such file: {path!r}. Check the path (relative to "
                             f"{os.getcwd()!r}); write a trace with 'gradscope trace ... --json "
                             "trace.json' or report.save('trace.json').")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DiffInputError(f"cannot read {path!r} as JSON ({e}); pass a trace.json written "
                             "by gradscope.") from None
    if not isinstance(data, dict) or "gradscope" not in data or "schema" not in data:
        raise DiffInputError(f"{path!r} is JSON but not a gradscope trace (it has no 'gradscope' "
                             "and 'schema' keys); pass a trace.json written by gradscope.")
    if not isinstance(data["schema"], int) or data["schema"] > SCHEMA_VERSION:
        raise DiffInputError(f"{path!r} has trace schema {data['schema']!r}, newer than this "
                             f"gradscope reads ({SCHEMA_VERSION}); upgrade gradscope.")
    try:
        return Trace.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise DiffInputError(f"{path!r} looks like a gradscope trace but is damaged ({e!r}); "
                             "write it again.") from None


@dataclasses.dataclass
class TraceDiff:
    """The changes from trace ``a`` (before) to trace ``b`` (after), as plain data."""

    a: dict
    b: dict
    same_program: bool
    summary: dict        # name -> [before, after], only the sizes that changed
    modules: dict        # added, removed, type_changed
    parameters: dict     # added, removed, shape_changed, frozen, unfrozen, lost/gained gradient
    nodes: list          # [{"module", "a", "b"}]: autograd ops created by the module itself
    saved: list          # [{"module", "a", "b"}]: saved-activation bytes of those ops
    findings: dict       # new, fixed: [finding dict]; changed: [{"check", "module", "a", "b"}]

    def new_at_or_above(self, threshold: str) -> list:
        """New findings (or findings whose severity rose) at or above ``threshold``."""
        new = [Finding.from_dict(f) for f in self.findings["new"]]
        new += [Finding(c["check"], c["b"], "", module=c["module"])
                for c in self.findings["changed"] if severity_rank(c["b"]) > severity_rank(c["a"])]
        return at_or_above(new, threshold)

    @property
    def empty(self) -> bool:
        return not (self.summary or any(self.modules.values()) or any(self.parameters.values())
                    or self.nodes or self.saved or any(self.findings.values()))

    def to_dict(self) -> dict:
        return {"gradscope_diff": DIFF_SCHEMA, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"


def diff_traces(a: Trace, b: Trace, a_name: str = "A", b_name: str = "B") -> TraceDiff:
    """Compare two traces (``a`` before, ``b`` after)."""
    return TraceDiff(
        a=_about(a, a_name), b=_about(b, b_name), same_program=_program(a) == _program(b),
        summary=_summary(a, b), modules=_modules(a, b), parameters=_parameters(a, b),
        nodes=_changed(_per_module(a, "ops"), _per_module(b, "ops")),
        saved=_changed(_per_module(a, "saved"), _per_module(b, "saved")),
        findings=_findings(a, b))


def _about(t: Trace, name: str) -> dict:
    return {"file": name, "mode": t.run.get("mode"), "target": t.run.get("target"),
            "status": t.run.get("status"), "torch": t.torch_version,
            "models": [f"{m['label']}: {m['type']}" for m in t.models]}


def _program(t: Trace) -> tuple:
    # The models' labels and types, not the target path: a copy of train.py under another name
    # is the same program; a different model is not.
    return (t.run.get("mode"), tuple((m["label"], m["type"]) for m in t.models))


def _summary(a: Trace, b: Trace) -> dict:
    sa, sb = a.summary(), b.summary()
    pairs = {k: [sa[k], sb[k]] for k in ("nodes", "edges", "ops", "leaves", "saved_bytes",
                                           "parameters")}
    pairs["trainable_parameters"] = [_trainable(a), _trainable(b)]
    pairs["backward_calls"] = [a.backward_calls, b.backward_calls]
    pairs["optimizer_steps"] = [a.optimizer_steps, b.optimizer_steps]
    return {k: v for k, v in pairs.items() if v[0] != v[1]}


def _trainable(t: Trace) -> int:
    return sum(p.get("numel", 0) for p in t.parameters if p.get("requires_grad"))


def _modules(a: Trace, b: Trace) -> dict:
    ma = {module_path(m["model"], m["name"]): m for m in a.modules}
    mb = {module_path(m["model"], m["name"]): m for m in b.modules}
    return {"added": [{"module": k, "type": mb[k]["type"]} for k in mb if k not in ma],
            "removed": [{"module": k, "type": ma[k]["type"]} for k in ma if k not in mb],
            "type_changed": [{"module": k, "a": ma[k]["type"], "b": mb[k]["type"]}
                             for k in mb if k in ma and ma[k]["type"] != mb[k]["type"]]}


def _got_gradient(p: dict) -> Optional[bool]:
    seen = p.get("grad_seen")
    return bool(p.get("in_graph")) if seen is None else bool(seen)


def _parameters(a: Trace, b: Trace) -> dict:
    pa = {f"{p['model']}.{p['name']}": p for p in a.parameters}
    pb = {f"{p['model']}.{p['name']}": p for p in b.parameters}
    both = [k for k in pb if k in pa]
    return {
        "added": [{"parameter": k, "shape": pb[k].get("shape")} for k in pb if k not in pa],
        "removed": [{"parameter": k, "shape": pa[k].get("shape")} for k in pa if k not in pb],
        "shape_changed": [{"parameter": k, "a": pa[k].get("shape"), "b": pb[k].get("shape")}
                          for k in both if pa[k].get("shape") != pb[k].get("shape")],
        "frozen": [k for k in both if pa[k].get("requires_grad") and
                   not pb[k].get("requires_grad")],
        "unfrozen": [k for k in both if not pa[k].get("requires_grad") and
                     pb[k].get("requires_grad")],
        # trainable in both runs, but the loss no longer reaches it (a .detach(), a skipped
        # branch) or newly does
        "lost_gradient": [k for k in both if pb[k].get("requires_grad") and
                          _got_gradient(pa[k]) and not _got_gradient(pb[k])],
        "gained_gradient": [k for k in both if pb[k].get("requires_grad") and
                            pa[k].get("requires_grad") and not _got_gradient(pa[k])
                            and _got_gradient(pb[k])],
    }


def _per_module(t: Trace, what: str) -> dict:
    """Autograd ops (``ops``) or saved-activation bytes (``saved``) per module, counting the
    nodes the module created itself (not its submodules'), as the modules tables do."""
    out: dict = {}
    for n in t.graph.nodes:
        if n.model is None or n.leaf is not None:
            continue
        key = module_path(n.model, n.module)
        out[key] = out.get(key, 0) + (1 if what == "ops" else n.saved_bytes)
    return out


def _changed(before: dict, after: dict) -> list:
    keys = list(before) + [k for k in after if k not in before]
    return [{"module": k, "a": before.get(k, 0), "b": after.get(k, 0)} for k in keys
            if before.get(k, 0) != after.get(k, 0)]


def _findings(a: Trace, b: Trace) -> dict:
    """New, fixed and re-graded findings, matched by (check, module): line numbers move in a
    refactor, so locations and messages do not decide what is the same finding."""
    groups_a, groups_b = _grouped(a.findings), _grouped(b.findings)
    new, fixed, changed = [], [], []
    for key in list(groups_a) + [k for k in groups_b if k not in groups_a]:
        fa, fb = list(groups_a.get(key, [])), list(groups_b.get(key, []))
        for f in list(fb):  # the same message on both sides pairs first
            same = next((g for g in fa if g.message == f.message), None)
            if same is not None:
                fa.remove(same)
                fb.remove(f)
        for f_a, f_b in zip(list(fa), list(fb)):  # then in order
            fa.remove(f_a)
            fb.remove(f_b)
            if f_a.severity != f_b.severity:
                changed.append({"check": key[0], "module": key[1], "a": f_a.severity,
                                "b": f_b.severity, "message": f_b.message})
        new.extend(f.to_dict() for f in fb)
        fixed.extend(f.to_dict() for f in fa)
    return {"new": new, "fixed": fixed, "changed": changed}


def _grouped(findings: list) -> dict:
    out: dict = {}
    for f in findings:
        out.setdefault((f.check, f.module), []).append(f)
    return out
