"""A graph kept alive across steps: an LSTM's hidden state carried into the next batch
without ``.detach()`` - and the usual "fix", ``retain_graph=True``.

Without ``retain_graph=True`` the second ``backward()`` fails with "Trying to backward through
the graph a second time": the state still holds the previous batch's graph, which the
previous backward freed. With it, backward runs back through every earlier batch, whose
saved weights ``opt.step()`` has since changed in place, so torch fails with its in-place
error instead (before that, memory and time would grow every batch).

gradscope should report:
- graph-kept-alive (error): explains the failure (exit code 3): ``state``, carried into model's
  forward at line 44, with retain_graph=True at line 46, and the fix ``state =
  tuple(s.detach() for s in state)``. (Not only inplace-modified on the symptom.)

Near miss: samples/rnn_tbptt_ok.py (truncated BPTT: the state detached every batch).
Run: gradscope trace samples/rnn_state_not_detached.py
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
        opt.zero_grad()
        logits, state = model(x, state)
        loss = criterion(logits.reshape(-1, 40), y.reshape(-1))
        loss.backward(retain_graph=True)  # "fixes" the second-backward error
        opt.step()


if __name__ == "__main__":
    main()
