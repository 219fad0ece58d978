"""One native core in a process: the Python module and the C library both link
libmanifold_mixup_core, so a process may load them in either order (a Python host of a C plugin,
a C host that embeds Python) and both mix, through the one registration of the ops. Each order
runs in a fresh process: on failure, libtorch ends the process ("Only a single TORCH_LIBRARY can
be used to register the namespace manifold_mixup")."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import manifold_mixup

HERE = Path(__file__).resolve().parent
PACKAGE = Path(manifold_mixup.__file__).resolve().parent
C_LIBRARY = PACKAGE / "lib" / "libmanifold_mixup.so.0"
TORCH_LIB = Path(torch.__file__).resolve().parent / "lib"

PYTHON_FIRST = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
import torch, manifold_mixup
import c_abi_driver
x = torch.randn(4, 3)
mixed = manifold_mixup.mix(x, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5))
said = c_abi_driver.mix_through_c_abi(c_abi_driver.load(sys.argv[1]), sys.argv[2])
said["python_mix"] = torch.allclose(mixed[0], (x[0] + x[1]) / 2)
said["cores"] = c_abi_driver.mapped_cores()
print(json.dumps(said))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A TorchScript file and the module it holds."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    path = tmp_path_factory.mktemp("one_core") / "mlp.pt"
    torch.jit.script(net).save(str(path))
    return path, net


def run(cmd, env=None):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=HERE,
                          env=dict(os.environ, **(env or {})))
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(said, model):
    """The C library mixed at point 0, the Python module mixed, one core was mapped."""
    assert said["version"] == manifold_mixup.__version__
    assert said["python_mix"] is True
    assert said["mixed"] == 1
    net = model[1]
    x, lam, perm = torch.tensor(said["x"]), torch.tensor(said["lam"]), torch.tensor(said["perm"])
    with torch.no_grad():
        h = net[0](x)
        h = lam[:, None] * h + (1 - lam[:, None]) * h[perm]
        expected = net[2](net[1](h))
    torch.testing.assert_close(torch.tensor(said["out"]), expected)
    assert sorted(perm.tolist()) == list(range(len(perm))) and perm.tolist() != sorted(perm.tolist())
    assert len(said["cores"]) == 1, said["cores"]


def test_python_module_then_c_library(model):
    check(run([sys.executable, "-c", PYTHON_FIRST, C_LIBRARY, model[0]]), model)


def test_c_library_then_python_module(model):
    # This tree's libraries find libtorch beside them only inside site-packages: here the
    # program names it, as a C program must when torch lives elsewhere.
    said = run([sys.executable, HERE / "c_abi_driver.py", C_LIBRARY, model[0]],
               env={"LD_LIBRARY_PATH": str(TORCH_LIB)})
    check(said, model)
