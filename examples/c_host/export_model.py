"""Writes what the C example trains on, into the directory given as argv[1] (default: here):

digits_cnn.pt  a small residual CNN for 8x8 digits, scripted with TorchScript. Its two
               residual blocks are instances of one class (one TorchScript type).
digits.bin     scikit-learn's digits (1797 images, bundled inside scikit-learn, no download):
               "MMDG", uint32 count, count*64 uint8 pixels (0..16), count uint8 labels.
               Shuffled once with a fixed seed so the C program can split it by position.
"""
import os
import struct
import sys

import numpy as np
import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class DigitsCNN(nn.Module):
    def __init__(self, ch=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, ch, 3, padding=1)
        self.block1 = ResBlock(ch)
        self.block2 = ResBlock(ch)
        self.head = nn.Linear(ch * 64, classes)

    def forward(self, x):
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.head(x.flatten(1))


def main(out_dir):
    from sklearn.datasets import load_digits

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    torch.jit.script(DigitsCNN()).save(os.path.join(out_dir, "digits_cnn.pt"))
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    pixels = digits.data[order].astype(np.uint8)
    labels = digits.target[order].astype(np.uint8)
    with open(os.path.join(out_dir, "digits.bin"), "wb") as f:
        f.write(b"MMDG" + struct.pack("<I", len(labels)) + pixels.tobytes() + labels.tobytes())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
