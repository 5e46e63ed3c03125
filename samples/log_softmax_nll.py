"""Near miss for double-softmax: ``LogSoftmax`` followed by ``NLLLoss``.

``NLLLoss`` does not apply a softmax itself, so ``LogSoftmax`` + ``NLLLoss`` is exactly
``CrossEntropyLoss`` on logits: nothing is applied twice.

gradscope should report: nothing.

Run: gradscope trace samples/log_softmax_nll.py
"""
import torch
from torch import nn


def main():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.LogSoftmax(dim=1))
    criterion = nn.NLLLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(2):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        probabilities = model(x).exp()  # probabilities for a metric: not fed to a loss
        assert probabilities.shape == (32, 10)


if __name__ == "__main__":
    main()
