"""An op that silently does the wrong thing: ``F.dropout`` without ``training=self.training``.

``torch.nn.functional.dropout`` defaults to ``training=True``. Unlike an ``nn.Dropout``
submodule it ignores ``model.eval()``, so the validation score below is computed on a randomly
thinned network (and changes between runs).

gradscope should report:
- dropout-ignores-eval (warning): ``F.dropout(x, p=0.5)`` at line 26 in model's forward kept
  dropping while the model was in eval mode.

Near miss: samples/functional_dropout_ok.py (``training=self.training``, nn.Dropout, and
attention dropout turned off outside training).
Run: gradscope trace samples/functional_dropout.py
"""
import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 64), nn.Linear(64, 5)

    def forward(self, x):
        x = F.dropout(F.relu(self.fc1(x)), 0.5)
        return self.fc2(x)


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for step in range(3):
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        print("validation loss", criterion(model(x), y).item())


if __name__ == "__main__":
    main()
