"""Near miss for graph-kept-alive: truncated backpropagation through time done right.

The LSTM state is carried from batch to batch (so the model sees the whole text), but detached
before each forward: each backward stops at the batch boundary, and no graph outlives its step.

gradscope should report no findings.

Run: gradscope trace samples/rnn_tbptt_ok.py
"""
import torch
from torch import nn


class CharLM(nn.Module):
    def __init__(self, vocab=40, d=16, hidden=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        h, state = self.lstm(self.embed(x), state)
        return self.out(h), state


def main():
    torch.manual_seed(0)
    model = CharLM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    text = torch.randint(0, 40, (4, 101))
    state = None
    for i in range(0, 100, 25):
        x, y = text[:, i:i + 25], text[:, i + 1:i + 26]
        if state is not None:
            state = tuple(s.detach() for s in state)  # truncated BPTT
        opt.zero_grad()
        logits, state = model(x, state)
        loss = criterion(logits.reshape(-1, 40), y.reshape(-1))
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
