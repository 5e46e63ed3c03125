"""Near miss for device-mismatch: the same model with its constant registered as a buffer.

``register_buffer`` puts ``scale`` in the module's state, so ``model.to(device)`` moves it
with the parameters and the forward never mixes devices. (Without a GPU the ``meta`` device
stands in for the accelerator.)

gradscope should report: nothing (no device-mismatch, no unregistered-tensor).

Run: gradscope trace samples/device_buffer_registered.py
"""
import torch
from torch import nn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "meta")


class Scaler(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.register_buffer("scale", torch.full((4,), 0.5), persistent=False)

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
