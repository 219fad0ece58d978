"""Writes the small TorchScript models the C tests load, into the directory given as argv[1].

mlp.pt      x -> trunk (l1, relu) -> l2 -> l3: l3 is affine, so mixing at l2 gives exactly the plain
            output mixed, and mixing anywhere before the relu does not.
shared.pt   two instances s1, s2 of one scripted class Block (one TorchScript type, one graph)
            with a Linear `inner` called inside Block.forward, then an affine head: naming
            "s2.inner" rewrites the shared Block graph, and only s2's inner may mix.
tuple.pt    a child whose forward returns a tuple: it cannot be a mixup point; another such child,
            named already_trained (a word that once made the status MM_ERR_STATE).
marked.pt   one child wrapped in a class named ManifoldMixupModule, for the selection rules.
twice.pt    one Linear called twice per forward: the second call must not mix.
resnet.pt   a small ResNet (BatchNorm, Sequential stages, BasicBlocks of one type; a downsample
            Sequential in one block): selection by class name, and points deep in the tree.
empty.pt    no submodule at all: automatic selection finds nothing.
unsaveable.pt  loads, but refuses to be saved again (its __getstate__ raises once loaded).
garbage.pt  not a TorchScript archive.
syntax_error.pt    mlp.pt with a syntax error in its code.
bad_type_name.pt   mlp.pt whose data names a class its code does not define.
"""
import os
import sys
import zipfile
from typing import Tuple

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.l3(self.l2(self.trunk(x)))

    @torch.jit.export
    def trunk(self, x):
        """The layers before l2."""
        return torch.relu(self.l1(x))


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
        self.pair, self.already_trained, self.lin = Pair(), Pair(), nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.pair(x)
        c, d = self.already_trained(a + b)
        return self.lin(c + d)


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


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, 1, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class Empty(nn.Module):
    def forward(self, x):
        return 2 * x


class Unsaveable(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.randn(4, 3)
        self.loaded = False

    def forward(self, x):
        return x @ self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[bool, bool, torch.Tensor]:
        if self.loaded:
            raise RuntimeError("this module refuses to be saved again")
        return (True, self.training, self.w)

    @torch.jit.export
    def __setstate__(self, state: Tuple[bool, bool, torch.Tensor]) -> None:
        self.loaded, self.training, self.w = state


def rewrite_archive(src, dst, member_suffix, old, new):
    """A copy of the archive src with `old` replaced by `new` in the member ending in member_suffix."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(member_suffix):
                assert old in data, (info.filename, old)
                data = data.replace(old, new)
            zout.writestr(info, data)


def main(out_dir):
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    shared = torch.jit.script(Shared())
    assert shared.s1._c._type() == shared.s2._c._type(), "s1 and s2 must share one TorchScript type"
    models = {"mlp": torch.jit.script(MLP()), "shared": shared,
              "tuple": torch.jit.script(WithTuple()), "marked": torch.jit.script(Marked()),
              "twice": torch.jit.script(Twice()), "empty": torch.jit.script(Empty()),
              "resnet": torch.jit.script(ResNet()), "unsaveable": torch.jit.script(Unsaveable())}
    for name, m in models.items():
        m.save(os.path.join(out_dir, name + ".pt"))
    mlp = os.path.join(out_dir, "mlp.pt")
    rewrite_archive(mlp, os.path.join(out_dir, "syntax_error.pt"), "code/__torch__.py",
                    b"return torch.relu(", b"return torch.relu((")
    # The importer meets the unknown class while reading the data, and reports it with a raw
    # torch::jit::ErrorReport (not a c10::Error).
    rewrite_archive(mlp, os.path.join(out_dir, "bad_type_name.pt"), "data.pkl", b"___torch_mangle_1\n",
                    b"___torch_mangle_9\n")
    with open(os.path.join(out_dir, "garbage.pt"), "wb") as f:
        f.write(b"not a TorchScript archive")


if __name__ == "__main__":
    main(sys.argv[1])
