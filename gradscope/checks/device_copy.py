"""device-copy: host<->device copies inside a model's forward (seed 004: transfers are slow).

Copies of the batch before the forward are normal and never recorded; inside the forward, each
copy costs a transfer, and reading values into Python (``.item()``, ``.tolist()``, ``if t:``)
also makes the CPU wait for every kernel queued before it."""
from __future__ import annotations

from ..findings import Finding
from ..graph import module_path
from ._common import names_list, plural
from .registry import Check

MAX_FINDINGS = 10
_READ_HINT = ("Keep the value on the device as a tensor (torch.where, clamp, masks) instead of "
              "reading it into Python; if you need it for logging, read it once per step outside "
              "forward.")
_MOVE_HINT = ("Create the tensor where it is used (torch.arange(n, device=x.device)), or register "
              "a constant with self.register_buffer(...) so model.to(device) moves it once.")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _grouped(transfers: list) -> list:
    """One row per call site and kind of copy: a line in a block class that has twelve
    instances is one finding, with the modules listed."""
    groups: dict = {}
    for r in transfers:
        if not r.get("count"):
            continue
        key = (r.get("model"), r["op"], r["src"], r["dst"], r.get("location"))
        g = groups.get(key)
        if g is None:
            g = groups[key] = {**r, "modules": [], "count": 0, "bytes": 0, "forwards": 0}
        g["modules"].append(r.get("module"))
        g["count"] += r["count"]
        g["bytes"] += r.get("bytes", 0)
        g["forwards"] = max(g["forwards"], r.get("forwards", 1))
    return list(groups.values())


def run(trace) -> list:
    rows = _grouped(trace.transfers)
    rows.sort(key=lambda r: (-r.get("bytes", 0), -r["count"], r.get("location") or ""))
    out = []
    for r in rows[:MAX_FINDINGS]:
        paths = [module_path(r.get("model"), m) for m in r["modules"]]
        path = names_list(paths, 3) if paths[0] else "a forward"
        forwards = max(r.get("forwards", 1), 1)
        per = r["count"] / forwards
        per_text = f"{per:g} time{'s' if per != 1 else ''} per forward"
        read = r["dst"] == "host"
        what = (f".{r['op']}() reads a value of a {r['src']} tensor into Python" if read
                else f"{r['op']}() copies a tensor from {r['src']} to {r['dst']}")
        cost = ("the CPU waits for all queued device work at each read" if read and
                r["src"].startswith("cuda") else "each copy is a transfer over the bus")
        out.append(Finding(
            "device-copy", "warning",
            f"In the forward of {path}, {what} {per_text} ({_size(r.get('bytes', 0) / forwards)} "
            f"per forward, {plural(r['count'], 'copy')} in {plural(forwards, 'forward')}):"
            f" {cost}, which stalls the pipeline.",
            hint=_READ_HINT if read else _MOVE_HINT, module=paths[0],
            location=r.get("location"), data=dict(r)))
    return out


CHECK = Check("device-copy", "warning",
              "host<->device copies (or value reads) inside a model's forward", run)
