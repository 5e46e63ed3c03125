"""Near miss for the new training-loop checks: a WGAN-GP loop, correct.

Two models and two optimizers; the generator's output is detached for the critic's update and
fed again (with its history) for the generator's; the gradient penalty uses
``torch.autograd.grad(create_graph=True)``; the critic's gradients are clipped between its
backward and its step. Nothing here is dead training, a cut graph, a graph kept alive or a
step-order mistake, although each step looks like one of them to a naive check.

gradscope should report no findings.

Run: gradscope trace samples/gan_ok.py
"""
import torch
from torch import nn


def gradient_penalty(critic, real, fake):
    alpha = torch.rand(real.shape[0], 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grads, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grads.norm(dim=1) - 1) ** 2).mean()


def main():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
    critic = nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.9))
    c_opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    for step in range(4):
        real = torch.randn(32, 16)
        fake = gen(torch.randn(32, 8))
        c_opt.zero_grad()
        c_loss = critic(fake.detach()).mean() - critic(real).mean() \
            + 10 * gradient_penalty(critic, real, fake.detach())
        c_loss.backward()
        torch.nn.utils.clip_grad_norm_(critic.parameters(), 5.0)
        c_opt.step()
        g_opt.zero_grad()
        g_loss = -critic(fake).mean()
        g_loss.backward()
        g_opt.step()


if __name__ == "__main__":
    main()
