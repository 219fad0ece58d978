"""Small models the Python tests share."""
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


def cnn(n_out=10):
    "A CNN for 1-channel images: a stem, two ResBlocks, a linear head (a Sequential root)."
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), ResBlock(8), ResBlock(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out))


def mixup_traces(model):
    "What a mixer could have left on a model: forward hooks, and point classes not put back."
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
               + ("_mm_base" in type(m).__dict__) for m in model.modules())
