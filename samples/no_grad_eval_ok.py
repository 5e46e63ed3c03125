"""Near miss for dead-training: ``torch.no_grad()``, ``argmax`` and ``.item()`` used where they
belong.

The training forward runs with gradients; ``argmax`` only computes the accuracy; the loss is
logged with ``.item()``; evaluation runs under ``torch.no_grad()`` in eval mode; the embedding
is frozen with ``requires_grad_(False)`` and still sits in the optimizer (a common fine-tuning
set-up): it is not "trainable", so it never makes a step look dead.

gradscope should report no warnings or errors.

Run: gradscope trace samples/no_grad_eval_ok.py
"""
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU())
        self.head = nn.Linear(64, 5)

    def forward(self, tokens):
        return self.head(self.body(self.embed(tokens).mean(dim=1)))


def main():
    torch.manual_seed(0)
    model = Classifier()
    model.embed.requires_grad_(False)  # frozen on purpose, left in the optimizer
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    tokens, y = torch.randint(0, 100, (64, 12)), torch.randint(0, 5, (64,))
    for step in range(3):
        model.train()
        opt.zero_grad()
        logits = model(tokens)
        loss = criterion(logits, y)
        loss.backward()
        opt.step()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
        model.eval()
        with torch.no_grad():
            val = criterion(model(tokens), y).item()
        print(f"step {step}: loss {loss.item():.3f} acc {accuracy:.2f} val {val:.3f}")


if __name__ == "__main__":
    main()
