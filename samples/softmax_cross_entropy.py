"""Seeds 000/001: softmax in the model, then ``nn.CrossEntropyLoss`` — softmax applied twice.

``CrossEntropyLoss`` already applies log-softmax to raw logits. Feeding it probabilities squashes
the logits a second time: gradients shrink and training stalls.

gradscope should report:
- double-softmax (warning): ``model.out`` (``nn.Softmax``) feeds ``CrossEntropyLoss``, called
  at line 35; hint:
  remove the softmax from the model and apply it only at inference.

Run: gradscope trace samples/softmax_cross_entropy.py
"""
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.out = nn.Softmax(dim=1)  # the mistake: CrossEntropyLoss does this itself

    def forward(self, x):
        return self.out(self.fc(x.flatten(1)))


def main():
    torch.manual_seed(0)
    model = Classifier()
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for step in range(3):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
