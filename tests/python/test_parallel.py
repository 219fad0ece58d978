"""The Python module runs the op on the threads torch.set_num_threads gives it, with torch's own
OpenMP runtime (a second runtime in the process would keep a second thread pool)."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import manifold_mixup


pytestmark = pytest.mark.skipif(not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"),
                                reason="needs Linux's /proc/self/task/<tid>/schedstat")


def cpu_ns_per_thread():
    "Nanoseconds on a CPU of each thread of this process."
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            pass
    return out


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_op_runs_on_two_threads(two_threads):
    x, perm, lam = torch.randn(64, 2 ** 18), torch.randperm(64), torch.rand(64)  # 64 MB
    manifold_mixup.mix(x, perm, lam)
    before = cpu_ns_per_thread()
    for _ in range(10):
        manifold_mixup.mix(x, perm, lam)
    spent = {tid: ns - before.get(tid, 0) for tid, ns in cpu_ns_per_thread().items()}
    caller = spent.pop(threading.get_native_id())
    # Split in two, the second thread runs about as long as the caller; serial, it idles.
    assert max(spent.values(), default=0) > caller / 4, (caller, spent)


# Run in a fresh process: other packages a test run imports (scikit-learn) bring their own.
LOADED_RUNTIMES = r"""
import json, re, torch
def runtimes():
    with open("/proc/self/maps") as f:
        return sorted({m.group(0) for m in re.finditer(r"/\S*/lib(gomp|iomp5|omp)[^/\s]*", f.read())})
torch.randn(64, 2 ** 16) * 2  # torch's own pool is up
before = runtimes()
import manifold_mixup
manifold_mixup.mix(torch.randn(64, 2 ** 16), torch.randperm(64), torch.rand(64))
print(json.dumps([before, runtimes(), "parallel backend: OpenMP" in torch.__config__.parallel_info()]))
"""


def test_the_module_adds_no_openmp_runtime():
    done = subprocess.run([sys.executable, "-c", LOADED_RUNTIMES], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after, openmp = json.loads(done.stdout)
    assert after == before, (before, after)
    if openmp:
        assert len(after) == 1, after  # torch's own
