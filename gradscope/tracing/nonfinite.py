"""Which autograd node first produced a NaN or Inf gradient (an opt-in diagnostic).

Turned on with ``gradscope trace --find-nonfinite`` or ``gradscope.watch(..., find_nonfinite=True)``:
before each backward the graph is walked and every node gets a post-hook that records, on the
device, whether the gradients flowing into it and out of it are finite. After the backward the
flags are read in one transfer. Hooks run in execution order, so the first node whose incoming
gradients are finite but whose outgoing ones are not is where the NaN/Inf was born. This costs a
hook per node (a few microseconds each) and one read per backward, which is why it is opt-in,
and it stops after the first hit.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..graph import Graph
from .gradients import read_per_device


def _all_finite(grads: Any) -> list:
    """One device boolean per device among ``grads``: are they all finite there? (One node's
    gradients can sit on two devices: a CUDA op may take a 0-d CPU tensor, whose gradient
    autograd returns on the CPU. Flags are never moved between devices.)"""
    by_device: dict = {}
    for g in grads:
        if isinstance(g, torch.Tensor) and g.is_floating_point():
            by_device.setdefault(g.device, []).append(torch.isfinite(g).all())
    return [flags[0] if len(flags) == 1 else torch.stack(flags).all()
            for flags in by_device.values()]


class NonfiniteFinder:
    def __init__(self) -> None:
        self.found: Optional[dict] = None
        self._handles: list = []
        self._flags: list = []      # (node id, incoming finite, outgoing finite), exec order
        self._graph: Optional[Graph] = None
        self.errors: list = []      # failures inside our node hooks (never raised in backward)

    @property
    def active(self) -> bool:
        return self.found is None

    def arm(self, graph: Graph, fns: list, index: int, location: Optional[str]) -> None:
        """Hook every node of a walked graph (``fns[i]`` is the autograd node of graph node i)."""
        self._graph, self._index, self._location = graph, index, location
        self._flags = []
        for node, fn in zip(graph.nodes, fns):
            try:
                self._handles.append(fn.register_hook(self._make_hook(node.id)))
            except (RuntimeError, AttributeError):  # nodes that take no hooks
                continue

    def _make_hook(self, node_id: str) -> Callable:
        def check(grad_inputs: Any, grad_outputs: Any) -> None:
            try:
                with torch.no_grad(), torch._C.DisableTorchFunction():
                    self._flags.append((node_id, _all_finite(grad_outputs),
                                        _all_finite(grad_inputs)))
            except Exception as e:  # noqa: BLE001 - runs inside the user's backward
                if len(self.errors) < 10:
                    self.errors.append(f"non-finite search at {node_id}: {e!r}")
            return None  # a returned value would replace the gradients
        return check

    def collect(self) -> None:
        """After the backward: one read of all flags, then the hooks go. A failure inside a
        hook is raised here, after the user's backward, for the capture to report."""
        for h in self._handles:
            h.remove()
        self._handles = []
        errors, self.errors = self.errors, []
        self._evaluate()
        if errors:
            raise RuntimeError("; ".join(errors))

    def _evaluate(self) -> None:
        flags, self._flags = self._flags, []
        if not flags or self._graph is None:
            return
        host = read_per_device([f for _, a, b in flags for f in (*a, *b)])
        it = iter(host)
        for node_id, incoming, outgoing in flags:
            inc = all([next(it) for _ in incoming])  # a list: every flag is consumed
            out = all([next(it) for _ in outgoing])
            if inc and out:
                continue
            node = self._graph.node(node_id)
            self.found = {"node": node_id, "op": node.op, "model": node.model,
                          "module": node.module, "backward": self._index,
                          "location": self._location,
                          # already non-finite on arrival: the gradient fed to backward itself
                          "arrived_nonfinite": not inc}
            return

