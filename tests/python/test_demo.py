"""The front door: `make demo`'s script runs end to end (in its 2-epoch smoke mode) and writes
one table row per method and the PNG; each example script runs as its docstring says."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ)  # conftest.py: PYTHONPATH names the package under test


def test_demo_quick_writes_table_and_png(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "digits.py"), "--quick", "--out",
                           str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for method in ("no mixup", "fastai MixUp", "ManifoldMixup", "OutputMixup", "DynamicManifoldMixup",
                   "ManifoldMixup, paper's lam", "Noisy Feature Mixup", "PatchUp soft", "PatchUp hard"):
        assert f"| {method}" in table
    assert "accuracy with noise" in table and "ECE" in table and "The family against" in table
    png = (tmp_path / "digits.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("digits_*.py")) + ["plain_pytorch.py",
                                                                           "ddp_torchrun.py"]


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs(script):
    # ddp_torchrun.py runs as its docstring says: torchrun --standalone --nproc_per_node 2
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
              if script == "ddp_torchrun.py" else [sys.executable])
    done = subprocess.run(launch + [script], cwd=ROOT / "examples", env=dict(ENV, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "times" in done.stdout or "alpha at the end" in done.stdout or "batches" in done.stdout \
        or "identical parameters on every rank: True" in done.stdout
