"""A CLIP-style contrastive loss with a learned temperature kept outside the model, cleared
with ``model.zero_grad()`` instead of ``optimizer.zero_grad()``.

``logit_scale`` is an ``nn.Parameter`` the optimizer trains, but it belongs to no model, so
``model.zero_grad()`` never clears its gradient: every step adds the new gradient to all the
old ones, and the temperature drifts ever faster while the model's own weights train normally.

gradscope should report:
- missing-zero-grad (error): logit_scale's gradient carried across steps; the message says
  model.zero_grad() leaves it alone and optimizer.zero_grad() clears it.

Run: gradscope trace samples/temperature_outside_model.py
"""
import torch
from torch import nn
from torch.nn import functional as F


class Encoder(nn.Module):
    def __init__(self, d_in: int, d: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, d))

    def forward(self, x):
        return F.normalize(self.net(x), dim=-1)


class Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.image, self.text = Encoder(48), Encoder(24)

    def forward(self, images, texts):
        return self.image(images), self.text(texts)


def main():
    torch.manual_seed(0)
    model = Clip()
    logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as in CLIP
    opt = torch.optim.AdamW([*model.parameters(), logit_scale], lr=1e-3)
    images, texts = torch.randn(32, 48), torch.randn(32, 24)
    target = torch.arange(32)
    for step in range(5):
        model.zero_grad()  # the mistake: logit_scale is not in the model
        a, b = model(images, texts)
        logits = logit_scale.exp() * a @ b.t()
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.3f}, logit_scale grad {logit_scale.grad.item():.3f}")


if __name__ == "__main__":
    main()
