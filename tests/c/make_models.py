"""Writes the small TorchScript models the C tests load, into the directory given as argv[1].

mlp.pt      x -> l1 -> relu -> l2 -> l3: l3 is affine, so mixing at l2 gives exactly the plain
            output mixed, and mixing anywhere before the relu does not.
shared.pt   two instances s1, s2 of one scripted class Block (one TorchScript type, one graph)
            with a Linear `inner` called inside Block.forward, then an affine head: naming
            "s2.inner" rewrites the shared Block graph, and only s2's inner may mix.
tuple.pt    a child whose forward returns a tuple: it cannot be a mixup point.
marked.pt   one child wrapped in a class named ManifoldMixupModule, for the selection rules.
twice.pt    one Linear called twice per forward: the second call must not mix.
empty.pt    no submodule at all: automatic selection finds nothing.
garbage.pt  not a TorchScript archive.
"""
import os
import sys

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.l3(self.l2(torch.relu(self.l1(x))))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(torch.relu(x))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.s1, self.s2, self.head = Block(), Block(), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.s2(self.s1(x)))


class Pair(nn.Module):
    def forward(self, x):
        return x, 2 * x


class WithTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair, self.lin = Pair(), nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.pair(x)
        return self.lin(a + b)


class ManifoldMixupModule(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class Marked(nn.Module):
    def __init__(self):
        super().__init__()
        self.l0 = nn.Linear(4, 4)
        self.wrapped = ManifoldMixupModule(nn.Linear(4, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.wrapped(torch.relu(self.l0(x))))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.l, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.l(torch.relu(self.l(x))))


class Empty(nn.Module):
    def forward(self, x):
        return 2 * x


def main(out_dir):
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    shared = torch.jit.script(Shared())
    assert shared.s1._c._type() == shared.s2._c._type(), "s1 and s2 must share one TorchScript type"
    models = {"mlp": torch.jit.script(MLP()), "shared": shared,
              "tuple": torch.jit.script(WithTuple()), "marked": torch.jit.script(Marked()),
              "twice": torch.jit.script(Twice()), "empty": torch.jit.script(Empty())}
    for name, m in models.items():
        m.save(os.path.join(out_dir, name + ".pt"))
    with open(os.path.join(out_dir, "garbage.pt"), "wb") as f:
        f.write(b"not a TorchScript archive")


if __name__ == "__main__":
    main(sys.argv[1])
