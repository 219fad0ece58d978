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

On CUDA (when torch sees a GPU, or with --device cuda), the same ratios timed with CUDA
events: the forward against torch.add, forward + backward against the autograd floor, and the
op's bandwidth (bytes it must move / time) against a device-to-device copy's, for lam < 1 and
for lam all ones (a copy, what every non-chosen point costs under torch.compile). --json
writes that table's figures for scripts/gpu-check.sh (--table-only cpu makes the same table on
the CPU, for the script's --cpu mode).
"""
import argparse
import json
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


def host_clock(fn, reps):
    "Seconds of `reps` calls of fn, by the host's clock (CPU work is done when fn returns)."
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - start


def cuda_clock(fn, reps):
    "Seconds of `reps` calls of fn on the GPU, between two events of the current stream."
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def time_interleaved(calls, min_time, clock=host_clock):
    "Median seconds per call of each method, the methods timed in turn, round after round."
    for fn in calls.values():  # warm-up: allocator, compilation
        fn()
    reps = {}
    for name, fn in calls.items():  # calls per round so that one round lasts about 5 ms
        reps[name] = max(1, int(0.005 / max(clock(fn, 1), 1e-7)))
    samples = {name: [] for name in calls}
    deadline, rounds = time.perf_counter() + min_time * len(calls), 0
    while rounds < 3 or time.perf_counter() < deadline:
        for name, fn in calls.items():
            samples[name].append(clock(fn, reps[name]) / reps[name])
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def draw_cost_us(batch=BATCH, calls=2000, device=torch.device("cpu")):
    "Microseconds of one Mixer.begin_batch + end_batch (lam, perm and the point drawn)."
    mixer = _C.Mixer(1.0, True, 0)
    for name in ("a", "b"):
        mixer.add_point(name)
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            mixer.begin_batch(batch, device)
            mixer.end_batch()
        best.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(best)


def bench_cpu(args):
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
          f"{draw_cost_us(device=torch.device('cpu')):.1f} us")


def device_methods(x, y, perm, lam, ones, grad):
    "name -> a call of no arguments, for the device table."
    xd = x.detach()
    out = torch.empty_like(xd)
    floor = forward_and_backward(lambda x, perm, lam: x * 2)
    return {
        "op fwd": lambda: manifold_mixup.mix(xd, perm, lam),
        "op fwd lam 1": lambda: manifold_mixup.mix(xd, perm, ones),
        "op fwd+bwd": lambda: forward_and_backward(manifold_mixup.mix)(x, perm, lam, grad),
        "add": lambda: torch.add(xd, y),
        "copy": lambda: out.copy_(xd),
        "floor fwd+bwd": lambda: floor(x, perm, lam, grad),
        "expr fwd+bwd": lambda: forward_and_backward(expression)(x, perm, lam, grad),
    }


def bench_device(args, device):
    """The op against add, the floor and a copy on `device` (CUDA; the CPU too, for the
    script's --cpu mode); returns the figures for --json."""
    if device == "cuda":
        name = torch.cuda.get_device_properties(torch.cuda.current_device()).name
        print(f"\ntorch {torch.__version__}, CUDA {torch.version.cuda}, {name}")
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
        print(f"\ntorch {torch.__version__}, {name}")
    clock = cuda_clock if device == "cuda" else host_clock
    print("fwd/add and f+b/floor: the other's time / the op's (about 1: the op is as fast as "
          "the memory allows). GB/s: the bytes the op must move / its time (lam < 1: read x and "
          "x[perm], write out; lam 1: read x, write out), against a device-to-device copy's.")
    print(f"{'dtype':8} {'MB':>5} {'fwd us':>8} {'fwd/add':>7} {'f+b us':>8} {'f+b/floor':>9} "
          f"{'expr/op':>7} {'GB/s':>6} {'lam1 GB/s':>9} {'copy GB/s':>9}")
    rows = []
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for size in args.sizes:
            numel = size * MB // torch.tensor([], dtype=dtype).element_size()
            shape = (BATCH, numel // BATCH)
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_()
            y = torch.randn(shape, generator=gen, device=device).to(dtype)
            grad = torch.randn(shape, generator=gen, device=device).to(dtype)
            perm = torch.randperm(BATCH, generator=gen, device=device)
            lam = torch.rand(BATCH, generator=gen, device=device)
            ones = torch.ones(BATCH, device=device)
            t = time_interleaved(device_methods(x, y, perm, lam, ones, grad), args.min_time, clock)
            nbytes = x.numel() * x.element_size()
            row = {"dtype": str(dtype)[6:], "MB": size, "op_fwd_s": t["op fwd"],
                   "fwd_over_add": t["add"] / t["op fwd"],
                   "op_fwd_bwd_s": t["op fwd+bwd"], "fwd_bwd_over_floor": t["floor fwd+bwd"] / t["op fwd+bwd"],
                   "expr_over_op": t["expr fwd+bwd"] / t["op fwd+bwd"],
                   "op_GBps": 3 * nbytes / t["op fwd"] / 1e9, "lam1_GBps": 2 * nbytes / t["op fwd lam 1"] / 1e9,
                   "copy_GBps": 2 * nbytes / t["copy"] / 1e9}
            rows.append(row)
            print(f"{row['dtype']:8} {size:5} {t['op fwd'] * 1e6:8.1f} {row['fwd_over_add']:7.2f} "
                  f"{t['op fwd+bwd'] * 1e6:8.1f} {row['fwd_bwd_over_floor']:9.2f} {row['expr_over_op']:7.2f} "
                  f"{row['op_GBps']:6.0f} {row['lam1_GBps']:9.0f} {row['copy_GBps']:9.0f}", flush=True)
            del x, y, grad
    draw = draw_cost_us(device=torch.device(device))
    print(f"Mixer.begin_batch + end_batch on {device} (batch {BATCH}, host time from Python): "
          f"{draw:.1f} us")
    return {"device": name, "torch": torch.__version__, "rows": rows, "draw_us": draw}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64, 256], help="MB of x")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds of timing per method and case (at least 3 rounds)")
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"],
                        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--table-only", choices=["cpu", "cuda"],
                        help="only the device table (add, floor, copy) on this device")
    parser.add_argument("--json", help="write the device table's figures to this file")
    args = parser.parse_args()
    if args.table_only:
        figures = bench_device(args, args.table_only)
    else:
        if "cpu" in args.device:
            bench_cpu(args)
        figures = bench_device(args, "cuda") if "cuda" in args.device else None
    if args.json and figures:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
