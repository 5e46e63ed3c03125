"""Clean reference: an LSTM sequence tagger (embedding, 2-layer LSTM, linear head).

gradscope should report no findings. The LSTM appears as one fused autograd node holding its
eight weight leaves (``lstm.weight_ih_l0`` ...), with its saved activations.

Run: gradscope trace samples/clean_lstm.py
     gradscope trace samples/clean_lstm.py:build
"""
import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self, vocab=50, d=24, hidden=32, tags=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, tags)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def build():
    """A zero-argument factory: the model and example inputs, for `gradscope trace FILE:build`."""
    torch.manual_seed(0)
    return Tagger(), torch.randint(0, 50, (4, 12))


def main():
    model, tokens = build()
    tags = torch.randint(0, 5, (4, 12))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    for step in range(2):
        opt.zero_grad()
        loss = criterion(model(tokens).reshape(-1, 5), tags.reshape(-1))
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
