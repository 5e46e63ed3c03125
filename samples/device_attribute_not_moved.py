"""A plain tensor attribute that ``model.to(device)`` does not move (seed 003, device errors).

``self.scale`` is a bare tensor, not a buffer: ``.to(device)`` moves the parameters and
buffers and leaves it on the CPU, so the first forward on the accelerator mixes devices. On a
machine without a GPU the ``meta`` device stands in for it (same error, no data).

gradscope should report:
- device-mismatch (error): in ``model`` (``Scaler``), ``self.scale`` is on cpu while the input
  and the parameters are on the accelerator; hint: register it as a buffer.
- unregistered-tensor (warning): ``model.scale`` is a plain tensor attribute.

Run: gradscope trace samples/device_attribute_not_moved.py   (exit code 3: the script fails)
"""
import torch
from torch import nn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "meta")


class Scaler(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.scale = torch.full((4,), 0.5)  # the mistake: not registered, so .to() skips it

    def forward(self, x):
        return self.fc(x) * self.scale


def main():
    torch.manual_seed(0)
    model = Scaler().to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        x, y = torch.randn(8, 16).to(DEVICE), torch.randn(8, 4).to(DEVICE)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
