"""The Python half of scripts/gpu-check.sh.

    gpu_check.py workload                 the op and a training step on CUDA, small: what
                                          compute-sanitizer runs
    gpu_check.py report DIR MODE          the one table, from DIR/rows.tsv (the shell's steps),
                                          DIR/junit.xml (pytest) and DIR/bench.json (make bench's
                                          device table); exits 1 when a step failed

MODE is cuda or cpu. `report` needs no torch, so that a broken build still gets its table.
"""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# Table rows drawn from pytest: (row, test file, test name prefix). The tests are in
# tests/python/test_cuda.py (and test_ops.py's CUDA cases); see its docstring.
PYTEST_ROWS = [
    ("opcheck + gradients, float32", "test_cuda", "test_opcheck_and_gradients[float32]"),
    ("opcheck + gradients, float16", "test_cuda", "test_opcheck_and_gradients[float16]"),
    ("opcheck + gradients, bfloat16", "test_cuda", "test_opcheck_and_gradients[bfloat16]"),
    ("opcheck + gradcheck, float64", "test_cuda", "test_opcheck_and_gradients[float64]"),
    ("backward grouping, B = 3000", "test_cuda", "test_backward_groups_large_batches"),
    ("64-bit indices (> 2^31 elements)", "test_cuda", "test_more_than_2_to_the_31"),
    ("test_ops.py on the device", "test_ops", ""),
    ("mixer on a model (ManifoldMixer)", "test_cuda", "test_manifold_mixer_trains_a_model"),
    ("fastai callbacks on a model", "test_cuda", "test_fastai_callbacks_on_a_model"),
    ("no host sync in a training step", "test_cuda", "test_no_host_sync_in_a_training_step"),
    ("streams: begin_batch's, a side one", "test_cuda", "test_side_stream_waits_for_begin_batch"),
    ("channels_last kept through a point", "test_cuda", "test_channels_last_kept_through_a_mixup_point"),
]
# Where each of the shell's rows goes among them.
SHELL_ROWS_AFTER = {"built": None, "C host": "fastai callbacks on a model"}


def workload():
    """Every kernel of the op on CUDA, each grouping and layout, forward and backward, and two
    mixed training steps: small, for compute-sanitizer."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import torch
    import torch.nn.functional as F

    from manifold_mixup import ManifoldMixer, mix

    dev = "cuda"
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for shape in ((8, 16), (8, 3, 5), (3000, 8)):
            b = shape[0]
            for perm in (torch.randperm(b, device=dev), torch.randint(0, b, (b,), device=dev)):
                lam = torch.rand(b, device=dev)
                lam[::3] = 1.0
                x = torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)
                mix(x, perm, lam.requires_grad_()).sum().backward()
        x = torch.randn(8 * 16 + 1, device=dev, dtype=dtype)[1:].view(8, 16)  # misaligned rows
        mix(x, torch.randperm(8, device=dev), torch.rand(8, device=dev))
        x = torch.randn(8, 8, 3, 2, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
        torch.ops.manifold_mixup._mix_backward(x, torch.randperm(8, device=dev), torch.rand(8, device=dev))
    mix(torch.randn(4, 0, device=dev), torch.randperm(4, device=dev), torch.rand(4, device=dev))
    # The family's kernels: Noisy Feature Mixup's noise in mix, and PatchUp, forward and backward.
    key, noise = torch.tensor([1234], device=dev), torch.tensor([0.1, 0.2], device=dev)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(6, 4, 9, 9, device=dev, dtype=dtype, requires_grad=True)
        perm, lam = torch.randperm(6, device=dev), torch.rand(6, device=dev)
        torch.ops.manifold_mixup.mix(x, perm, lam, noise, key).sum().backward()
        out, _ = torch.ops.manifold_mixup.patchup(x, perm, lam, key, 3, 0.5)
        out.sum().backward()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(dev)
    mm = ManifoldMixer(model, alpha=1.0, seed=0, verbose=False)
    for _ in range(2):
        with mm.batch(torch.randn(32, 16, device=dev)) as xb:
            loss = mm.loss(F.cross_entropy, model(xb), torch.randint(0, 4, (32,), device=dev))
        loss.backward()
    torch.cuda.synchronize()
    print("workload done")


def junit_cases(path):
    "(file stem, test name, outcome, message) of each test case pytest wrote."
    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        stem = case.get("classname", "").split(".")[-1]
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "FAILED", (child.get("message") or "").splitlines()[0:1]
                message = message[0] if message else ""
            elif child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        cases.append((stem, case.get("name", ""), outcome, message))
    return cases


def pytest_row(cases, stem, prefix, mode):
    chosen = [c for c in cases if c[0] == stem and c[1].startswith(prefix)]
    if stem == "test_ops" and mode == "cpu":
        return "skipped: no GPU", "make test runs test_ops.py on the CPU"
    if not chosen:
        return "missing", "pytest ran no such test (see pytest.log)"
    failed = [c for c in chosen if c[2] == "FAILED"]
    passed = [c for c in chosen if c[2] == "passed"]
    if failed:
        return "FAILED", "; ".join(f"{c[1]}: {c[3][:120]}" for c in failed[:3])
    if not passed:
        reason = chosen[0][3].replace("Skipped: ", "")
        return ("skipped: no GPU", "") if reason.startswith("no GPU") else ("skipped", reason[:140])
    skipped = len(chosen) - len(passed)
    return "ok", f"{len(passed)} passed" + (f", {skipped} skipped" if skipped else "")


def bench_rows(path, mode):
    if not path.exists():
        return [("bench", "missing", "bench/bench_mix.py wrote no figures (see bench.log)")]
    figures = json.loads(path.read_text())
    rows = []
    for r in figures["rows"]:
        smoke = " (CPU smoke test)" if mode == "cpu" else ""
        rows.append((f"bench {r['dtype']} {r['MB']} MB{smoke}", "ok",
                     f"fwd {r['op_fwd_s'] * 1e6:.0f} us = add x {1 / r['fwd_over_add']:.2f}; "
                     f"fwd+bwd = floor x {1 / r['fwd_bwd_over_floor']:.2f}; "
                     f"{r['op_GBps']:.0f} GB/s = {r['op_GBps'] / r['copy_GBps']:.2f} of copy "
                     f"({r['copy_GBps']:.0f}); lam 1: {r['lam1_GBps'] / r['copy_GBps']:.2f} of copy; "
                     f"expression {r['expr_over_op']:.1f}x slower"))
    rows.append(("bench begin_batch", "ok", f"{figures['draw_us']:.1f} us host time per batch ({figures['device']})"))
    return rows


def report(out_dir, mode):
    out = Path(out_dir)
    shell = []
    if (out / "rows.tsv").exists():
        for line in (out / "rows.tsv").read_text().splitlines():
            step, result, details = (line.split("\t") + ["", ""])[:3]
            shell.append((step, result, details))
    cases = junit_cases(out / "junit.xml")
    rows = [r for r in shell if r[0] == "built"]
    for name, stem, prefix in PYTEST_ROWS:
        rows.append((name, *pytest_row(cases, stem, prefix, mode)))
        rows += [r for r in shell if SHELL_ROWS_AFTER.get(r[0].split(" (")[0]) == name]
    rows += [r for r in shell if r[0] != "built" and r[0].split(" (")[0] not in SHELL_ROWS_AFTER]
    rows += bench_rows(out / "bench.json", mode)
    width = max(len(r[0]) for r in rows)
    rwidth = max(len(r[1]) for r in rows)
    print(f"| {'step':{width}} | {'result':{rwidth}} | details")
    print(f"|-{'-' * width}-|-{'-' * rwidth}-|--------")
    for step, result, details in rows:
        print(f"| {step:{width}} | {result:{rwidth}} | {details}")
    bad = [r for r in rows if r[1] in ("FAILED", "missing")]
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["workload"]:
        workload()
    elif sys.argv[1:2] == ["report"] and len(sys.argv) == 4:
        sys.exit(report(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
