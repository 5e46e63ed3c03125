"""Seed 003: ``a + b`` with ``a`` on the CPU and ``b`` turned into a CUDA tensor.

On a GPU machine torch stops with "Expected all tensors to be on the same device, but found at
least two devices, cuda:0 and cpu!". On a machine without CUDA the script stops one line
earlier, where it asks for a CUDA tensor.

gradscope should report:
- device-mismatch (error): without CUDA, that the script asks for CUDA at line 24 of this file
  on a machine (or torch build) without it, and how to choose the device portably; on a GPU,
  that ``b`` is on cuda:0 while ``model`` and ``a`` are on cpu.

Run: gradscope trace samples/device_mismatch.py   (exit code 3: the script itself fails)
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    a = torch.ones(2, 3)
    model(a).sum().backward()  # one clean step: the report has a graph to draw
    # the mistake: b is put on the GPU, a and the model stay on the CPU
    b = a.type(dtype="torch.cuda.FloatTensor")
    c = model(a) + b
    c.sum().backward()


if __name__ == "__main__":
    main()
