"""Two processes under DistributedDataParallel (gloo, CPU), launched by torchrun: the
plain-PyTorch example and the fastai callback. Bounded in time, so a hang fails the test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # conftest.py: PYTHONPATH names the package
LIMIT_S = 300


def torchrun(script, *args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), *map(str, args)]
    try:
        done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-process run did not finish in {LIMIT_S} s (a deadlock?): {e.stdout!r}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_ddp_two_ranks_plain_loop(tmp_path):
    out = torchrun(ROOT / "examples" / "ddp_torchrun.py", "--epochs", 2, "--out", tmp_path,
                   cwd=ROOT / "examples")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["points"] == ranks[1]["points"] == ["module.3", "module.4"] \
        or ranks[0]["points"] == ranks[1]["points"] == ["3", "4"]
    assert out.count("ManifoldMixup: selection rule 5 chose") == 1  # rank 0 only
    for r in ranks:
        assert r["draws"] == [list(d) for d in r["redrawn"]]  # the seed reproduces the draws
        assert r["batches"] == len(r["chosen"]) and r["unmixed"] == 0
        assert sum(r["mixes"]) + r["input_mixes"] == r["batches"]
        assert r["last_val"] < 0.8 * r["first_val"]  # the loss falls
        assert r["same_params"]
    assert ranks[0]["draws"][0][1] != ranks[1]["draws"][0][1]  # each rank its own generator
    assert ranks[0]["differ"] > 0  # steps where the ranks mixed at different points
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert "identical parameters on every rank: True" in out


def test_ddp_two_ranks_fastai_learner(tmp_path):
    torchrun(Path(__file__).with_name("ddp_fastai_worker.py"), tmp_path, cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"fastai_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["points"] == ranks[1]["points"] and len(ranks[0]["points"]) == 2
    assert "ManifoldMixup:" in ranks[0]["said"] and "ManifoldMixup:" not in ranks[1]["said"]
    for r in ranks:
        assert r["batches"] == 8 and r["mixes"] == 8 and r["unmixed"] == 0
        assert r["same_params"] and r["hooks"] == 0 and r["restored"] == "CrossEntropyLossFlat"
        assert r["losses"][-1] < r["losses"][0]
