"""make bench: the native mix op against the plain-PyTorch expression it replaces,
`lam.view(-1, 1, ...) * x + (1 - lam.view(...)) * x[perm]`, forward and forward+backward,
timed in the same run so the ratio means something on a shared machine."""
import argparse

import torch
from torch.utils import benchmark

import manifold_mixup

SHAPES = [(64, 16, 8, 8), (256, 512), (128, 64, 32, 32), (32, 3, 224, 224)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def expression(x, perm, lam):
    lam = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * x[perm]


def fwd_bwd(fn):
    def run(x, perm, lam):
        fn(x, perm, lam).sum().backward()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, devices {devices}")
    print(f"{'device':6} {'dtype':9} {'shape':22} {'pass':8} {'native ms':>10} {'expr ms':>10} {'speed-up':>9}")
    for device in devices:
        for dtype in DTYPES:
            for shape in SHAPES:
                x = torch.randn(shape, device=device).to(dtype).requires_grad_()
                perm = torch.randperm(shape[0], device=device)
                lam = torch.rand(shape[0], device=device)
                for name, wrap in (("forward", lambda f: f), ("fwd+bwd", fwd_bwd)):
                    times = []
                    for fn in (manifold_mixup.mix, expression):
                        t = benchmark.Timer("f(x, perm, lam)", globals={
                            "f": wrap(fn), "x": x, "perm": perm, "lam": lam})
                        times.append(t.blocked_autorange(min_run_time=args.min_run_time).median * 1e3)
                    print(f"{device:6} {str(dtype)[6:]:9} {str(shape):22} {name:8} "
                          f"{times[0]:10.3f} {times[1]:10.3f} {times[1] / times[0]:8.2f}x")


if __name__ == "__main__":
    main()
