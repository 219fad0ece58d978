"""The plain-PyTorch API (ManifoldMixer, OutputMixer) in ordinary training loops, on CPU."""
import copy
import io
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from manifold_mixup import ManifoldMixer, OutputMixer, _C
from small_models import mixup_traces



class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, x):
        return F.relu(x + self.lin(x))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), Block(8), Block(8), nn.Linear(8, 3))


def data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def hooks_on(model):
    return mixup_traces(model)


def train(model, mm, steps=6, loss_fn=F.cross_entropy, call=None, lr=0.1):
    "A plain loop; returns the losses."
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    call = call or model
    losses = []
    for step in range(steps):
        x, y = data(seed=step)
        with mm.batch(x) as xb:
            loss = mm.loss(loss_fn, call(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_help_shows_the_loop_and_the_package_needs_no_fastai():
    doc = ManifoldMixer.__doc__
    assert "with mm.batch(x) as xb" in doc and "mm.loss(" in doc and "mm.remove()" in doc
    assert "om.loss(" in OutputMixer.__doc__
    code = "\n".join([
        "import sys, torch, torch.nn as nn, torch.nn.functional as F, manifold_mixup as m",
        "net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))",
        "mm = m.ManifoldMixer(net, verbose=False)",
        "with mm.batch(torch.randn(4, 2)) as xb:",
        "    loss = mm.loss(F.cross_entropy, net(xb), torch.zeros(4, dtype=torch.long))",
        "loss.backward()",
        "sys.exit(1 if 'fastai' in sys.modules else 0)"])
    env = dict(os.environ)
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_one_point_mixes_per_batch_with_the_mixed_output_and_loss():
    model = mlp()
    mm = ManifoldMixer(model, alpha=1.0, seed=3, verbose=False)
    assert mm.modules == [model[1], model[2]] and mm.point_names == ["1", "2"]
    seen = {}
    for i, m in enumerate(mm.modules):  # a user's own hooks: they run after ours
        m.register_forward_hook(lambda mod, a, out, i=i: seen.update({i: (a[0], out)}))
    for step in range(30):
        x, y = data(seed=step)
        seen.clear()
        with mm.batch(x) as xb:
            out = model(xb)
            loss = mm.loss(F.cross_entropy, out, y)
            chosen, lam, perm = mm.mixer.chosen, mm.mixer.lam, mm.mixer.perm
            assert mm.mixed
        def mix(t):
            w = lam.view(-1, *[1] * (t.dim() - 1))
            return w * t + (1 - w) * t[perm]
        if chosen == _C.Mixer.INPUT_POINT:
            torch.testing.assert_close(xb, mix(x))
        else:
            assert xb is x
            inp, got = seen[chosen]
            with torch.no_grad():
                torch.testing.assert_close(got, mix(mm.modules[chosen](inp)))
        expected = (lam * F.cross_entropy(out, y, reduction="none")
                    + (1 - lam) * F.cross_entropy(out, y[perm], reduction="none")).mean()
        torch.testing.assert_close(loss, expected)
    assert sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 30 == mm.mixer.batches
    assert min(mm.mixer.point_mixes) > 0 and mm.mixer.input_mixes > 0
    assert mm.mixer.unmixed_batches == 0


def test_fused_cross_entropy_equals_the_general_form_in_value_and_gradient():
    losses = {}
    grads = {}
    # F.cross_entropy takes the fused path; a weighted loss (weights 1) the general one.
    for name, fn in [("fused", F.cross_entropy),
                     ("general", nn.CrossEntropyLoss(weight=torch.ones(3))),
                     ("sum", nn.CrossEntropyLoss(reduction="sum"))]:
        model = mlp()
        mm = ManifoldMixer(model, alpha=1.0, seed=4, verbose=False)
        x, y = data()
        with mm.batch(x) as xb:
            loss = mm.loss(fn, model(xb), y)
        loss.backward()
        losses[name], grads[name] = loss.detach(), model[0].weight.grad.clone()
    torch.testing.assert_close(losses["fused"], losses["general"])
    torch.testing.assert_close(grads["fused"], grads["general"])
    torch.testing.assert_close(losses["sum"], losses["fused"] * 16)


def test_regression_mixes_the_targets_after_the_forward():
    model = mlp()
    mm = ManifoldMixer(model, alpha=1.0, seed=5, verbose=False)
    x, _ = data()
    y = torch.randn(16, 3)
    with mm.batch(x) as xb:
        out = model(xb)
        loss = mm.loss(F.mse_loss, out, y)
        mixed_y = mm.mix_targets(y)
        lam = mm.mixer.lam.view(-1, 1)
        torch.testing.assert_close(mixed_y, lam * y + (1 - lam) * y[mm.mixer.perm])
    torch.testing.assert_close(loss, F.mse_loss(out, mixed_y))


def test_alpha_any_schedule_zero_and_the_accepted_types():
    model = mlp()
    mm = ManifoldMixer(model, alpha=0.0, verbose=False)
    train(model, mm, steps=4)
    assert mm.mixer.batches == 4 and sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 0
    assert mm.mixer.unmixed_batches == 0  # alpha 0 chose nothing: not an unmixed batch
    seen = []
    for step in range(5):
        mm.alpha = [0.1, np.float32(0.2), torch.tensor(0.3), 1, 0.5][step]
        seen.append(mm.alpha)
        x, y = data(seed=step)
        with mm.batch(x) as xb:
            mm.loss(F.cross_entropy, model(xb), y)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 1.0, 0.5])
    for bad in (True, "0.4", torch.tensor([0.1, 0.2]), None):
        with pytest.raises(TypeError, match="alpha must be a real number"):
            mm.alpha = bad
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
            ManifoldMixer(model, alpha=bad)
    with pytest.raises(TypeError, match="input_mixup must be True or False"):
        ManifoldMixer(model, input_mixup="yes")
    with pytest.raises(TypeError, match="seed must be None or an int"):
        ManifoldMixer(model, seed=-1)


def test_eval_mode_never_mixes():
    model = mlp()
    mm = ManifoldMixer(model, alpha=1.0, seed=0, verbose=False)
    model.eval()
    x, y = data()
    for _ in range(10):
        with mm.batch(x) as xb:
            assert xb is x
            out = model(xb)
            assert torch.equal(mm.loss(F.cross_entropy, out, y), F.cross_entropy(out, y))
            assert not mm.mixed
    assert mm.mixer.batches == 0


class Boom(nn.Module):
    "Raises inside the forward, as a layer interrupted by Ctrl-C would."

    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def forward(self, x):
        if self.exc is not None:
            raise self.exc
        return x


@pytest.mark.parametrize("exc", [RuntimeError("in a layer"), KeyboardInterrupt()],
                         ids=["RuntimeError", "KeyboardInterrupt"])
def test_no_point_stays_armed_whatever_raises(exc, tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), Block(8), Boom(exc), Block(8), nn.Linear(8, 3))
    plain = copy.deepcopy(model)
    mm = ManifoldMixer(model, modules=[model[1], model[3]], alpha=1.0, verbose=False)
    x, y = data()
    with pytest.raises(type(exc)):
        with mm.batch(x) as xb:
            model(xb)
    assert not mm.mixer.in_batch
    model[2].exc = plain[2].exc = None
    with torch.no_grad():  # a training-mode forward outside a batch is plain
        torch.testing.assert_close(model(x), plain(x))
    torch.save(model, tmp_path / "m.pt")
    copy.deepcopy(model)
    train(model, mm, steps=3)  # the next batches work
    assert mm.mixer.batches == 4
    mm.remove()
    assert hooks_on(model) == 0


def test_the_model_pickles_copies_and_saves_plainly_even_inside_a_batch(tmp_path):
    model = mlp()
    plain = copy.deepcopy(model)
    mm = ManifoldMixer(model, modules=[model[1]], input_mixup=False, alpha=1.0, verbose=False)
    x, y = data()
    keys = list(model.state_dict())
    with mm.batch(x) as xb:
        assert hooks_on(model) == 2  # the point, and the root that starts each forward
        torch.save(model, tmp_path / "inside.pt")
        twin = copy.deepcopy(model)
        assert list(model.state_dict()) == keys
        model(xb)
    loaded = torch.load(tmp_path / "inside.pt", weights_only=False)
    for m in (loaded, twin):  # copies made mid-batch never mix and hold their own classes
        assert hooks_on(m) == 0 and type(m[1]) is Block and type(m) is nn.Sequential
        m.train()
        torch.manual_seed(0)
        with torch.no_grad():
            torch.testing.assert_close(m(x), plain(x))
    # A pickle made during the mixer's life loads where manifold_mixup is not even importable.
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with ManifoldMixer(net, modules=[net[0], net[2]], verbose=False) as other, other.batch(x):
        torch.save(net, tmp_path / "torch_only.pt")
    code = ("import sys, torch; sys.modules['manifold_mixup'] = None; "
            f"m = torch.load({str(tmp_path / 'torch_only.pt')!r}, weights_only=False); "
            "print(type(m).__name__, type(m[0]).__module__, type(m[2]).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Sequential", "torch.nn.modules.linear", "Linear"]


def test_tuple_points_mix_their_first_tensor_and_a_candidate_that_never_runs_is_left_out():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 3, x * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.pair, self.b, self.unused = nn.Linear(4, 8), Pair(), nn.Linear(8, 3), nn.Linear(3, 3)

        def forward(self, x):
            h, _ = self.pair(self.a(x))
            return self.b(h)

    net = Net()
    lines = []
    mm = ManifoldMixer(net, modules=[net.a, net.pair, net.unused, net.b], alpha=1.0, seed=0,
                       verbose=lines.append)
    with pytest.warns(UserWarning, match="'unused' did not run"):
        train(net, mm, steps=ManifoldMixer.NEVER_RAN_BATCHES - 1)
    assert mm.point_names == ["a", "pair", "unused", "b"]  # not yet: it may be skipped at random
    drew_unused = mm.mixer.unmixed_batches
    assert drew_unused == mm.mixer.batches - sum(mm.mixer.point_mixes) - mm.mixer.input_mixes
    assert mm.mixer.point_mixes[1] > 0  # the tuple mixes
    train(net, mm, steps=1)
    assert mm.point_names == ["a", "pair", "b"] and mm.modules == [net.a, net.pair, net.b]
    assert f"unused (did not run in the first {ManifoldMixer.NEVER_RAN_BATCHES} training batches)" in lines[-1]
    before = mm.mixer.unmixed_batches
    train(net, mm, steps=10)
    assert mm.mixer.unmixed_batches == before  # every later batch mixes


def test_a_chosen_point_that_does_not_mix_trains_on_the_plain_loss_and_is_counted():
    model = mlp()
    model[1].eval()  # frozen, as a BatchNorm-style freeze does
    mm = ManifoldMixer(model, modules=[model[1]], input_mixup=False, alpha=1.0, seed=1, verbose=False)
    x, y = data()
    with mm.batch(x) as xb:
        out = model(xb)
        loss = mm.loss(F.cross_entropy, out, y)
        assert not mm.mixed
    assert torch.equal(loss, F.cross_entropy(out, y))
    assert mm.mixer.unmixed_batches == 1 and mm.mixer.point_mixes == [0]


def test_a_module_that_runs_twice_mixes_once_and_warns_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared, self.head = nn.Linear(4, 8), Block(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.shared(self.shared(self.stem(x))))

    net = Twice()
    mm = ManifoldMixer(net, modules=[net.shared], input_mixup=False, alpha=1.0, verbose=False)
    with pytest.warns(UserWarning, match="ran more than once") as record:
        train(net, mm, steps=4)
    assert sum("ran more than once" in str(w.message) for w in record) == 1
    assert mm.mixer.point_mixes == [4] and mm.mixer.repeated_calls == 4


def test_several_inputs_mix_with_one_draw_and_integer_inputs_are_left_out():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 3)

        def forward(self, a, b):
            return self.lin(torch.cat([a, b], 1))

    net = Two()
    mm = ManifoldMixer(net, modules=[net.lin], alpha=1.0, seed=2, verbose=False)
    a, b = torch.randn(16, 4), torch.randn(16, 4)
    while True:
        with mm.batch(a, b) as (xa, xb):
            net(xa, xb)
            if mm.mixer.chosen == _C.Mixer.INPUT_POINT:
                lam, perm = mm.mixer.lam[:, None], mm.mixer.perm
                torch.testing.assert_close(xa, lam * a + (1 - lam) * a[perm])
                torch.testing.assert_close(xb, lam * b + (1 - lam) * b[perm])
                break
    assert mm.mixer.input_mixes == 1

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = nn.Embedding(5, 4), nn.Linear(4, 3)

        def forward(self, i):
            return self.lin(self.emb(i))

    for verbose, n_warnings in ((True, 1), (False, 0)):
        net = Emb()
        mm = ManifoldMixer(net, modules=[net.lin], alpha=1.0, verbose=verbose)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for _ in range(3):
                with mm.batch(torch.randint(0, 5, (8,))) as ib:
                    mm.loss(F.cross_entropy, net(ib), torch.zeros(8, dtype=torch.long))
        assert sum("input is left out" in str(w.message) for w in record) == n_warnings
        assert mm.mixer.input_mixes == 0 and mm.mixer.point_mixes == [3]


def test_autocast_bfloat16_mixes_in_bfloat16():
    model = mlp()
    mm = ManifoldMixer(model, modules=[model[1]], input_mixup=False, alpha=1.0, seed=0, verbose=False)
    got = {}
    model[1].register_forward_hook(lambda m, a, out: got.update(out=out))
    x, y = data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with mm.batch(x) as xb:
            out = model(xb)
            loss = mm.loss(F.cross_entropy, out, y)
    assert got["out"].dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model[0].weight.grad).all()
    assert mm.mixer.point_mixes == [1]


def test_torch_compile_mixes_like_eager_with_no_graph_break():
    import torch._dynamo as dynamo
    eager_model = mlp()
    eager_mm = ManifoldMixer(eager_model, alpha=1.0, seed=7, verbose=False)
    eager = train(eager_model, eager_mm, steps=4) + train(eager_model, eager_mm, steps=4)

    dynamo.reset()
    dynamo.utils.counters.clear()
    model = mlp()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    mm = ManifoldMixer(compiled, alpha=1.0, seed=7, verbose=False)
    assert mm.modules == [model[1], model[2]]  # selected inside the wrapper
    got = train(model, mm, steps=4, call=compiled)
    model.train()
    compiled(data()[0])  # a training-mode call outside a batch must not stop the mixing
    got += train(model, mm, steps=4, call=compiled)
    assert got == pytest.approx(eager, rel=1e-6)
    assert mm.mixer.point_mixes == eager_mm.mixer.point_mixes and min(mm.mixer.point_mixes) > 0
    assert mm.mixer.unmixed_batches == 0
    assert not dynamo.utils.counters["graph_break"]
    # One graph for the batches whatever their draw, one for the call outside a batch.
    assert dynamo.utils.counters["stats"]["unique_graphs"] <= 2


def test_remove_and_the_context_manager():
    model = mlp()
    with ManifoldMixer(model, alpha=1.0, verbose=False) as mm:
        x, y = data()
        with mm.batch(x) as xb:
            model(xb)
            mm.remove()  # inside a batch: ends it
            assert hooks_on(model) == 0 and not mm.mixer.in_batch
    assert hooks_on(model) == 0
    with pytest.raises(RuntimeError, match="remove"):
        with mm.batch(x):
            pass
    mm = ManifoldMixer(model, verbose=False)
    with pytest.raises(RuntimeError, match="inside `with mixer.batch"):
        mm.loss(F.cross_entropy, model(x), y)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ManifoldMixer(lambda x: x)
    with pytest.raises(TypeError, match="needs the batch's input"):
        with mm.batch():
            pass

    def no_reduction(pred, target):  # a loss that cannot give per-sample values
        return F.cross_entropy(pred, target, weight=torch.ones(3))

    mm = ManifoldMixer(model, alpha=1.0, input_mixup=False, verbose=False)
    with mm.batch(x) as xb:
        out = model(xb)
        with pytest.raises(TypeError, match="no `reduction` attribute or keyword"):
            mm.loss(no_reduction, out, y)


class MixerHolder(nn.Module):  # a LightningModule keeps its mixer this way
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.mm = ManifoldMixer(self.net, alpha=1.0, verbose=False)


def test_a_module_holding_a_mixer_refuses_pickling_with_what_to_do_and_pickles_once_it_is_dropped():
    import pickle
    holder = MixerHolder()
    for copier in (pickle.dumps, copy.deepcopy, lambda m: torch.save(m, io.BytesIO())):
        with pytest.raises(TypeError, match="ManifoldMixer cannot be pickled.*set the attribute"):
            copier(holder)
    holder.mm.remove()
    holder.mm = None
    back = pickle.loads(pickle.dumps(holder))
    assert type(back.net[1]) is type(mlp()[1])  # the original classes
    torch.testing.assert_close(back.net(data()[0]), holder.net(data()[0]))


def test_output_mixer_mixes_the_logits_in_the_loss():
    om = OutputMixer(alpha=1.0, seed=3)
    logits = torch.randn(16, 3, requires_grad=True)
    y = torch.randint(0, 3, (16,))
    loss = om.loss(nn.CrossEntropyLoss(), logits, y)  # plain torch: integer targets
    lam, perm = om.mixer.lam, om.mixer.perm
    mixed = lam[:, None] * logits + (1 - lam[:, None]) * logits[perm]
    expected = (lam * F.cross_entropy(mixed, y, reduction="none")
                + (1 - lam) * F.cross_entropy(mixed, y[perm], reduction="none")).mean()
    torch.testing.assert_close(loss, expected)
    multi = (torch.rand(16, 3) > 0.5).float()  # multi-label: BCE is classification
    om.loss(nn.BCEWithLogitsLoss(), logits, multi).backward()
    assert om.mixer.point_mixes == [2]
    with pytest.raises(ValueError, match="OutputMixup needs a classification loss"):
        om.loss(F.mse_loss, logits, torch.randn(16, 3))
    with pytest.raises(ValueError, match="OutputMixup needs a classification loss"):
        OutputMixer.check_loss(nn.MSELoss())


def test_seeds_reproduce_per_mixer_and_a_pickled_mixer_keeps_its_seed():
    import pickle
    runs = []
    for seed in (11, 11, 12):
        mx = _C.Mixer(alpha=1.0, seed=seed)
        mx.begin_batch(32, torch.device("cpu"))
        runs.append((mx.lam.clone(), mx.perm.clone()))
        mx.end_batch()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    back = pickle.loads(pickle.dumps(_C.Mixer(alpha=1.0, input_mixup=False, seed=11)))
    assert (back.seed, back.alpha, back.input_mixup) == (11, 1.0, False)
    back.begin_batch(32, torch.device("cpu"))
    assert torch.equal(back.lam, runs[0][0])
    assert pickle.loads(pickle.dumps(_C.Mixer())).seed is None


def test_the_mixer_releases_the_gil_while_it_mixes():
    mx = _C.Mixer(alpha=1.0, seed=0)
    big = torch.randn(64, 256, 1024)  # 64 MB: tens of ms per mix
    mx.begin_batch(64, torch.device("cpu"))
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        advanced = 0
        for _ in range(10):
            before = ticks[0]
            mx.mix(big)
            advanced += ticks[0] > before
    finally:
        stop.set()
        t.join()
    # Holding the GIL, the counting thread could never run during a call.
    assert advanced > 0
