"""The optimizers of one run, held by weak references, numbered in the order they were seen.

An optimizer built anew every iteration (``opt = Adam(model.parameters())`` inside the loop)
must not be kept alive by us: each one holds its state, a copy of the model's size for Adam.
So optimizers are referenced weakly; what the report needs (the parameters any of them trained,
each optimizer's record) is plain data kept as it is seen.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

MAX_RECORDS = 1000     # optimizer records kept; later ones are only counted
MAX_SET_SIZE = 100_000  # parameters per optimizer compared by identity


class OptimizerRegistry:
    """Serial numbers (1, 2, ...) for optimizer objects, and one record per optimizer."""

    def __init__(self) -> None:
        self._serials: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._live: dict = {}            # serial -> weak reference
        self._given: list = []           # optimizers the user handed us: kept for the session
        self.records: dict = {}          # serial -> plain record
        self.optimized: set = set()      # ids of parameters of any optimizer given or stepped
        self._sets: dict = {}            # frozenset of parameter ids -> first serial
        self._groups: dict = {}          # serial -> number of param groups when last read
        self.uncounted = 0               # optimizers past MAX_RECORDS
        self._count = 0                  # serials handed out

    def serial(self, optimizer: Any, location: Optional[str] = None) -> int:
        """The optimizer's number, assigned on first sight (with where it was built, when
        that is known)."""
        try:
            known = self._serials.get(optimizer)
        except TypeError:  # not weak-referenceable: an odd wrapper object
            return 0
        if known is not None:
            return known
        self._count += 1
        serial = self._count
        self._serials[optimizer] = serial
        # dropped from the tables when it dies: one built per step must not make every later
        # step look through all the dead ones
        self._live[serial] = weakref.ref(optimizer, lambda _, s=serial: self._forget(s))
        if len(self.records) < MAX_RECORDS:
            self.records[serial] = {"id": serial, "type": type(optimizer).__name__,
                                    "location": location, "steps": 0, "stateful": False,
                                    "params": 0, "same_as": serial}
        else:
            self.uncounted += 1
        self._read_params(optimizer, serial)
        return serial

    def give(self, optimizer: Any) -> None:
        """An optimizer the user handed to ``watch``: its parameters count as optimized."""
        self._given.append(optimizer)
        self.serial(optimizer)
        self.optimized.update(id(p) for p in _params(optimizer))

    def stepped(self, optimizer: Any) -> int:
        serial = self.serial(optimizer)
        rec = self.records.get(serial)
        if rec is not None:
            rec["steps"] += 1
            if not rec["stateful"]:
                rec["stateful"] = bool(getattr(optimizer, "state", None))
        if self._groups.get(serial) != len(getattr(optimizer, "param_groups", ())):
            self._read_params(optimizer, serial)  # add_param_group() since last time
        if rec is None or rec["steps"] == 1:
            self.optimized.update(id(p) for p in _params(optimizer))
        return serial

    def count_step(self, serial: int) -> None:
        """A step of an optimizer stepped before, with nothing else to look at (idle steps)."""
        rec = self.records.get(serial)
        if rec is not None:
            rec["steps"] += 1

    @property
    def active(self) -> bool:
        """Was any optimizer handed to us, or seen stepping?"""
        return bool(self._given) or any(r["steps"] for r in self.records.values()) \
            or bool(self.optimized)

    def steps_of(self, optimizer: Any) -> int:
        try:
            serial = self._serials.get(optimizer)
        except TypeError:
            return 0
        rec = self.records.get(serial) if serial is not None else None
        return rec["steps"] if rec is not None else 0

    def owners(self, params: list) -> list:
        """Serials of the live optimizers that hold any of ``params``."""
        ids = {id(p) for p in params}
        out = []
        for serial, ref in self._live.items():
            opt = ref()
            if opt is not None and any(id(p) in ids for p in _params(opt)):
                out.append(serial)
        return out

    def live(self) -> list:
        """The optimizers still alive, in the order they were seen (a list: asked before every
        backward, where a generator's frame costs more than the usual one optimizer)."""
        return [opt for opt in [ref() for ref in self._live.values()] if opt is not None]

    def _forget(self, serial: int) -> None:
        self._live.pop(serial, None)
        self._groups.pop(serial, None)

    def clear(self) -> None:
        self._given.clear()
        self._live = {}
        self._serials = weakref.WeakKeyDictionary()
        self._sets.clear()

    def _read_params(self, optimizer: Any, serial: int) -> None:
        params = _params(optimizer)
        self._groups[serial] = len(getattr(optimizer, "param_groups", ()))
        rec = self.records.get(serial)
        if rec is None:
            return
        rec["params"] = len(params)
        if 0 < len(params) <= MAX_SET_SIZE:
            key = frozenset(id(p) for p in params)
            rec["same_as"] = self._sets.setdefault(key, serial)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a framework's wrapper (accelerate's ``AcceleratedOptimizer``
    keeps it in ``.optimizer``, Lightning's ``LightningOptimizer`` in ``._optimizer``): the one
    whose ``step`` torch's global hooks see. None when there is no torch optimizer."""
    import torch

    for _ in range(5):  # wrappers of wrappers, but never a cycle
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def _params(optimizer: Any) -> list:
    out = []
    for group in getattr(optimizer, "param_groups", ()):
        out.extend(group.get("params", ()))
    return out
