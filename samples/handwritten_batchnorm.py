"""Seed 000: a hand-written BatchNorm that keeps its moving statistics as plain tensor attributes.

``self.moving_mean`` and ``self.moving_var`` are plain tensors, not buffers: ``model.to(device)``
does not move them (the forward has to patch that up itself), ``state_dict()`` does not save them,
so a reloaded model evaluates with fresh statistics. ``gamma``/``beta`` are proper parameters.

gradscope should report:
- unregistered-tensor (warning): ``bn1.moving_mean``, ``bn1.moving_var`` (and bn2's) are plain
  tensor attributes; hint: ``self.register_buffer("moving_mean", ...)``.
- No error: the model trains; gamma and beta appear as parameter leaves in the graph.

Run: gradscope trace samples/handwritten_batchnorm.py
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
    return Y, moving_mean.detach(), moving_var.detach()


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
