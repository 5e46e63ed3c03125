"""Near misses: everything here is registered correctly, and gradscope must stay silent
(no warning or error; the tied embedding is reported as info only).

Written in the style of Hugging Face transformers: a config object, ``post_init`` that ties the
input and output embeddings, a ``ModelOutput``-like return value. Also: ``nn.LazyLinear`` (its
weights materialise in the first forward), heads in an ``nn.ModuleList``, a rotary-style cache in a
non-persistent buffer, a frozen (``requires_grad=False``) part, an optimizer with two param
groups, a module-level activation shared by every call, and an input that requires grad (a
saliency map).

gradscope should report:
- tied-weights (info): ``embed.weight = lm_head.weight``; nothing else.

Run: gradscope trace samples/clean_registration.py
"""
import collections
import dataclasses

import torch
from torch import nn

ACT = nn.GELU()  # one shared object, created once at import: not a layer-in-forward


@dataclasses.dataclass
class TinyConfig:
    vocab_size: int = 64
    hidden: int = 32
    tasks: int = 2


class ModelOutput(collections.OrderedDict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TinyLM(nn.Module):
    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.frozen_norm = nn.LayerNorm(config.hidden).requires_grad_(False)
        self.mix = nn.LazyLinear(config.hidden)
        self.heads = nn.ModuleList(nn.Linear(config.hidden, 2) for _ in range(config.tasks))
        self.lm_head = nn.Linear(config.hidden, config.vocab_size, bias=False)
        self.register_buffer("positions", torch.arange(128).float() / 128, persistent=False)
        self.post_init()

    def post_init(self):
        self.lm_head.weight = self.embed.weight  # tie input and output embeddings

    def forward(self, input_ids, labels=None):
        h = self.embed(input_ids) + self.positions[: input_ids.size(1), None]
        h = ACT(self.mix(self.frozen_norm(h)))
        logits = self.lm_head(h)
        task = sum(head(h).mean() for head in self.heads)
        out = ModelOutput(logits=logits, task=task)
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten()) + task
        return out


def main():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    ids = torch.randint(0, 64, (4, 10))
    model(ids)  # materialise the LazyLinear before building the optimizer
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    for step in range(2):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    # saliency: gradient with respect to an input embedding, not a parameter
    emb = model.embed(ids).detach().requires_grad_(True)
    model.lm_head(emb).sum().backward()
    model.eval()


if __name__ == "__main__":
    main()
