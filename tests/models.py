"""Models the tests trace: varied on purpose (MLP, CNN+BatchNorm, LSTM, attention, tied weights,
tuple/dict/dataclass/ModelOutput-style outputs)."""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, sizes=(8, 16, 16, 4)):
        super().__init__()
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(inplace=True))
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class LSTMModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens):
        out, (h, c) = self.lstm(self.embed(tokens))
        return self.head(out[:, -1])


class Attention(nn.Module):
    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TiedLM(nn.Module):
    """Embedding and output projection share one weight."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(30, 16)
        self.block = TransformerBlock(16)
        self.lm_head = nn.Linear(16, 30, bias=False)
        self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        return self.lm_head(self.block(self.tok(idx)))


class TwoHeads(nn.Module):
    """Returns a tuple: two outputs sharing a trunk."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(6, 8)
        self.a = nn.Linear(8, 2)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return self.a(h), self.b(h)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return {"logits": self.fc(x), "hidden": x * 2}


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    aux: Optional[torch.Tensor] = None


class DataclassOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return Output(self.fc(x), None)


class ModelOutput(collections.OrderedDict):
    """Shaped like Hugging Face's ModelOutput: an OrderedDict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class HFStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, input_ids, labels=None):
        logits = self.fc(self.emb(input_ids))
        out = ModelOutput(logits=logits)
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return out


def zoo():
    """(name, model, inputs) for every model above."""
    g = torch.Generator().manual_seed(0)
    return [
        ("mlp", MLP(), (torch.randn(4, 8, generator=g),)),
        ("cnn", CNN(), (torch.randn(2, 3, 16, 16, generator=g),)),
        ("lstm", LSTMModel(), (torch.randint(0, 20, (3, 5), generator=g),)),
        ("transformer", TransformerBlock(), (torch.randn(2, 5, 16, generator=g),)),
        ("tied", TiedLM(), (torch.randint(0, 30, (2, 6), generator=g),)),
        ("two_heads", TwoHeads(), (torch.randn(3, 6, generator=g),)),
        ("hf", HFStyle(), (torch.randint(0, 10, (2, 4), generator=g),)),
    ]
