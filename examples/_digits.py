"""What the examples and `make demo` share: scikit-learn's bundled digits (8x8, no download)
and a small residual CNN whose blocks ManifoldMixup finds by their class name. Only
digits_dls needs fastai (the plain-PyTorch examples do not)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

N_TRAIN = 1300


class ResBlock(nn.Module):
    "conv-bn-relu-conv-bn plus the identity."

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


def residual_cnn(c=16):
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                         ResBlock(c), ResBlock(c), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(c, 10))


def digits(seed=0):
    "((x, y) train, (x, y) valid): images in [0, 1] as [N, 1, 8, 8], a fixed 1300/497 split."
    # Imported here: scikit-learn loads its own OpenMP runtime, which only the data needs.
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def digits_dls(bs=64, seed=0):
    from fastai.basics import DataLoaders
    train, valid = digits(seed)
    return DataLoaders.from_dsets(list(zip(*train)), list(zip(*valid)), bs=bs)
