"""Clean reference: a small ResNet-style CNN with BatchNorm, trained the right way.

gradscope should report no findings. The graph shows conv/BatchNorm/ReLU blocks grouped by
module, a residual add, parameter leaves with names and shapes, and saved activations.

Run: gradscope trace samples/clean_cnn.py
     gradscope trace samples/clean_cnn.py:SmallResNet --input 8,3,32,32
"""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class SmallResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(Block(16), Block(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def main():
    torch.manual_seed(0)
    model = SmallResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model.train()
    for step in range(2):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        print("eval accuracy:", (model(x).argmax(1) == y).float().mean().item())


if __name__ == "__main__":
    main()
