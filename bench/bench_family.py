"""make bench: the family's fused ops against the plain torch expressions they replace.

- Noisy Feature Mixup: manifold_mixup.mix(x, perm, lam, noise, key), the mix and the noise in
  one pass, against the authors' expression (the mix, then `(1 + mult * (2 rand - 1)) * h +
  add * randn`, torch's samplers) and against torch.compile of that expression;
- PatchUp: manifold_mixup.patchup(x, perm, lam, key, 7, gamma), which draws the block mask and
  applies it, against the authors' expression (bernoulli centres, max_pool2d, the blend) and
  against torch.compile of it.

Forward, and forward + backward (a dense gradient), for feature maps [64, C, H, W] of several
sizes in float32 and bfloat16, on 1 thread and on all of them. Every figure is a ratio of times
taken in the same process, the methods timed in turn round after round (bench_mix.py's
timing), so load from other programs moves both sides alike.
"""
import argparse

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

import manifold_mixup
from bench_mix import forward_and_backward, time_interleaved

inductor_config.cpp.dynamic_threads = True
# [B, C, H, W] shapes: 4, 16 and 64 MB of float32 (half that in bfloat16).
SHAPES = [(64, 16, 32, 32), (64, 64, 32, 32), (64, 64, 64, 64)]
LEVELS = (0.4 * 2 / 7, 0.2 * 2 / 7)  # the authors' levels times Beta(2, 5)'s mean
BLOCK, GAMMA = 7, 0.75               # the authors' soft PatchUp on CIFAR


def nfm_expression(x, perm, lam, noise):
    "The authors' do_noisy_mixup after its draws: the mix, then _noise."
    lam = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    mixed = lam * x + (1 - lam) * x[perm]
    add = noise[0] * torch.randn_like(mixed)
    mult = noise[1] * (2 * torch.rand_like(mixed) - 1) + 1
    return mult * mixed + add


def patchup_expression(x, perm, lam, p):
    "The authors' PatchUp.forward after its draws (soft): the mask, then the blend."
    centres = torch.bernoulli(torch.full(x.shape[1:], p, dtype=x.dtype, device=x.device))
    holes = F.max_pool2d(centres[None], BLOCK, 1, BLOCK // 2)[0]
    lam = lam.to(x.dtype).view(-1, 1, 1, 1)
    return (1 - holes) * x + holes * (lam * x + (1 - lam) * x[perm]), holes


def adjusted_gamma(w):
    return GAMMA * w * w / (BLOCK ** 2 * (w - BLOCK + 1) ** 2)


compiled_nfm = torch.compile(nfm_expression, dynamic=True)
compiled_patchup = torch.compile(patchup_expression, dynamic=True)


def methods(x, perm, lam, grad):
    xd, key = x.detach(), torch.tensor(12345)
    noise = torch.tensor(LEVELS)
    p = adjusted_gamma(x.shape[-1])
    first = lambda fn: lambda *a: fn(*a)[0]  # noqa: E731  (the output, not the mask)
    ops = {
        "nfm op": lambda a, pm, l: manifold_mixup.mix(a, pm, l, noise, key),
        "nfm expr": lambda a, pm, l: nfm_expression(a, pm, l, noise),
        "nfm compiled": lambda a, pm, l: compiled_nfm(a, pm, l, noise),
        "patchup op": first(lambda a, pm, l: manifold_mixup.patchup(a, pm, l, key, BLOCK, GAMMA)),
        "patchup expr": first(lambda a, pm, l: patchup_expression(a, pm, l, p)),
        "patchup compiled": first(lambda a, pm, l: compiled_patchup(a, pm, l, p)),
    }
    calls = {}
    for name, fn in ops.items():
        calls[f"{name} fwd"] = (lambda fn: lambda: fn(xd, perm, lam))(fn)
        calls[f"{name} fwd+bwd"] = (lambda fn: lambda: forward_and_backward(fn)(x, perm, lam, grad))(fn)
    return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--shapes", type=int, nargs="+", default=[0, 1, 2],
                        help="indices into SHAPES (4, 16, 64 MB of float32)")
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds of timing per method and case (at least 3 rounds)")
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {all_threads} threads, CPU. Times relative to the fused "
          "op's (other / op): > 1 means the op is faster.")
    print(f"{'method':8} {'dtype':8} {'shape':16} {'MB':>4} {'thr':>3} {'op fwd ms':>9} {'expr':>5} "
          f"{'compile':>7} | {'op f+b ms':>9} {'expr':>5} {'compile':>7}")
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for shape in (SHAPES[i] for i in args.shapes):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
            grad = torch.randn(shape, generator=gen).to(dtype)
            perm = torch.randperm(shape[0], generator=gen)
            lam = torch.rand(shape[0], generator=gen)
            mb = x.numel() * x.element_size() // 2 ** 20
            for threads in sorted({1, all_threads}):
                torch.set_num_threads(threads)
                t = time_interleaved(methods(x, perm, lam, grad), args.min_time)
                for name in ("nfm", "patchup"):
                    f, b = t[f"{name} op fwd"], t[f"{name} op fwd+bwd"]
                    print(f"{name:8} {str(dtype)[6:]:8} {'x'.join(map(str, shape)):16} {mb:4} "
                          f"{threads:3} {f * 1e3:9.2f} {t[f'{name} expr fwd'] / f:5.2f} "
                          f"{t[f'{name} compiled fwd'] / f:7.2f} | {b * 1e3:9.2f} "
                          f"{t[f'{name} expr fwd+bwd'] / b:5.2f} {t[f'{name} compiled fwd+bwd'] / b:7.2f}",
                          flush=True)
            del x, grad
    torch.set_num_threads(all_threads)


if __name__ == "__main__":
    main()
