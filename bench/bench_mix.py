"""make bench: the native mix op against what it is measured by and what it replaces.

For float32 and bfloat16 activations of 1, 8, 64 and 256 MB (64 samples), on 1 thread and on
all of them, times the op's forward and forward+backward against
- torch.add(x, y): the bandwidth reference, the same traffic as the forward (read 2, write 1);
- the autograd floor, x * 2 and its gradient: the least any differentiable op can cost;
- the plain expression lam * x + (1 - lam) * x[perm], torch.lerp(x[perm], x, lam), and the
  expression under torch.compile.
Every figure is a ratio of times taken in the same process, the methods interleaved round by
round, so load from other programs moves both sides alike. The backward is fed a dense
gradient, as in training. Then the thread scaling (1 thread / all threads) of the op and of
ATen's own elementwise ops, and the cost of a Mixer's per-batch draw.
"""
import argparse
import statistics
import time

import torch
import torch._inductor.config as inductor_config

import manifold_mixup
from manifold_mixup import _C

BATCH = 64
MB = 2 ** 20
# Compiled kernels follow torch.set_num_threads at run time instead of the count at compile time.
inductor_config.cpp.dynamic_threads = True


def expression(x, perm, lam):
    lam = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1 - lam) * x[perm]


def lerp(x, perm, lam):
    return torch.lerp(x[perm], x, lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1))))


compiled = torch.compile(expression, dynamic=True)


def forward_and_backward(fn):
    def run(x, perm, lam, grad):
        torch.autograd.grad(fn(x, perm, lam), x, grad)  # no accumulation into x.grad
    return run


def methods(x, y, perm, lam, grad):
    "name -> a call of no arguments; `x` requires grad, `xd` is the same data without."
    xd = x.detach()
    floor = forward_and_backward(lambda x, perm, lam: x * 2)
    calls = {
        "op fwd": lambda: manifold_mixup.mix(xd, perm, lam),
        "op fwd+bwd": lambda: forward_and_backward(manifold_mixup.mix)(x, perm, lam, grad),
        "add": lambda: torch.add(xd, y),
        "floor fwd": lambda: xd * 2,
        "floor fwd+bwd": lambda: floor(x, perm, lam, grad),
    }
    for name, fn in (("expr", expression), ("lerp", lerp), ("compiled", compiled)):
        calls[f"{name} fwd"] = (lambda fn: lambda: fn(xd, perm, lam))(fn)
        calls[f"{name} fwd+bwd"] = (lambda fn: lambda: forward_and_backward(fn)(x, perm, lam, grad))(fn)
    return calls


def time_interleaved(calls, min_time):
    "Median seconds per call of each method, the methods timed in turn, round after round."
    for fn in calls.values():  # warm-up: allocator, compilation
        fn()
    reps = {}
    for name, fn in calls.items():  # calls per round so that one round lasts about 5 ms
        start = time.perf_counter()
        fn()
        reps[name] = max(1, int(0.005 / max(time.perf_counter() - start, 1e-7)))
    samples = {name: [] for name in calls}
    deadline, rounds = time.perf_counter() + min_time * len(calls), 0
    while rounds < 3 or time.perf_counter() < deadline:
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / reps[name])
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def draw_cost_us(batch=BATCH, calls=2000):
    "Microseconds of one Mixer.begin_batch + end_batch (lam, perm and the point drawn)."
    mixer = _C.Mixer(1.0, True, 0)
    for name in ("a", "b"):
        mixer.add_point(name)
    cpu = torch.device("cpu")
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            mixer.begin_batch(batch, cpu)
            mixer.end_batch()
        best.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(best)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64, 256], help="MB of x")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds of timing per method and case (at least 3 rounds)")
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    thread_counts = sorted({1, all_threads})
    print(f"torch {torch.__version__}, {all_threads} threads, "
          f"{torch.__config__.parallel_info().splitlines()[-1].strip()}, CPU")
    print("Times relative to the op's (x: other / op): > 1 means the op is faster. add and the "
          "autograd floor bound what is possible (add moves what the forward moves; the floor, "
          "two thirds of what the op's forward and backward move).")
    head = (f"{'dtype':8} {'MB':>4} {'thr':>3} {'op fwd ms':>9} {'GB/s':>5} {'add':>5} {'expr':>5} "
            f"{'lerp':>5} {'compile':>7} | {'op f+b ms':>9} {'floor':>5} {'expr':>5} {'lerp':>5} "
            f"{'compile':>7}")
    print(head)
    results = {}
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for size in args.sizes:
            numel = size * MB // torch.tensor([], dtype=dtype).element_size()
            shape = (BATCH, numel // BATCH)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
            y = torch.randn(shape, generator=gen).to(dtype)
            grad = torch.randn(shape, generator=gen).to(dtype)
            perm = torch.randperm(BATCH, generator=gen)
            lam = torch.rand(BATCH, generator=gen)
            for threads in thread_counts:
                torch.set_num_threads(threads)
                t = time_interleaved(methods(x, y, perm, lam, grad), args.min_time)
                results[dtype, size, threads] = t
                f, b = t["op fwd"], t["op fwd+bwd"]
                print(f"{str(dtype)[6:]:8} {size:4} {threads:3} {f * 1e3:9.3f} "
                      f"{3 * size * MB / f / 1e9:5.1f} {t['add'] / f:5.2f} {t['expr fwd'] / f:5.2f} "
                      f"{t['lerp fwd'] / f:5.2f} {t['compiled fwd'] / f:7.2f} | {b * 1e3:9.3f} "
                      f"{t['floor fwd+bwd'] / b:5.2f} {t['expr fwd+bwd'] / b:5.2f} "
                      f"{t['lerp fwd+bwd'] / b:5.2f} {t['compiled fwd+bwd'] / b:7.2f}", flush=True)
            del x, y, grad
    torch.set_num_threads(all_threads)
    if len(thread_counts) > 1:
        print(f"\nThread scaling, time on 1 thread / time on {all_threads} (the op against "
              "ATen's own elementwise ops, same run):")
        print(f"{'dtype':8} {'MB':>4} {'op fwd':>7} {'add':>7} {'x*2':>7} {'op f+b':>7} {'floor f+b':>9}")
        for dtype in (getattr(torch, d) for d in args.dtypes):
            for size in args.sizes:
                one, many = results[dtype, size, 1], results[dtype, size, all_threads]
                s = {k: one[k] / many[k] for k in one}
                print(f"{str(dtype)[6:]:8} {size:4} {s['op fwd']:7.2f} {s['add']:7.2f} "
                      f"{s['floor fwd']:7.2f} {s['op fwd+bwd']:7.2f} {s['floor fwd+bwd']:9.2f}")
    print(f"\nMixer.begin_batch + end_batch (lam, perm, the point; batch {BATCH}, from Python): "
          f"{draw_cost_us():.1f} us")


if __name__ == "__main__":
    main()
