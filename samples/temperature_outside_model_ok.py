"""The near miss of temperature_outside_model.py: the same CLIP-style loss with a learned
temperature outside the model, cleared correctly with ``optimizer.zero_grad()``, which clears
every parameter the optimizer steps, inside the model or not.

gradscope should report: nothing.

Run: gradscope trace samples/temperature_outside_model_ok.py
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
    logit_scale = nn.Parameter(torch.tensor(2.659))
    opt = torch.optim.AdamW([*model.parameters(), logit_scale], lr=1e-3)
    images, texts = torch.randn(32, 48), torch.randn(32, 24)
    target = torch.arange(32)
    for step in range(5):
        opt.zero_grad()
        a, b = model(images, texts)
        logits = logit_scale.exp() * a @ b.t()
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
