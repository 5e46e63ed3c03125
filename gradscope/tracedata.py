"""Trace: everything one run recorded, as plain data that saves to JSON and loads back equal.

No torch objects live here, so a saved trace re-renders without torch. The JSON layout is
documented in ``docs/json-schema.md``; ``SCHEMA_VERSION`` changes whenever a field changes meaning.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from typing import IO, Any, Optional

from ._gc import collector_paused
from ._version import __version__
from .findings import Finding
from .graph import Graph, graph_json_lines

SCHEMA_VERSION = 2  # 2: the graph by columns (1: an object per node; still read)


@dataclasses.dataclass
class Trace:
    """One run: the graph of the first backward call, the models, the timeline and the findings."""

    graph: Graph = dataclasses.field(default_factory=Graph)
    models: list = dataclasses.field(default_factory=list)       # [{label, type, parameters}]
    modules: list = dataclasses.field(default_factory=list)      # [{model, name, type, ...}]
    parameters: list = dataclasses.field(default_factory=list)   # [{model, name, shape, ...}]
    backward_calls: int = 0
    optimizer_steps: int = 0
    events: list = dataclasses.field(default_factory=list)       # [{kind, index, location, ...}]
    attributes: list = dataclasses.field(default_factory=list)   # plain tensor/container attrs
    constructions: list = dataclasses.field(default_factory=list)  # modules built in forward
    leaves: list = dataclasses.field(default_factory=list)       # unregistered graph leaves
    accumulation: list = dataclasses.field(default_factory=list)  # per optimizer step
    gradients: dict = dataclasses.field(default_factory=dict)    # norms per step, non-finite
    ranks: list = dataclasses.field(default_factory=list)        # merged distributed runs
    transfers: list = dataclasses.field(default_factory=list)    # device copies in forwards
    loss_sites: list = dataclasses.field(default_factory=list)   # where losses were called
    broadcasts: list = dataclasses.field(default_factory=list)   # prediction/target mismatches
    iterations: list = dataclasses.field(default_factory=list)   # where tensors were iterated
    failure: dict = dataclasses.field(default_factory=dict)      # the run's error, explained
    optimizers: list = dataclasses.field(default_factory=list)   # one record per optimizer
    cuts: list = dataclasses.field(default_factory=list)         # where history was dropped
    grad_switches: list = dataclasses.field(default_factory=list)  # requires_grad switched on
    dropout_calls: list = dataclasses.field(default_factory=list)  # F.dropout in forwards
    softmax_calls: list = dataclasses.field(default_factory=list)  # softmax/log_softmax calls
    kept_graphs: list = dataclasses.field(default_factory=list)  # graphs kept across steps
    node_args: dict = dataclasses.field(default_factory=dict)    # node id -> {"dim": ...}
    direct_calls: list = dataclasses.field(default_factory=list)  # module.forward(x) calls
    findings: list = dataclasses.field(default_factory=list)     # [Finding]
    run: dict = dataclasses.field(default_factory=dict)          # mode, target, status, error
    notes: list = dataclasses.field(default_factory=list)        # plain-English remarks
    torch_version: Optional[str] = None

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self, with_graph: bool = True) -> dict:
        d = {
            "gradscope": __version__,
            "schema": SCHEMA_VERSION,
            "torch": self.torch_version,
            "run": dict(self.run),
            "summary": self.summary(),
            "backward_calls": self.backward_calls,
            "optimizer_steps": self.optimizer_steps,
            "notes": list(self.notes),
            "findings": [f.to_dict() for f in self.findings],
            "models": list(self.models),
            "modules": list(self.modules),
            "parameters": list(self.parameters),
            "events": list(self.events),
            "attributes": list(self.attributes),
            "constructions": list(self.constructions),
            "leaves": list(self.leaves),
            "accumulation": list(self.accumulation),
            "gradients": dict(self.gradients),
            "ranks": list(self.ranks),
            "transfers": list(self.transfers),
            "loss_sites": list(self.loss_sites),
            "broadcasts": list(self.broadcasts),
            "iterations": list(self.iterations),
            "failure": dict(self.failure),
            "optimizers": list(self.optimizers),
            "cuts": list(self.cuts),
            "grad_switches": list(self.grad_switches),
            "dropout_calls": list(self.dropout_calls),
            "softmax_calls": list(self.softmax_calls),
            "kept_graphs": list(self.kept_graphs),
            "node_args": dict(self.node_args),
            "direct_calls": list(self.direct_calls),
        }
        if with_graph:
            d["graph"] = self.graph.to_dict()
        return d

    def summary(self) -> dict:
        g = self.graph
        leaves = g.leaf_count()
        return {"nodes": len(g), "edges": len(g.src), "ops": len(g) - leaves, "leaves": leaves,
                "saved_bytes": g.saved_bytes,
                "parameters": sum(p.get("numel", 0) for p in self.parameters)}

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        if not isinstance(d, dict) or "gradscope" not in d:
            raise ValueError("not a gradscope trace: the JSON has no 'gradscope' key")
        return cls(
            graph=Graph.from_dict(d.get("graph", {})),
            models=list(d.get("models", [])), modules=list(d.get("modules", [])),
            parameters=list(d.get("parameters", [])),
            backward_calls=int(d.get("backward_calls", 0)),
            optimizer_steps=int(d.get("optimizer_steps", 0)),
            events=list(d.get("events", [])),
            attributes=list(d.get("attributes", [])),
            constructions=list(d.get("constructions", [])),
            leaves=list(d.get("leaves", [])),
            accumulation=list(d.get("accumulation", [])),
            gradients=dict(d.get("gradients", {})),
            ranks=list(d.get("ranks", [])),
            transfers=list(d.get("transfers", [])), failure=dict(d.get("failure") or {}),
            loss_sites=list(d.get("loss_sites", [])), broadcasts=list(d.get("broadcasts", [])),
            iterations=list(d.get("iterations", [])),
            optimizers=list(d.get("optimizers", [])), cuts=list(d.get("cuts", [])),
            grad_switches=list(d.get("grad_switches", [])),
            dropout_calls=list(d.get("dropout_calls", [])),
            softmax_calls=list(d.get("softmax_calls", [])),
            kept_graphs=list(d.get("kept_graphs", [])),
            node_args=dict(d.get("node_args", {})),
            direct_calls=list(d.get("direct_calls", [])),
            findings=[Finding.from_dict(f) for f in d.get("findings", [])],
            run=dict(d.get("run", {})), notes=list(d.get("notes", [])),
            torch_version=d.get("torch"))

    def write_json(self, fp: IO[str]) -> None:
        """Stream the JSON: one line per top-level key, and the graph one line per column
        (linear time; each column is one ``json.dumps`` of a list, in C)."""
        d = self.to_dict(with_graph=False)
        fp.write("{\n")
        for key, value in d.items():
            fp.write(f" {json.dumps(key)}: {json.dumps(value, sort_keys=True)},\n")
        fp.write(' "graph": {')
        sep = "\n  "
        for line in graph_json_lines(self.graph):
            fp.write(sep)
            fp.write(line)
            sep = ",\n  "
        fp.write("\n }\n}\n")

    def to_json(self) -> str:
        buf = io.StringIO()
        self.write_json(buf)
        return buf.getvalue()

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        with collector_paused():
            return cls.from_dict(json.loads(text))

    def save_json(self, path: str) -> None:
        write_atomically(path, self.write_json)

    @classmethod
    def load(cls, path: str) -> "Trace":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: changing the process umask later, even for an instant, would race with
# other threads of the user's program creating files.
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def write_atomically(path: str, write: Any, mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then rename: a crash or Ctrl-C never
    leaves a half-written report behind. Targets that are not regular files (``/dev/null``, a
    pipe) are written in place: renaming over them would replace the device itself."""
    kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, mode, **kwargs) as f:
            write(f)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gradscope-", dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
