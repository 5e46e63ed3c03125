"""device-mismatch: the run failed because one op mixed devices (seed 003), or asked for CUDA
on a machine without it. Explains which module and which of its tensors sit where."""
from __future__ import annotations

from ..findings import Finding
from ._common import names_list
from .registry import Check

CUDA_HINT = ("Pick the device once, device = torch.device('cuda' if torch.cuda.is_available() "
             "else 'cpu'), and create or move the model and every tensor with .to(device), so "
             "that the script runs on both kinds of machine and no op mixes devices.")


def _by_device(rows: list) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["device"], []).append(r)
    return out


def _odd_ones(rows: list) -> tuple:
    """(the device most things are on, the rows elsewhere). Parameters decide ties: the model
    is where the user meant things to be."""
    groups = _by_device(rows)
    if len(groups) < 2:
        return None, []
    main = max(groups, key=lambda d: (sum(r.get("kind") == "parameter" for r in groups[d]),
                                      len(groups[d])))
    return main, [r for r in rows if r["device"] != main]


def _placed(r: dict) -> str:
    return f"{_label(r)} {'are' if r.get('count', 1) > 1 else 'is'} on {r['device']}"


def _label(r: dict) -> str:
    if r.get("count"):
        return f"the {r['name']}"
    kind = r.get("kind")
    if kind == "attribute":
        return f"the plain tensor attribute self.{r['name']}"
    if kind in ("parameter", "buffer"):
        return f"{kind} {r['name']}"
    return r["name"]


def _mismatch(trace, failure: dict) -> Finding:
    module = failure.get("module") or {}
    rows = module.get("devices") or []
    tensors = failure.get("tensors") or []
    path = None
    if module.get("model") is not None:
        name = module.get("module")
        path = f"{module['model']}.{name}" if name else module["model"]
    main, odd = _odd_ones(rows)
    if not odd:  # the module's own tensors agree: look at what the failing line names
        main, odd = _odd_ones(tensors)
        rows = tensors
    where = f"{path} ({module.get('type')})" if path else "code outside any model"
    placed = "; ".join(_placed(r) for r in (odd + [
        r for r in rows if r["device"] == main])[:8])
    message = (f"The run failed with torch's device error in {where}"
               f"{' at ' + failure['location'] if failure.get('location') else ''}: "
               f"{placed or failure.get('error', '')}. One operation cannot mix devices.")
    attrs = [r for r in odd if r.get("kind") == "attribute"]
    inputs = [r for r in odd if r.get("kind") == "input"]
    if attrs:
        hint = (f"{names_list(['self.' + r['name'] for r in attrs])} is a plain tensor attribute, "
                "so model.to(device) did not move it (see unregistered-tensor): register it with "
                "self.register_buffer(name, tensor) (persistent=False to keep it out of the "
                "state_dict).")
    elif inputs:
        hint = (f"Move the inputs to the model's device before the call (x = x.to({main!r}) or "
                "x.to(next(model.parameters()).device)).")
    elif odd:
        hint = (f"Put {names_list([r['name'] for r in odd])} on {main} (create it there with "
                f"device=..., or .to({main!r}) once, outside the loop).")
    else:
        hint = ("Print the devices of the tensors used on that line; create or move all of them "
                "with the same device.")
    return Finding("device-mismatch", "error", message, hint=hint, module=path,
                   location=failure.get("location"),
                   data={"error": failure.get("error"), "devices": rows, "odd": odd,
                         "main": main, "line": failure.get("line")})


def _first_sentence(text: str, limit: int = 120) -> str:
    text = (text or "").split(". ", 1)[0].strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_cuda(failure: dict) -> Finding:
    line = f" (`{failure['line']}`)" if failure.get("line") else ""
    return Finding(
        "device-mismatch", "error",
        f"The script asks for a CUDA device at {failure.get('location') or 'an unknown line'}"
        f"{line}, but this torch build or machine has no usable CUDA GPU (torch: "
        f"'{_first_sentence(failure.get('error'))}')."
        " The run stopped there.",
        hint=CUDA_HINT, location=failure.get("location"),
        data={"error": failure.get("error"), "cuda_available": False, "line": failure.get("line")})


def run(trace) -> list:
    failure = trace.failure or {}
    if failure.get("kind") == "device-mismatch":
        return [_mismatch(trace, failure)]
    if failure.get("kind") == "cuda-unavailable":
        return [_no_cuda(failure)]
    return []


CHECK = Check("device-mismatch", "error",
              "the run failed on tensors on different devices (or on CUDA missing)", run)
