"""A cut graph: the encoder's output is detached inside ``forward``.

Someone wanted to "stop the gradient" for a debugging print and left ``.detach()`` in. The head
trains; the encoder never receives a gradient, and nothing fails.

gradscope should report:
- graph-cut (warning): ``model.encoder.0`` and ``model.encoder.2`` (4 parameters) gets no gradient; the history was
  dropped by ``.detach()`` at line 27 in model's forward (not only "the loss does not depend on
  model.encoder").

Near miss: samples/stop_gradient_ok.py (deliberate stop-gradients, every trainable parameter
still trained).
Run: gradscope trace samples/detach_in_forward.py
"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        features = self.encoder(x)
        features = features.detach()  # left over from debugging
        return self.head(features)


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(3):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()


if __name__ == "__main__":
    main()
