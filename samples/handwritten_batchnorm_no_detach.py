"""Seed 000 exactly as the notes have it: the hand-written BatchNorm returns its moving
statistics *without* ``.detach()`` ("原代码写的 return Y, moving_mean.detach(), moving_var.detach()
感觉没必要，因为两者都是不带梯度的": the notes find the detach unnecessary because the statistics
"carry no gradient").

They do carry autograd history: ``moving_mean`` is computed from ``mean = X.mean(...)``, and X is
the convolution's output, so it has ``requires_grad=True`` and a ``grad_fn``. Stored back on the
module, it keeps that step's graph alive, the next step chains onto it, and the chain grows with
every forward. The statistics are also plain tensor attributes, not buffers (see
handwritten_batchnorm.py, which keeps the detach: the near miss for the history check).

gradscope should report:
- attribute-keeps-graph (warning): bn1.moving_mean, bn1.moving_var (and bn2's) hold autograd
  history; fix: store ``.detach()``ed values and register them as buffers.
- unregistered-tensor (warning): the same attributes are neither Parameters nor buffers; the
  fix says register_buffer, never nn.Parameter (they require grad only through their history).

Run: gradscope trace samples/handwritten_batchnorm_no_detach.py
"""
import torch
from torch import nn


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
    if not torch.is_grad_enabled():
        X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
    else:
        assert len(X.shape) in (2, 4)
        if len(X.shape) == 2:
            mean = X.mean(dim=0)
            var = ((X - mean) ** 2).mean(dim=0)
        else:
            mean = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        X_hat = (X - mean) / torch.sqrt(var + eps)
        moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
        moving_var = momentum * moving_var + (1.0 - momentum) * var
    Y = gamma * X_hat + beta
    # 原代码写的return Y, moving_mean.detach(), moving_var.detach()
    # 感觉没必要，因为两者都是不带梯度的
    return Y, moving_mean, moving_var


class BN(nn.Module):
    def __init__(self, features, dimensions, **kwargs):
        super().__init__(**kwargs)
        self.shape = (1, features) if dimensions == 2 else (1, features, 1, 1)
        self.gamma = nn.Parameter(torch.ones(self.shape))
        self.beta = nn.Parameter(torch.zeros(self.shape))
        self.momentum = 0.9
        self.moving_mean = torch.zeros(self.shape)  # plain tensors: not buffers
        self.moving_var = torch.ones(self.shape)

    def forward(self, X):
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm(
            X, self.gamma, self.beta, self.moving_mean, self.moving_var,
            eps=1e-5, momentum=self.momentum)
        return Y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.bn1 = BN(6, dimensions=4)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(6 * 12 * 12, 10)
        self.bn2 = BN(10, dimensions=2)

    def forward(self, x):
        x = self.pool(torch.sigmoid(self.bn1(self.conv1(x))))
        return self.bn2(self.fc(x.flatten(1)))


def main():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step in range(3):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
    print("state_dict keys:", list(model.state_dict()))  # no moving_mean / moving_var


if __name__ == "__main__":
    main()
