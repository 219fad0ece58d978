"""The checks a GPU must pass, run by scripts/gpu-check.sh: the op (opcheck, gradients, the
backward's grouping of sources), the mixer and the fastai callbacks on a model, channels_last
through a mixup point, no host sync in a training step, streams, 64-bit indices.

They run on CUDA when torch sees a GPU and are skipped otherwise; with MM_TEST_DEVICE=cpu
(what `scripts/gpu-check.sh --cpu`, run by `make test`, sets) the same tests run on the CPU,
so that they and the script stay working before a GPU is lent. Tests that only mean something
on a GPU (host syncs, streams) are skipped there, saying so."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.library import opcheck

from manifold_mixup import ManifoldMixer, mix
from manifold_mixup._build_info import CUDA_KERNEL
from small_models import cnn

DEVICE = os.environ.get("MM_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no GPU (MM_TEST_DEVICE=cpu runs these on the CPU)")
gpu_only = pytest.mark.skipif(DEVICE != "cuda", reason="no GPU")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def reference(x, perm, lam):
    lam = lam.double().view(-1, *([1] * (x.dim() - 1)))
    xd = x.double()
    return lam * xd + (1 - lam) * xd[perm]


def samples(dtype, device):
    """(name, x, perm, lam): rows whose length is and is not a multiple of 16 bytes, a view whose
    rows start misaligned, channels_last, lam with exact ones, a permutation and an index
    vector with repeats (the backward's two groupings)."""
    g = torch.Generator().manual_seed(0)

    def data(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    lam = torch.rand(8, generator=g)
    lam[[1, 4]] = 1.0
    perm = torch.randperm(8, generator=g)
    repeats = torch.tensor([3, 3, 0, 7, 7, 7, 1, 2])
    misaligned = data(8 * 16 + 1)[1:].view(8, 16)  # 16-element rows, one element past alignment
    yield "aligned", data(8, 16), perm, lam
    yield "odd-rows", data(8, 3, 5), perm, lam
    yield "misaligned", misaligned, perm, lam
    yield "channels_last", data(8, 8, 3, 2).contiguous(memory_format=torch.channels_last), perm, lam
    yield "repeats", data(8, 16), repeats, lam
    yield "repeats-odd", data(8, 7), repeats, lam


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_opcheck_and_gradients(dtype):
    for name, x, perm, lam in samples(dtype, DEVICE):
        perm, lam = perm.to(DEVICE), lam.to(DEVICE)
        opcheck(torch.ops.manifold_mixup.mix.default,
                (x.detach().clone().requires_grad_(), perm, lam.to(dtype).clone().requires_grad_()))
        xs = x.detach().clone().requires_grad_()
        ls = lam.to(dtype).clone().requires_grad_()
        tol = TOL[dtype]
        out = mix(xs, perm, ls)
        torch.testing.assert_close(out.double(), reference(x, perm, ls.detach()), rtol=tol, atol=tol,
                                   msg=lambda m: f"{name}: {m}")
        g = torch.randn(x.shape, dtype=torch.float64).to(DEVICE, dtype)
        out.backward(g)
        xr = x.detach().double().requires_grad_()
        lr = ls.detach().double().requires_grad_()
        (reference(xr, perm, lr) * g.double()).sum().backward()
        torch.testing.assert_close(xs.grad.double(), xr.grad, rtol=10 * tol, atol=10 * tol,
                                   msg=lambda m: f"{name} grad x: {m}")
        torch.testing.assert_close(ls.grad.double(), lr.grad, rtol=50 * tol, atol=50 * tol,
                                   msg=lambda m: f"{name} grad lam: {m}")
        if dtype == torch.float64:
            xg = x.detach().clone().requires_grad_()
            lg = lam.double().clone().requires_grad_()
            assert torch.autograd.gradcheck(mix, (xg, perm, lg))
            assert torch.autograd.gradgradcheck(mix, (xg, perm, lg))


@pytest.mark.parametrize("kind", ["permutation", "random-indices", "constant"])
def test_backward_groups_large_batches(kind):
    """More samples than the grouping block has threads, each grouping: the gradient is the
    expression's, and the same bits on a second run (no atomic adds)."""
    b = 3000
    g = torch.Generator().manual_seed(1)
    perm = {"permutation": torch.randperm(b, generator=g),
            "random-indices": torch.randint(0, b, (b,), generator=g),
            "constant": torch.full((b,), 17)}[kind].to(DEVICE)
    lam = torch.rand(b, generator=g)
    lam[::5] = 1.0
    lam = lam.to(DEVICE)
    for f in (6, 8):  # one element, or 16 bytes, per load
        grad = torch.randn(b, f, generator=g).to(DEVICE)
        out = torch.ops.manifold_mixup._mix_backward(grad, perm, lam)
        expected = (lam.double()[:, None] * grad.double()).index_add(
            0, perm, (1 - lam.double())[:, None] * grad.double())
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        if CUDA_KERNEL == "aten" and DEVICE == "cuda" and kind != "permutation":
            continue  # index_add_'s atomics: the same bits only with deterministic algorithms on
        assert torch.equal(out, torch.ops.manifold_mixup._mix_backward(grad, perm, lam))


def test_channels_last_kept_through_a_mixup_point():
    """A channels_last CNN: the mixed activation the next module receives is channels_last
    (no layout copy at every batch), forward and backward."""
    torch.manual_seed(0)
    model = cnn().to(DEVICE).to(memory_format=torch.channels_last)
    seen = []
    model[3].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(16, 1, 8, 8, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=DEVICE)
    mm = ManifoldMixer(model, alpha=1.0, modules=[model[2]], input_mixup=False, seed=0, verbose=False)
    with mm.batch(x) as xb:
        out = model(xb)
        loss = mm.loss(F.cross_entropy, out, y)
    assert mm.mixer.point_mixes == [1]
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    grads = []
    seen[0].register_hook(grads.append)
    loss.backward()
    assert grads and torch.isfinite(grads[0]).all()


def train_steps(device, steps, model=None, check=None):
    "A CNN trained with ManifoldMixer for `steps` batches; returns (model, mixer, losses)."
    torch.manual_seed(0)
    model = model or cnn().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mm = ManifoldMixer(model, alpha=0.4, seed=0, verbose=False)
    x = torch.randn(steps, 32, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (steps, 32), device=device)
    losses = []
    for i in range(steps):
        with (check() if check and i >= 2 else _nothing()):
            with mm.batch(x[i]) as xb:
                loss = mm.loss(F.cross_entropy, model(xb), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(loss.detach())
    return model, mm, torch.stack(losses)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_manifold_mixer_trains_a_model():
    model, mm, losses = train_steps(DEVICE, 8)
    assert torch.isfinite(losses).all()
    assert mm.mixer.batches == 8 and sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 8
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert next(model.parameters()).device.type == torch.device(DEVICE).type


def test_fastai_callbacks_on_a_model():
    fastai = pytest.importorskip("fastai.basics", reason="fastai is not installed")
    from manifold_mixup import ManifoldMixup, OutputMixup

    class Spy(fastai.Callback):
        order = 90

        def after_loss(self):
            self.devices.add(self.pred.device.type)

    for cb in (ManifoldMixup, OutputMixup):
        fastai.set_seed(0)
        x = torch.randn(96, 1, 8, 8)
        y = torch.randint(0, 10, (96,))
        dls = fastai.DataLoaders.from_dsets(list(zip(x[:64], y[:64])), list(zip(x[64:], y[64:])),
                                            bs=32, device=torch.device(DEVICE))
        spy = Spy()
        spy.devices = set()
        learn = fastai.Learner(dls, cnn(), loss_func=fastai.CrossEntropyLossFlat(), cbs=[cb(), spy])
        learn.fit(1)
        assert spy.devices == {torch.device(DEVICE).type}, cb.__name__
        assert all(torch.isfinite(v).all() for v in learn.recorder.losses), cb.__name__


@gpu_only
def test_no_host_sync_in_a_training_step():
    """The per-batch path (begin_batch's draw and copy, the points' mix, the mixed loss, the
    backward's grouping and gather, the optimizer) never waits for the GPU: torch raises on
    every synchronising call under set_sync_debug_mode("error")."""
    def no_sync():
        return _sync_mode("error")

    with no_sync(), pytest.raises(RuntimeError):
        torch.ones(1, device="cuda").item()  # the mode does catch a sync on this torch
    x = torch.randn(64, 3, 16, device="cuda", requires_grad=True)
    for perm in (torch.randperm(64, device="cuda"), torch.randint(0, 64, (64,), device="cuda")):
        lam = torch.rand(64, device="cuda", requires_grad=True)
        with no_sync():
            mix(x, perm, lam).sum().backward()
    _, mm, losses = train_steps("cuda", 8, check=no_sync)
    assert torch.isfinite(losses).all() and mm.mixer.batches == 8


class _sync_mode:
    "torch.cuda.set_sync_debug_mode for a while, then the mode it had (a global setting)."

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        self.old = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(self.mode)

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self.old)
        return False


@gpu_only
def test_side_stream_waits_for_begin_batch():
    """lam and perm are copied on begin_batch's stream: behind a long kernel there, a forward
    on that stream, or on another stream that waits for it (the documented rule), mixes with
    this batch's lam and perm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).cuda()
    mm = ManifoldMixer(model, alpha=1.0, modules=[model[0]], input_mixup=False, seed=3, verbose=False)
    x = torch.randn(16, 8, device="cuda")
    first, side = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()  # the model and x, made on the default stream, are ready
    for wait in (False, True):
        with torch.cuda.stream(first):
            torch.cuda._sleep(50_000_000)  # the copy queues behind tens of milliseconds
            with mm.batch(x) as xb:
                lam, perm = mm.mixer.lam.clone(), mm.mixer.perm.clone()
                stream = side if wait else first
                if wait:
                    side.wait_stream(first)
                with torch.cuda.stream(stream):
                    h = model[0](xb)
                    out = model[1](h)
                    mm.mixer.lam.record_stream(stream)
                    mm.mixer.perm.record_stream(stream)
            plain = model[0](x)
        torch.cuda.synchronize()
        torch.testing.assert_close(h, reference(plain, perm, lam).float())
        assert out.shape == (16, 4)


@gpu_only
@pytest.mark.skipif(DEVICE == "cuda" and torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs 40 GB of GPU memory")
def test_more_than_2_to_the_31_elements_take_64_bit_indices():
    """x of 2^31 + 3 float16 elements with odd rows (one element per load, 64-bit indices):
    the last elements are right, forward and backward."""
    b, f = 3, (2**31 + 3) // 3
    x = torch.empty(b, f, dtype=torch.float16, device="cuda")
    x[:, :8] = torch.randn(b, 8, device="cuda").half()
    x[:, -8:] = torch.randn(b, 8, device="cuda").half()
    perm = torch.tensor([2, 0, 1], device="cuda")
    lam = torch.tensor([0.3, 1.0, 0.8], device="cuda")
    out = mix(x, perm, lam)
    for cols in (slice(0, 8), slice(f - 8, f)):
        torch.testing.assert_close(out[:, cols].double(), reference(x[:, cols], perm, lam), rtol=2e-3, atol=2e-3)
    del out
    gx = torch.ops.manifold_mixup._mix_backward(x, perm, lam)
    expected = (lam.double()[:, None] * x[:, -8:].double()).index_add(
        0, perm, (1 - lam.double())[:, None] * x[:, -8:].double())
    torch.testing.assert_close(gx[:, -8:].double(), expected, rtol=2e-3, atol=2e-3)
