"""What mixing adds to a training step, on the demo's CNN (examples/_digits.py residual_cnn,
batch 64, scikit-learn's digits): fastai with no callback, fastai's MixUp, our ManifoldMixup and
OutputMixup, and the plain-PyTorch ManifoldMixer/OutputMixer against the same plain loop.

The configurations take turns round by round (each round runs every one of them for the same
batches, in a rotating order), and the overhead is the median over rounds of the difference of
per-batch medians against the baseline of the same round. Times are the CPU time of the
training thread with one torch thread, so that other load on the machine matters less
(`--wall` reports wall-clock time instead).

    python bench/bench_step.py [--rounds 15] [--batches 20]
"""
import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "python"))

from _digits import digits, residual_cnn  # noqa: E402
from manifold_mixup import ManifoldMixer, OutputMixer  # noqa: E402


def fastai_runner(cb_factory, batches, clock):
    "A Learner whose training batches are timed from the first before_batch to the last after_batch."
    from fastai.basics import Callback, CrossEntropyLossFlat, DataLoaders, Learner

    times = []

    class Start(Callback):
        order, run_valid = -1000, False

        def before_batch(self):
            self.t0 = clock()

    class Stop(Callback):
        order, run_valid = 1000, False

        def __init__(self, start):
            self.start = start

        def after_batch(self):
            times.append(clock() - self.start.t0)

    (x, y), (xv, yv) = digits()
    n = batches * 64
    dls = DataLoaders.from_dsets(list(zip(x[:n], y[:n])), list(zip(xv[:64], yv[:64])), bs=64)
    torch.manual_seed(0)
    start = Start()
    cbs = [start, Stop(start)] + ([cb_factory()] if cb_factory else [])
    learn = Learner(dls, residual_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)

    def run():
        times.clear()
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn.fit(1, 1e-3)
        return list(times)
    return run


def plain_runner(kind, batches, clock):
    "A plain PyTorch loop: forward, loss, backward, step; with ManifoldMixer or OutputMixer."
    (x, y), _ = digits()
    torch.manual_seed(0)
    model = residual_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mm = ManifoldMixer(model, alpha=0.4, verbose=False) if kind == "manifold" else None
    om = OutputMixer(alpha=0.4) if kind == "output" else None
    xs = [x[i * 64:(i + 1) * 64] for i in range(batches)]
    ys = [y[i * 64:(i + 1) * 64] for i in range(batches)]

    def step(xb, yb):
        if mm is not None:
            with mm.batch(xb) as mixed:
                loss = mm.loss(F.cross_entropy, model(mixed), yb)
        elif om is not None:
            loss = om.loss(F.cross_entropy, model(xb), yb)
        else:
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def run():
        model.train()
        times = []
        for xb, yb in zip(xs, ys):
            t0 = clock()
            step(xb, yb)
            times.append(clock() - t0)
        return times
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, default=20, help="batches per configuration per round")
    parser.add_argument("--wall", action="store_true", help="wall-clock instead of thread CPU time")
    parser.add_argument("--no-fastai", action="store_true", help="only the plain-PyTorch loop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = time.perf_counter if args.wall else time.thread_time

    groups = [("plain loop", [("no mixing", plain_runner(None, args.batches, clock)),
                              ("ManifoldMixer", plain_runner("manifold", args.batches, clock)),
                              ("OutputMixer", plain_runner("output", args.batches, clock))])]
    if not args.no_fastai:
        from fastai.callback.mixup import MixUp
        from manifold_mixup import ManifoldMixup, OutputMixup
        groups.insert(0, ("fastai Learner", [
            ("no callback", fastai_runner(None, args.batches, clock)),
            ("fastai MixUp", fastai_runner(lambda: MixUp(0.4), args.batches, clock)),
            ("ManifoldMixup", fastai_runner(lambda: ManifoldMixup(0.4, verbose=False), args.batches, clock)),
            ("OutputMixup", fastai_runner(lambda: OutputMixup(0.4), args.batches, clock))]))

    runs = [r for _, g in groups for r in g]
    per_round = {name: [] for name, _ in runs}
    for name, run in runs:  # warm-up: first-batch work (selection, allocation) is not a step's cost
        run()
    for r in range(args.rounds):
        k = r % len(runs)
        for name, run in runs[k:] + runs[:k]:
            per_round[name].append(statistics.median(run()))

    what = "wall-clock" if args.wall else "CPU time of the training thread"
    print(f"Training step on the demo's residual CNN, batch 64, 1 torch thread, torch "
          f"{torch.__version__}: median of {args.rounds} rounds x {args.batches} batches, {what}")
    overhead = {}
    for title, group in groups:
        base = group[0][0]
        print(f"\n| {title} | ms per batch | overhead ms | overhead % |\n|---|---|---|---|")
        for name, _ in group:
            ms = statistics.median(per_round[name]) * 1e3
            if name == base:
                print(f"| {name} | {ms:.2f} | | |")
                continue
            diffs = [a - b for a, b in zip(per_round[name], per_round[base])]
            over = statistics.median(diffs) * 1e3
            overhead[name] = over
            base_ms = statistics.median(per_round[base]) * 1e3
            print(f"| {name} | {ms:.2f} | {over:+.3f} | {100 * over / base_ms:+.1f} % |")
    if "fastai MixUp" in overhead and overhead["fastai MixUp"] > 0:
        share = overhead["ManifoldMixup"] / overhead["fastai MixUp"]
        print(f"\nManifoldMixup adds {100 * share:.0f} % of fastai MixUp's overhead "
              f"(goal: at most 33 %, i.e. {overhead['fastai MixUp'] / 3:.3f} ms here).")


if __name__ == "__main__":
    main()
