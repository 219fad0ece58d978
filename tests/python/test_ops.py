"""manifold_mixup.mix from Python: against the plain-PyTorch expression, opcheck on every
sample, gradcheck in float64, refusals, and torch.compile."""
import os

import pytest
import torch
from torch.library import opcheck

import manifold_mixup
from manifold_mixup import mix

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}
ODD = (3, 5, 2, 7)


def reference(x, perm, lam):
    lam = lam.double().view(-1, *([1] * (x.dim() - 1)))
    xd = x.double()
    return lam * xd + (1 - lam) * xd[perm]


def samples(device):
    """(x, perm, lam) triples covering dtypes, ranks 1-5, odd sizes, batch 1, views."""
    g = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for rank in range(1, 6):
            for batch in (1, 6):
                shape = (batch, *ODD[: rank - 1])
                x = torch.randn(shape, generator=g).to(device, dtype)
                yield x, torch.randperm(batch, generator=g).to(device), torch.rand(batch, generator=g).to(device)
        base = torch.randn(6, 9, 5, generator=g).to(device, dtype)
        for view in (base.transpose(0, 1), base[:, :, ::2], base.permute(2, 0, 1)):
            b = view.shape[0]
            yield view, torch.randperm(b, generator=g).to(device), torch.rand(b, generator=g).to(device)
        # channels_last (kept by the result), with lam exactly 1 for some rows (copied rows)
        for shape, fmt in (((5, 3, 4, 2), torch.channels_last), ((5, 3, 2, 4, 2), torch.channels_last_3d)):
            x = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=fmt)
            lam = torch.rand(5, generator=g)
            lam[::2] = 1.0
            yield x, torch.randperm(5, generator=g).to(device), lam.to(device)


def sample_id(s):
    x = s[0]
    kind = "c" if x.is_contiguous() else "cl" if layout(x) != torch.contiguous_format else "nc"
    return f"{str(x.dtype)[6:]}-{tuple(x.shape)}-{kind}"


def layout(x):
    "The memory format the op's result has: x's when x is channels_last, else contiguous."
    for dim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == dim and x.is_contiguous(memory_format=fmt) and not x.is_contiguous():
            return fmt
    return torch.contiguous_format


def bits(t):
    "The bits of t, so that NaN compares equal to itself."
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def poisoned(shape, dtype, device):
    "Random rows, but row 1 is inf and row 3 NaN."
    x = torch.randn(shape, dtype=torch.float64).to(device, dtype)
    x[1], x[3] = float("inf"), float("nan")
    return x


@pytest.mark.parametrize("device", DEVICES)
def test_matches_expression_and_leaves_x_alone(device):
    for x, perm, lam in samples(device):
        before = x.clone()
        out = mix(x, perm, lam)
        assert out.dtype == x.dtype and out.shape == x.shape and out.device == x.device
        tol = TOL[x.dtype]
        torch.testing.assert_close(out.double(), reference(x, perm, lam), rtol=tol, atol=tol,
                                   msg=lambda m: f"{sample_id((x,))}: {m}")
        assert torch.equal(x, before)
        assert out.is_contiguous(memory_format=layout(x))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_sample(device):
    for x, perm, lam in samples(device):
        for x_grad, lam_grad in ((False, False), (True, False), (True, True)):
            xs = x.detach().clone().requires_grad_(x_grad)
            ls = lam.detach().clone().to(x.dtype if lam_grad else lam.dtype).requires_grad_(lam_grad)
            opcheck(torch.ops.manifold_mixup.mix.default, (xs, perm, ls))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_op(device):
    g = torch.randn(6, 4, device=device)
    opcheck(torch.ops.manifold_mixup._mix_backward.default,
            (g, torch.randperm(6, device=device), torch.rand(6, device=device)))


def test_backward_op_is_private():
    """Named with a leading underscore, as torchvision names its backward ops."""
    assert not hasattr(torch.ops.manifold_mixup, "mix_backward")
    assert "_mix_backward" not in manifold_mixup.__all__


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("perm", [[3, 0, 4, 1, 2], [0, 0, 0, 0, 0], [1, 1, 4, 2, 2]],
                         ids=["permutation", "constant", "repeats"])
@pytest.mark.parametrize("ones", [False, True], ids=["lam", "lam-with-ones"])
def test_gradcheck_float64(device, perm, ones):
    x = torch.randn(5, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    lam = torch.rand(5, dtype=torch.float64, device=device)
    if ones:  # lam exactly 1 at some rows: copied rows, skipped sources
        lam[[0, 2, 3]] = 1.0
    lam.requires_grad_()
    p = torch.tensor(perm, device=device)
    assert torch.autograd.gradcheck(mix, (x, p, lam))
    assert torch.autograd.gradgradcheck(mix, (x, p, lam))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_lam_all_ones_is_x_exactly_forward_and_backward(device, dtype):
    """Under torch.compile every point calls the op, with lam all ones except at the point that
    mixes: there the op must be x itself, bit for bit, even when other rows hold inf or NaN
    (which 0 * inf would spread); and its backward the gradient itself."""
    x = poisoned((4, 3, 5), dtype, device).requires_grad_()
    perm = torch.tensor([3, 0, 1, 2], device=device)  # every row's partner is poisoned or reads one
    lam = torch.ones(4, device=device)
    out = mix(x, perm, lam)
    assert torch.equal(bits(out), bits(x.detach()))
    g = poisoned((4, 3, 5), dtype, device)
    out.backward(g)
    assert torch.equal(bits(x.grad), bits(g))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_rows_with_lam_one_are_copies_others_mix(device, dtype):
    x = poisoned((4, 6), dtype, device)
    perm = torch.tensor([1, 0, 3, 2], device=device)  # rows 0 and 2 partner the poisoned rows
    lam = torch.tensor([1.0, 0.7, 1.0, 0.6], device=device)
    out = mix(x, perm, lam)
    assert torch.equal(bits(out[[0, 2]]), bits(x[[0, 2]]))
    assert out[1].isinf().all() and out[3].isnan().all()  # as the expression gives
    # Finite data: the plain expression, values and gradients (x and lam), lam ones or not.
    xf = torch.randn(4, 6, dtype=torch.float64).to(device, dtype).requires_grad_()
    lf = lam.clone().requires_grad_()
    g = torch.randn(4, 6, dtype=torch.float64).to(device, dtype)
    out = mix(xf, perm, lf)
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), reference(xf.detach(), perm, lam), rtol=tol, atol=tol)
    out.backward(g)
    xr = xf.detach().double().requires_grad_()
    lr = lam.double().requires_grad_()
    l = lr.view(-1, 1)
    ((l * xr + (1 - l) * xr[perm]) * g.double()).sum().backward()
    torch.testing.assert_close(xf.grad.double(), xr.grad, rtol=tol * 10, atol=tol * 10)
    ltol = max(tol, TOL[lam.dtype]) * 50  # lam's gradient has lam's dtype (float32 here)
    torch.testing.assert_close(lf.grad.double(), lr.grad, rtol=ltol, atol=ltol)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_is_kept_forward_and_backward(device):
    """A channels_last activation (a CNN's, under channels_last training) comes back
    channels_last, and so does its gradient: no layout copy at every mix."""
    for shape, fmt in (((6, 4, 5, 3), torch.channels_last), ((6, 4, 2, 5, 3), torch.channels_last_3d)):
        x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_()
        perm, lam = torch.randperm(6, device=device), torch.rand(6, device=device)
        out = mix(x, perm, lam)
        assert out.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(out.double(), reference(x.detach(), perm, lam))
        g = torch.randn_like(out)  # channels_last too, as a conv's gradient is
        out.backward(g)
        assert x.grad.is_contiguous(memory_format=fmt)
        xr = x.detach().double().requires_grad_()
        (reference(xr, perm, lam) * g.double()).sum().backward()
        torch.testing.assert_close(x.grad.double(), xr.grad)


def test_half_and_bfloat16_gradients_keep_dtype():
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 8).to(dtype).requires_grad_()
        perm = torch.randperm(4)
        lam = torch.rand(4)
        mix(x, perm, lam).sum().backward()
        assert x.grad.dtype == dtype
        expected = (lam + 1 - lam[torch.argsort(perm)]).unsqueeze(1).expand(4, 8)
        torch.testing.assert_close(x.grad.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("args, match", [
    (lambda x, p, l: (x.long(), p, l), "x must be a floating"),
    (lambda x, p, l: (torch.tensor(1.0), p[:1], l[:1]), "x must have at least one dimension"),
    (lambda x, p, l: (x, p.int(), l), "perm must be an int64"),
    (lambda x, p, l: (x, p[:3], l), "perm must have length B = 4"),
    (lambda x, p, l: (x, p.view(2, 2), l), r"perm must have shape \[B\]"),
    (lambda x, p, l: (x, p, l[:3]), "lam must have length B = 4"),
    (lambda x, p, l: (x, p, l.view(2, 2)), r"lam must have shape \[B\]"),
    (lambda x, p, l: (x, p, p), "lam must be a floating"),
    (lambda x, p, l: (x, torch.tensor([0, 1, 2, 4]), l), r"perm must hold indices in \[0, 4\)"),
    (lambda x, p, l: (x, torch.tensor([0, -3, 2, 1]), l), r"perm must hold indices in \[0, 4\)"),
    (lambda x, p, l: (x, p.to("meta"), l), "perm must be on x's device"),
    (lambda x, p, l: (x, p, l.to("meta")), "lam must be on x's device"),
], ids=["int-x", "0-dim-x", "int32-perm", "short-perm", "2d-perm", "short-lam", "2d-lam",
        "int-lam", "index-too-large", "negative-index", "perm-device", "lam-device"])
def test_refusals_name_the_argument(args, match):
    x, p, l = torch.randn(4, 3), torch.randperm(4), torch.rand(4)
    with pytest.raises(RuntimeError, match=match):
        mix(*args(x, p, l))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_devices_must_agree():
    x = torch.randn(4, 3, device="cuda")
    with pytest.raises(RuntimeError, match="perm must be on x's device"):
        mix(x, torch.randperm(4), torch.rand(4, device="cuda"))
    with pytest.raises(RuntimeError, match="lam must be on x's device"):
        mix(x, torch.randperm(4, device="cuda"), torch.rand(4))
    # A CPU x with CUDA perm and lam runs the CUDA kernel: its checks come before its device
    # guard, so the refusal names perm (once a CUDAGuardImpl error, and MM_ERR_TORCH in C).
    with pytest.raises(RuntimeError, match="perm must be on x's device"):
        mix(x.cpu(), torch.randperm(4, device="cuda"), torch.rand(4, device="cuda"))
    with pytest.raises(RuntimeError, match="perm must be on grad's device"):
        torch.ops.manifold_mixup._mix_backward(x.cpu(), torch.randperm(4, device="cuda"),
                                               torch.rand(4, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("case", ["forward-empty-rows", "backward-negative", "backward-negative-deterministic"])
def test_cuda_out_of_range_index_fails_loudly(case):
    """An index outside [0, B) trips a device-side assert: in the forward even when x has no
    elements per row, and in the backward (perm = -1 once landed in slot 0 unnoticed), also in
    deterministic mode. Run apart: a device-side assert spoils the process's CUDA context."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import torch, manifold_mixup
case = {case!r}
if case.endswith("deterministic"):
    torch.use_deterministic_algorithms(True)
if case == "forward-empty-rows":
    out = manifold_mixup.mix(torch.randn(4, 0, device="cuda"), torch.tensor([0, 1, 2, 7], device="cuda"),
                             torch.rand(4, device="cuda"))
else:
    out = torch.ops.manifold_mixup._mix_backward(torch.randn(4, 3, device="cuda"),
                                                 torch.tensor([0, -1, 2, 3], device="cuda"),
                                                 torch.rand(4, device="cuda"))
torch.cuda.synchronize()
print("no error")
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "python"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "no error" not in done.stdout, done.stdout + done.stderr
    assert "device-side assert" in done.stderr or "perm" in done.stderr, done.stderr


def test_public_names():
    assert torch.ops.manifold_mixup.mix is not None
    assert "lam[i] * x[i]" in manifold_mixup.mix.__doc__


def test_torch_compile_fullgraph_with_backward():
    def f(x, perm, lam):
        return (mix(x, perm, lam) * 2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 5, requires_grad=True)
    perm, lam = torch.randperm(8), torch.rand(8)
    compiled(x, perm, lam).backward()
    x2 = x.detach().clone().requires_grad_()
    f(x2, perm, lam).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_portable_cpu_loops_match_the_expression_too():
    """The CPU loops exist per capability (AVX2 and portable); ATEN_CPU_CAPABILITY=default
    selects the portable one, which must agree with the expression as well."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import torch, manifold_mixup
for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)):
    x = torch.randn(9, 37, 5).to(dtype); perm = torch.randperm(9); lam = torch.rand(9)
    l = lam.double().view(-1, 1, 1)
    ref = l * x.double() + (1 - l) * x.double()[perm]
    torch.testing.assert_close(manifold_mixup.mix(x, perm, lam).double(), ref, rtol=tol, atol=tol)
    g = torch.randn_like(x)
    xr = x.detach().double().requires_grad_(); ((l * xr + (1 - l) * xr[perm]) * g.double()).sum().backward()
    xs = x.detach().requires_grad_(); (manifold_mixup.mix(xs, perm, lam) * g).sum().backward()
    torch.testing.assert_close(xs.grad.double(), xr.grad, rtol=tol * 10, atol=tol * 10)
print("ok")
"""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default",
               PYTHONPATH=str(Path(__file__).resolve().parents[2] / "python"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_cuda_architectures_follow_torchs_extension_builder(monkeypatch):
    """The build takes the kernels' architectures from torch (cmake/torch_cuda_architectures.py)
    rather than CMake's "native", which fails on a build machine without a GPU: the CMake list
    says what torch.utils.cpp_extension's -gencode flags say."""
    import importlib.util
    from pathlib import Path

    from torch.utils.cpp_extension import _get_cuda_arch_flags

    path = Path(__file__).resolve().parents[2] / "cmake" / "torch_cuda_architectures.py"
    spec = importlib.util.spec_from_file_location("torch_cuda_architectures", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert sorted(script.from_gencode_flags(_get_cuda_arch_flags())) == ["80-real", "90-real", "90-virtual"]
    if not torch.version.cuda:
        assert script.architectures() == []  # a CPU torch: no CUDA kernels to build
