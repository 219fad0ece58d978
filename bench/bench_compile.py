"""What mixing costs a compiled model: a residual CNN with 12 mixup points (12 residual blocks),
compiled with inductor on the CPU, trained with and without ManifoldMixer.

For each configuration a fresh process (so that no compile cache of one helps the other, and
inductor's on-disk caches are off) compiles the model, trains `--steps` steps, and reports:
the graphs Dynamo compiled, the steps that ran eagerly (a frame Dynamo gave up on, or a
recompile limit hit), the first step's time (compile included) and the median of the later
steps. The goals of issue 17: at most 3 graphs, no eager step, compile time at most 2x and a
steady-state step at most 1.10x the model without mixing.

    python bench/bench_compile.py [--steps 40] [--blocks 12] [--threads 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(mix, steps, blocks, channels, size, batch):
    import logging

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch._dynamo.utils import counters

    sys.path.insert(0, str(ROOT / "python"))
    from manifold_mixup import ManifoldMixer

    limit_hits = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
                limit_hits.append(record.getMessage())

    logging.getLogger("torch._dynamo").addHandler(Catch())

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return F.relu(x + self.bn(self.conv(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, channels, 3, padding=1)
            self.blocks = nn.Sequential(*[Block(channels) for _ in range(blocks)])
            self.head = nn.Linear(channels, 10)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model)  # inductor
    mm = ManifoldMixer(compiled, alpha=1.0, seed=0, verbose=False) if mix else None
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        if mm is None:
            loss = F.cross_entropy(compiled(x), y)
        else:
            with mm.batch(x) as xb:
                loss = mm.loss(F.cross_entropy, compiled(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    stats = counters["stats"]
    return {
        "graphs": stats["unique_graphs"],
        "frames_failed": counters["frames"]["total"] - counters["frames"]["ok"],
        "limit_hits": len(limit_hits),
        "first_s": times[0],
        "steady_ms": 1000 * statistics.median(times[len(times) // 2:]),
        "drawn_points": sum(n > 0 for n in mm.mixer.point_mixes) if mm else 0,
        "unmixed": mm.mixer.unmixed_batches if mm else 0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", choices=["plain", "mixed"])
    a = p.parse_args()
    if a.child:
        import torch
        torch.set_num_threads(a.threads)
        print(json.dumps(run_one(a.child == "mixed", a.steps, a.blocks, a.channels, a.size, a.batch)))
        return
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1", OMP_NUM_THREADS=str(a.threads))
    results = {}
    for kind in ("plain", "mixed"):
        args = [sys.executable, __file__, "--child", kind] + [
            f"--{k}={getattr(a, k)}" for k in ("steps", "blocks", "channels", "size", "batch", "threads")]
        out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, mixed = results["plain"], results["mixed"]
    print(f"torch.compile (inductor, CPU, {a.threads} thread): residual CNN, {a.blocks} mixup points, "
          f"batch {a.batch}x3x{a.size}x{a.size}, {a.channels} channels, {a.steps} steps\n")
    print("| | graphs | eager steps | first step (compile) s | steady step ms |")
    print("|---|---|---|---|---|")
    for kind, r in results.items():
        eager = r["frames_failed"] + r["limit_hits"]
        print(f"| {kind} | {r['graphs']} | {eager} | {r['first_s']:.1f} | {r['steady_ms']:.2f} |")
    print(f"\nmixed / plain: compile {mixed['first_s'] / plain['first_s']:.2f}x (goal <= 2), "
          f"steady step {mixed['steady_ms'] / plain['steady_ms']:.3f}x (goal <= 1.10); "
          f"{mixed['drawn_points']} of {a.blocks} points drawn, {mixed['unmixed']} unmixed batches")


if __name__ == "__main__":
    main()
