"""Mixup points that live as long as the mixer: every forward of a batch mixes the same way
(a second forward, checkpoint recomputation, compiled graphs), outputs that are not one
batch-first tensor, random depth, DataParallel, and torch's settings left as they were."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from manifold_mixup import ManifoldMixer, ManifoldMixupModule, _C
from small_models import mixup_traces


class Block(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, x):
        return F.relu(x + self.lin(x))


def mlp(n_blocks=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), *[Block() for _ in range(n_blocks)], nn.Linear(8, 3))


def data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def mixed_along(t, lam, perm, dim=0):
    shape = [1] * t.dim()
    shape[dim] = -1
    w = lam.view(shape)
    return w * t + (1 - w) * t.index_select(dim, perm)


def ce_mixed(out, y, lam, perm):
    return (lam * F.cross_entropy(out, y, reduction="none")
            + (1 - lam) * F.cross_entropy(out, y[perm], reduction="none")).mean()


def capture(modules):
    "The output each module hands on (after mixing), per forward, by a hook of the test's own."
    seen = {}
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda mod, a, out, i=i: seen.setdefault(i, []).append((a[0], out)))
    return seen


# -- every forward of a batch ------------------------------------------------------------------
def test_a_second_forward_in_a_batch_mixes_at_the_same_point_and_each_loss_matches_its_forward():
    model = mlp()
    mm = ManifoldMixer(model, alpha=1.0, seed=0, input_mixup=False, verbose=False)
    seen = capture(mm.modules)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(10):  # SAM-like: forward, loss, backward, forward, loss, backward
        x, y = data(seed=step)
        seen.clear()
        with mm.batch(x) as xb:
            chosen, lam, perm = mm.mixer.chosen, mm.mixer.lam, mm.mixer.perm
            for k in range(2):
                out = model(xb)
                loss = mm.loss(F.cross_entropy, out, y)
                inp, got = seen[chosen][k]  # the drawn point ran in this forward too
                with torch.no_grad():
                    plain = Block.forward(mm.modules[chosen], inp)
                torch.testing.assert_close(got, mixed_along(plain, lam, perm))
                torch.testing.assert_close(loss, ce_mixed(out, y, lam, perm))
                opt.zero_grad()
                loss.backward()
                if k == 0:  # SAM's ascent step between the two forwards
                    for p in model.parameters():
                        p.data.add_(0.01 * p.grad)
        opt.step()
    assert sum(mm.mixer.point_mixes) == 10 and mm.mixer.unmixed_batches == 0


def test_rdrop_two_forwards_then_one_loss():
    model = mlp()
    mm = ManifoldMixer(model, alpha=1.0, seed=1, input_mixup=False, verbose=False)
    x, y = data()
    for _ in range(6):
        with mm.batch(x) as xb:
            a, b = model(xb), model(xb)
            torch.testing.assert_close(a, b)  # no dropout: both forwards mixed alike
            loss = mm.loss(F.cross_entropy, a, y) + mm.loss(F.cross_entropy, b, y)
            torch.testing.assert_close(loss, 2 * ce_mixed(a, y, mm.mixer.lam, mm.mixer.perm))
    assert sum(mm.mixer.point_mixes) == 6


def test_a_module_run_twice_within_one_forward_mixes_on_its_first_call_in_every_forward():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared, self.head = nn.Linear(4, 8), Block(), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.shared(self.shared(self.stem(x))))

    net = Twice()
    mm = ManifoldMixer(net, modules=[net.shared], input_mixup=False, alpha=1.0, verbose=False)
    seen = capture([net.shared])
    x, y = data()
    with pytest.warns(UserWarning, match="ran more than once in a forward"):
        with mm.batch(x) as xb:
            for _ in range(2):  # two forwards, each calls `shared` twice
                net(xb)
    calls = seen[0]
    assert len(calls) == 4
    lam, perm = mm.mixer.lam, mm.mixer.perm
    for k, (inp, got) in enumerate(calls):
        with torch.no_grad():
            plain = Block.forward(net.shared, inp)
        expect = mixed_along(plain, lam, perm) if k % 2 == 0 else plain
        torch.testing.assert_close(got, expect)
    assert mm.mixer.point_mixes == [1] and mm.mixer.repeated_calls == 1


class CheckpointedNet(nn.Module):
    "Three blocks, each checkpointed (when ckpt) as timm's set_grad_checkpointing does."

    def __init__(self, ckpt, reentrant):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.blocks, self.head = nn.Linear(4, 8), nn.ModuleList([Block(), Block(), Block()]), nn.Linear(8, 3)
        self.ckpt, self.reentrant = ckpt, reentrant

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = checkpoint(b, h, use_reentrant=self.reentrant) if self.ckpt else b(h)
        return self.head(h)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_layers_recompute_the_batch_mix_and_gradients_equal_the_plain_models(reentrant):
    ref, net = CheckpointedNet(False, reentrant), CheckpointedNet(True, reentrant)
    mms = [ManifoldMixer(m, alpha=1.0, seed=5, verbose=False) for m in (ref, net)]
    for step in range(12):
        x, y = data(seed=step)
        x.requires_grad_(reentrant)  # reentrant checkpoints need an input that requires grad
        grads = []
        for m, mm in zip((ref, net), mms):
            m.zero_grad()
            with mm.batch(x) as xb:
                loss = mm.loss(F.cross_entropy, m(xb), y)
            loss.backward()  # outside the batch, as a plain loop does
            grads.append([p.grad.clone() for p in m.parameters()])
        assert mms[0].mixer.chosen == mms[1].mixer.chosen
        for g_ref, g in zip(*grads):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    assert mms[1].mixer.point_mixes == mms[0].mixer.point_mixes and sum(mms[1].mixer.point_mixes) > 0


def accumulate(model, mm, steps, reentrant):
    """Gradient accumulation: `steps` mixed micro-batches and, between them, a plain forward with
    grad enabled (a clean loss added for a log), all summed before one backward."""
    total = 0
    for step in range(steps):
        x, y = data(seed=20 + step)
        x.requires_grad_(reentrant)
        with mm.batch(x) as xb:
            total = total + mm.loss(F.cross_entropy, model(xb), y)
        total = total + 0.1 * F.cross_entropy(model(x), y)
    total.backward()


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_a_recomputation_replays_the_draw_of_its_own_forward_after_later_forwards(reentrant):
    ref, net = CheckpointedNet(False, reentrant), CheckpointedNet(True, reentrant)
    mms = [ManifoldMixer(m, alpha=1.0, seed=7, verbose=False, input_mixup=False) for m in (ref, net)]
    for m, mm in zip((ref, net), mms):
        accumulate(m, mm, 6, reentrant)
    assert mms[0].mixer.point_mixes == mms[1].mixer.point_mixes
    assert len([n for n in mms[1].mixer.point_mixes if n]) >= 2  # the micro-batches drew several points
    for (name, p), q in zip(ref.named_parameters(), net.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_a_recomputation_older_than_the_forwards_kept_is_said_not_guessed(monkeypatch):
    from manifold_mixup import points
    monkeypatch.setattr(points, "MAX_REPLAYED_FORWARDS", 2)
    net = CheckpointedNet(True, False)
    mm = ManifoldMixer(net, alpha=1.0, seed=7, verbose=False, input_mixup=False)
    with pytest.warns(UserWarning, match="older than the last 2 forwards"):
        try:
            accumulate(net, mm, 4, False)
        except torch.utils.checkpoint.CheckpointError:
            pass  # a non-reentrant checkpoint then also refuses the unmixed recomputation


# -- points whose output is not one batch-first tensor -----------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("seq_len", [5, 16], ids=["T!=B", "T==B"])
def test_transformer_layers_mix_along_the_batch_whatever_the_layout(batch_first, seq_len):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    head = nn.Linear(8, 3)
    B = 16
    x = torch.randn(B, seq_len, 8) if batch_first else torch.randn(seq_len, B, 8)
    y = torch.randint(0, 3, (B,))
    mm = ManifoldMixer(encoder, modules=list(encoder.layers), input_mixup=False, alpha=1.0,
                       seed=2, verbose=False)
    seen = capture(mm.modules)
    dim = 0 if batch_first else 1
    for step in range(6):
        seen.clear()
        with mm.batch(x.transpose(0, 1) if not batch_first else x) as _:
            h = encoder(x)
            pooled = h.mean(1 if batch_first else 0)
            loss = mm.loss(F.cross_entropy, head(pooled), y)
            chosen, lam, perm = mm.mixer.chosen, mm.mixer.lam, mm.mixer.perm
        inp, got = seen[chosen][0]
        with torch.no_grad():
            plain = nn.TransformerEncoderLayer.forward(mm.modules[chosen], inp)
        torch.testing.assert_close(got, mixed_along(plain, lam, perm, dim))
        torch.testing.assert_close(loss, ce_mixed(head(pooled), y, lam, perm))
    assert sum(mm.mixer.point_mixes) == 6 and mm.mixer.unmixed_batches == 0


class WithAttention(nn.Module):
    "Returns (hidden, attention weights), as Hugging Face layers do."

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x)
        return h, torch.softmax(h, -1)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return {"ids": torch.zeros(x.shape[0], dtype=torch.long), "hidden": self.lin(x)}


@pytest.mark.parametrize("kind", ["tuple", "dict", "field"])
def test_tuple_and_dict_outputs_mix_the_hidden_state_and_pass_the_rest_through(kind):
    torch.manual_seed(0)
    inner = WithAttention() if kind != "dict" else DictOut()
    point = ManifoldMixupModule(inner, field=1) if kind == "field" else inner
    stem, head = nn.Linear(4, 8), nn.Linear(8, 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.point, self.head = stem, point, head

        def forward(self, x):
            out = self.point(self.stem(x))
            h = out["hidden"] if kind == "dict" else out[1] if kind == "field" else out[0]
            return self.head(h)

    net = Net()
    named = None if kind == "field" else [point]  # ManifoldMixupModule is found by rule 2
    mm = ManifoldMixer(net, modules=named, input_mixup=False, alpha=1.0, seed=3, verbose=False)
    assert mm.modules == [point]
    seen = capture([point])
    x, y = data()
    with mm.batch(x) as xb:
        loss = mm.loss(F.cross_entropy, net(xb), y)
        lam, perm = mm.mixer.lam, mm.mixer.perm
    inp, got = seen[0][0]
    plain = type(inner).forward(inner, inp)
    with torch.no_grad():
        if kind == "dict":
            torch.testing.assert_close(got["hidden"], mixed_along(plain["hidden"], lam, perm))
            assert torch.equal(got["ids"], plain["ids"])
        elif kind == "tuple":
            torch.testing.assert_close(got[0], mixed_along(plain[0], lam, perm))
            torch.testing.assert_close(got[1], plain[1])  # passed through unchanged
        else:  # field=1 names the second entry
            torch.testing.assert_close(got[1], mixed_along(plain[1], lam, perm))
            torch.testing.assert_close(got[0], plain[0])
    assert mm.mixer.point_mixes == [1] and torch.isfinite(loss)


def test_outputs_with_no_batch_dimension_are_left_out_with_a_line_never_a_crash():
    class PositionEmbedded(nn.Module):
        "A position embedding shared by every sample: [1, T, D], whatever the batch."

        def __init__(self):
            super().__init__()
            self.pos = nn.Embedding(16, 8)
            self.lin = nn.Linear(8, 3)

        def forward(self, x):  # x: [B, T, 8]
            p = self.pos(torch.arange(x.shape[1])[None])
            return self.lin((x + p).mean(1))

    net = PositionEmbedded()
    lines = []
    mm = ManifoldMixer(net, modules=[net.pos, net.lin], input_mixup=False, alpha=1.0, seed=0,
                       verbose=lines.append)
    x, y = torch.randn(16, 16, 8), torch.randint(0, 3, (16,))  # T == B: the size alone would lie
    for step in range(30):
        with mm.batch(x) as xb:
            loss = mm.loss(F.cross_entropy, net(xb), y)
        if mm.point_names == ["lin"]:
            break
    assert mm.point_names == ["lin"] and "pos (its output of shape (1, 16, 8) has no batch" in lines[-1]
    assert mm.mixer.unmixed_batches <= 1  # only a batch that drew pos before it was left out
    with mm.batch(x) as xb:
        assert torch.isfinite(mm.loss(F.cross_entropy, net(xb), y))


# -- random depth -------------------------------------------------------------------------------
def test_random_depth_keeps_every_candidate_and_batches_whose_drawn_layer_skipped_train_plainly():
    class LayerDrop(nn.Module):
        def __init__(self, n=6, p=0.5):
            super().__init__()
            self.stem, self.blocks, self.head = nn.Linear(4, 8), nn.ModuleList([Block() for _ in range(n)]), nn.Linear(8, 3)
            self.p = p

        def forward(self, x):
            h = self.stem(x)
            for b in self.blocks:
                if not self.training or torch.rand(()) >= self.p:
                    h = b(h)
            return self.head(h)

    torch.manual_seed(0)
    net = LayerDrop()
    mm = ManifoldMixer(net, alpha=1.0, input_mixup=False, seed=4, verbose=False)
    assert len(mm.modules) == 6
    x, y = data()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(40):
            with mm.batch(x) as xb:
                out = net(xb)
                loss = mm.loss(F.cross_entropy, out, y)
                if not mm.mixed:
                    torch.testing.assert_close(loss, F.cross_entropy(out, y))
    assert len(mm.modules) == 6  # no block is dropped for having skipped some batches
    assert mm.mixer.unmixed_batches > 0
    assert sum(mm.mixer.point_mixes) + mm.mixer.unmixed_batches == 40
    assert any("random depth" in str(w.message) for w in record)
    assert not any("compile" in str(w.message) for w in record)


# -- torch.compile -------------------------------------------------------------------------------
class ResNet(nn.Module):
    def __init__(self, n=12, c=8):
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(4, c), nn.Sequential(*[Block(c) for _ in range(n)]), nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def train_steps(call, model, mm, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        x, y = data(seed=step)
        with mm.batch(x) as xb:
            loss = mm.loss(F.cross_entropy, call(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_compiled_model_one_graph_for_every_draw_and_torchs_settings_untouched():
    import torch._dynamo as dynamo
    config = dynamo.config
    before = {k: getattr(config, k) for k in ("skip_nnmodule_hook_guards", "recompile_limit")}
    dynamo.reset()
    dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = ResNet(n=12)
    compiled = torch.compile(model, backend="aot_eager")
    mm = ManifoldMixer(compiled, alpha=1.0, seed=0, verbose=False)
    assert len(mm.modules) == 12
    train_steps(compiled, model, mm, 30)
    assert mm.mixer.unmixed_batches == 0
    assert sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 30
    assert sum(n > 0 for n in mm.mixer.point_mixes) >= 8  # many different points drawn
    assert dynamo.utils.counters["stats"]["unique_graphs"] <= 1
    model.eval()
    compiled(data()[0])
    assert dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # + evaluation mode
    mm.remove()
    assert mixup_traces(model) == 0
    assert {k: getattr(config, k) for k in before} == before


def test_a_model_compiled_after_another_of_its_class_trained_still_mixes():
    import torch._dynamo as dynamo
    dynamo.reset()
    torch.manual_seed(0)
    # torch's own default, whatever an earlier test or library set: hooks are not guarded.
    with dynamo.config.patch(skip_nnmodule_hook_guards=True):
        first = ResNet(n=12)
        train_steps(torch.compile(first, backend="aot_eager"), first, _NoMixer(), 3)  # a baseline run
        second = ResNet(n=12)
        compiled = torch.compile(second, backend="aot_eager")
        mm = ManifoldMixer(compiled, alpha=1.0, seed=1, verbose=False)
        train_steps(compiled, second, mm, 12)
    assert mm.mixer.unmixed_batches == 0
    assert sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 12 and sum(mm.mixer.point_mixes) > 0


class _NoMixer:
    "The same loop without mixing."

    class _Ctx:
        def __init__(self, x):
            self.x = x

        def __enter__(self):
            return self.x

        def __exit__(self, *exc):
            return False

    def batch(self, x):
        return self._Ctx(x)

    def loss(self, fn, pred, y):
        return fn(pred, y)


# -- wrappers, removal -------------------------------------------------------------------------
def test_data_parallel_over_several_devices_is_refused_and_over_one_is_fine():
    model = mlp()
    dp = nn.DataParallel(model)  # on a CPU machine: no devices
    dp.device_ids = [0, 1]       # the state DataParallel has on two GPUs
    with pytest.raises(ValueError, match="DataParallel over 2 devices.*DistributedDataParallel"):
        ManifoldMixer(dp, verbose=False)
    assert mixup_traces(model) == 0
    dp.device_ids = [0]
    ManifoldMixer(dp, verbose=False).remove()


def test_a_second_mixer_takes_the_model_over_and_the_first_is_spent():
    model = mlp()
    first = ManifoldMixer(model, verbose=False)
    with pytest.warns(UserWarning, match="already had the mixup points of another mixer"):
        second = ManifoldMixer(model, alpha=1.0, verbose=False)
    with pytest.raises(RuntimeError, match="another mixer took this model over"):
        with first.batch(data()[0]):
            pass
    train_steps(model, model, second, 2)
    second.remove()
    assert mixup_traces(model) == 0


def test_mix_mask_is_the_union_of_both_samples_valid_positions():
    model = mlp()
    mm = ManifoldMixer(model, alpha=1.0, seed=0, verbose=False)
    x, _ = data()
    valid = torch.rand(16, 7) > 0.3
    with mm.batch(x):
        perm = mm.mixer.perm
        assert torch.equal(mm.mix_mask(valid), valid | valid[perm])
        assert torch.equal(mm.mix_mask(~valid, padding=True), ~(valid | valid[perm]))
        assert torch.equal(mm.mix_mask(valid.long()), (valid | valid[perm]).long())
        with pytest.raises(ValueError, match="mask must be a tensor whose dim 0 is the batch"):
            mm.mix_mask(valid[:3])
    model.eval()
    with mm.batch(x):
        assert mm.mix_mask(valid) is valid  # nothing mixes in eval mode


def test_a_multi_input_model_observes_its_first_batch_and_leaves_out_one_towers_modules():
    from small_models import ResBlock

    class TwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.img = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), ResBlock(8), ResBlock(8),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.meta = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
            self.head = nn.Linear(16, 3)

        def forward(self, img, meta):
            return self.head(torch.cat([self.img(img), self.meta(meta)], 1))

    torch.manual_seed(0)
    net = TwoTower()
    lines = []
    mm = ManifoldMixer(net, alpha=1.0, seed=0, verbose=lines.append)
    assert mm.modules == [net.img[1], net.img[2]]  # rule 5: the image tower's blocks
    img, meta, y = torch.randn(8, 1, 6, 6), torch.randn(8, 5), torch.randint(0, 3, (8,))
    for step in range(8):
        with mm.batch(img, meta) as (a, b):
            out = net(a, b)
            loss = mm.loss(F.cross_entropy, out, y)
            if step == 0:  # observed, not mixed: the plain loss
                assert not mm.mixed and torch.equal(loss, F.cross_entropy(out, y))
    assert "see only some of the model's inputs (img.1, img.2)" in lines[1]
    assert mm.modules == [net, net.head] and mixup_traces(net.img) == 0
    assert mm.mixer.unmixed_batches == 0 and sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 7
    # The user's own choice is kept whatever it sees.
    mine = ManifoldMixer(net, modules=[net.img[1]], alpha=1.0, verbose=False)
    with mine.batch(img, meta) as (a, b):
        mine.loss(F.cross_entropy, net(a, b), y)
    assert mine.modules == [net.img[1]]
