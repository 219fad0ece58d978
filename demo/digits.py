"""make demo: Manifold Mixup on scikit-learn's bundled handwritten digits (8x8, no download).

Trains one small residual CNN with fastai under no mixup, fastai's MixUp, ManifoldMixup,
OutputMixup and DynamicManifoldMixup (same seed, same epochs, same initial weights), then
prints one table and saves a PNG with the validation-loss curves and a reliability diagram.

Clean accuracy alone hides what mixing does (see README): the table also measures confidence
on inputs that are not digits (uniform noise), on midpoints of two digits of different classes,
and accuracy on digits with Gaussian noise.
"""
import argparse
import sys
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fastai.basics import (CrossEntropyLossFlat, DataLoaders, Learner, accuracy,  # noqa: E402
                           set_seed)
from fastai.callback.mixup import MixUp  # noqa: E402
from fastai.callback.schedule import SchedCos  # noqa: E402,F401  (also adds fit_one_cycle)
from sklearn.datasets import load_digits  # noqa: E402

from manifold_mixup import DynamicManifoldMixup, ManifoldMixup, OutputMixup  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _digits import N_TRAIN, digits, residual_cnn  # noqa: E402

SEED, BS, LR, ALPHA, BINS = 0, 64, 3e-3, 1.0, 15


METHODS = {
    "no mixup": lambda: [],
    "fastai MixUp (input)": lambda: [MixUp(ALPHA)],
    "ManifoldMixup": lambda: [ManifoldMixup(alpha=ALPHA)],
    "OutputMixup": lambda: [OutputMixup(alpha=ALPHA)],
    "DynamicManifoldMixup": lambda: [DynamicManifoldMixup(alpha_min=0.0, alpha_max=ALPHA)],
}


def probs(model, x):
    model.eval()
    with torch.no_grad():
        return F.softmax(model(x), 1)


def ece(p, y, bins=BINS):
    "Expected calibration error: |accuracy - confidence| per confidence bin, weighted by size."
    conf, pred = p.max(1)
    edges = torch.linspace(0, 1, bins + 1)
    total = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = (pred[inside] == y[inside]).float().mean() - conf[inside].mean()
            total += inside.float().mean() * gap.abs()
    return total.item()


def reliability(p, y, bins=BINS, min_count=5):
    "(mean confidence, accuracy) of each confidence bin holding at least min_count images."
    conf, pred = p.max(1)
    idx = ((conf * bins).ceil().clamp(1, bins) - 1).long()
    return [(conf[idx == b].mean().item(), (pred[idx == b] == y[idx == b]).float().mean().item())
            for b in range(bins) if (idx == b).sum() >= min_count]


def off_distribution(valid_x, valid_y):
    "Uniform-noise images, midpoints of two digits of different classes, noisy digits."
    g = torch.Generator().manual_seed(SEED + 1)
    noise = torch.rand(500, 1, 8, 8, generator=g)
    i, j = torch.randint(len(valid_y), (2, 2000), generator=g)
    keep = valid_y[i] != valid_y[j]
    midpoints = 0.5 * (valid_x[i[keep]] + valid_x[j[keep]])[:500]
    noisy = valid_x + 0.3 * torch.randn(valid_x.shape, generator=g)  # not clipped
    return noise, midpoints, noisy


def run(name, make_cbs, train, valid, epochs):
    set_seed(SEED, reproducible=True)
    dls = DataLoaders.from_dsets(list(zip(*train)), list(zip(*valid)), bs=BS)
    set_seed(SEED, reproducible=True)  # same initial weights for every method
    learn = Learner(dls, residual_cnn(), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    cbs=make_cbs())
    print(f"\n== {name} ==")
    start = time.perf_counter()
    learn.fit_one_cycle(epochs, LR)
    seconds = (time.perf_counter() - start) / epochs
    p = probs(learn.model, valid[0])
    noise, midpoints, noisy = off_distribution(*valid)
    p_noisy = probs(learn.model, noisy)
    return dict(
        method=name,
        accuracy=(p.argmax(1) == valid[1]).float().mean().item(),
        nll=F.nll_loss(p.clamp_min(1e-12).log(), valid[1]).item(),
        ece=ece(p, valid[1]),
        s_per_epoch=seconds,
        conf_noise=probs(learn.model, noise).max(1)[0].mean().item(),
        conf_mid=probs(learn.model, midpoints).max(1)[0].mean().item(),
        acc_noisy=(p_noisy.argmax(1) == valid[1]).float().mean().item(),
        valid_loss=[v[1] for v in learn.recorder.values],
        reliability=reliability(p, valid[1]),
        reliability_noisy=reliability(p_noisy, valid[1]),
    )


def table(rows, epochs):
    head = ("| training | accuracy | val NLL | ECE | s/epoch | mean confidence on uniform noise "
            "| on midpoints of two digits | accuracy with noise (σ 0.3) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['method']} | {r['accuracy']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} | "
        f"{r['s_per_epoch']:.2f} | {r['conf_noise']:.2f} | {r['conf_mid']:.2f} | "
        f"{r['acc_noisy']:.3f} |\n" for r in rows)
    note = (f"\n{epochs} epochs of fit_one_cycle at {LR}, batch {BS}, alpha {ALPHA}, seed {SEED}, "
            f"{N_TRAIN} train / 497 validation images, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads.\n")
    return head + body + note


def plot(rows, path):
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for r in rows:
        axes[0].plot(range(1, len(r["valid_loss"]) + 1), r["valid_loss"], label=r["method"])
        for ax, key in ((axes[1], "reliability"), (axes[2], "reliability_noisy")):
            conf, acc = zip(*r[key])
            ax.plot(conf, acc, marker="o", ms=3, label=r["method"])
    axes[0].set(xlabel="epoch", ylabel="validation loss (NLL)", yscale="log",
                title="Validation loss")
    for ax, what in ((axes[1], "clean validation digits"), (axes[2], "validation digits + noise σ 0.3")):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02),
               title=f"Reliability: {what}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs per method (default 60)")
    parser.add_argument("--out", default="demo_out", help="folder for results.md and digits.png")
    parser.add_argument("--quick", action="store_true", help="2 epochs, a smoke run")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, valid = digits(SEED)
    rows = [run(name, make, train, valid, epochs) for name, make in METHODS.items()]
    text = table(rows, epochs)
    print("\n" + text)
    (out / "results.md").write_text(text)
    plot(rows, out / "digits.png")
    print(f"wrote {out / 'results.md'} and {out / 'digits.png'}")


if __name__ == "__main__":
    main()
