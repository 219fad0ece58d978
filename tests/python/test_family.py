"""The manifold mixup family from Python: the paper's lambda modes and prob, checked on numbers
against torch expressions written from the authors' code (Verma et al.'s manifold_mixup)."""
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from manifold_mixup import ManifoldMixer, OutputMixer, _C
from small_models import ResBlock

NO_POINT, INPUT_POINT = _C.Mixer.NO_POINT, _C.Mixer.INPUT_POINT


def draws(batches=400, bs=32, **settings):
    "lam of `batches` batches of a seeded Mixer, as a [batches, bs] tensor."
    m = _C.Mixer(alpha=2.0, seed=0, **settings)
    m.add_point("p")
    rows = []
    for _ in range(batches):
        m.begin_batch(bs, torch.device("cpu"))
        rows.append(m.lam.clone())
        m.end_batch()
    return torch.stack(rows)


def quantiles(t):
    return torch.quantile(t.double().flatten(), torch.linspace(0.05, 0.95, 19, dtype=torch.float64))


@pytest.mark.parametrize("lam_mode", ["sample", "batch"])
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "as-drawn"])
def test_lam_follows_the_law_each_mode_says(lam_mode, fold):
    lam = draws(lam_mode=lam_mode, fold=fold)
    if lam_mode == "batch":  # the paper's code: one np.random.beta(alpha, alpha) per batch
        assert torch.equal(lam, lam[:, :1].expand_as(lam))
        lam = lam[:, 0]
    else:
        assert not torch.equal(lam, lam[:, :1].expand_as(lam))
    # The law against torch's own Beta sampler, folded as the reference extension folds it.
    ref = torch.distributions.Beta(2.0, 2.0).sample((lam.numel(),), )
    if fold:
        ref = torch.maximum(ref, 1 - ref)
    assert (lam.min() >= 0.5) == fold
    tol = 0.03 if lam_mode == "sample" else 0.06  # 12800 draws, or 400
    torch.testing.assert_close(quantiles(lam), quantiles(ref), atol=tol, rtol=0)


def test_defaults_take_the_draws_of_a_mixer_without_settings():
    """prob 1 draws nothing extra, so a seed gives the batches it gave before these settings."""
    assert torch.equal(draws(20), draws(20, lam_mode="sample", fold=True, prob=1.0))


def test_a_batch_skipped_by_prob_draws_nothing_and_trains_plainly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    mm = ManifoldMixer(model, alpha=1.0, prob=0.25, seed=3, verbose=False)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    skipped = 0
    for _ in range(200):
        with mm.batch(x) as xb:
            out = model(xb)
            loss = mm.loss(F.cross_entropy, out, y)
            if mm.mixer.chosen == NO_POINT:
                skipped += 1
                assert not mm.mixed and xb is x
                assert torch.equal(mm.mixer.lam, torch.ones(8))
                assert torch.equal(mm.mixer.perm, torch.arange(8))
                assert torch.equal(loss, F.cross_entropy(out, y))
    assert mm.mixer.skipped_batches == skipped and mm.mixer.unmixed_batches == 0
    assert abs(skipped / 200 - 0.75) < 0.1  # binomial sd 0.03
    assert mm.mixer.batches == 200 and sum(mm.mixer.point_mixes) + mm.mixer.input_mixes == 200 - skipped
    mm.remove()


def test_prob_zero_never_mixes_and_prob_one_always_does():
    for prob, mixing in ((0.0, 0), (1.0, 20)):
        om = OutputMixer(alpha=1.0, prob=prob, seed=0)
        for _ in range(20):
            om.loss(F.cross_entropy, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
        assert om.mixer.point_mixes[0] == mixing and om.mixer.skipped_batches == 20 - mixing


def paper_model():
    "conv1 -> layer1 -> layer2 -> head, the shape of the paper's PreActResNet forward."
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ResBlock(4), ResBlock(4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_the_papers_setting_mixes_and_weighs_as_the_papers_code():
    """alpha 2, one unfolded lam per batch, points {input, layer1, layer2}: the forward is
    the paper's mixup_process at the drawn point, and the loss is the cross-entropy against
    its reweighted one-hot targets (the paper's code takes BCE of the softmax there; see
    docs/family.md)."""
    model = paper_model()
    mm = ManifoldMixer(model, alpha=2.0, modules=[model[1], model[2]], lam_mode="batch",
                       fold=False, seed=1, verbose=False)
    x, y = torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    seen = set()
    for _ in range(30):
        with mm.batch(x) as xb:
            out = model(xb)
            loss = mm.loss(F.cross_entropy, out, y)
            k, lam, perm = mm.mixer.chosen, mm.mixer.lam[0], mm.mixer.perm
        seen.add(k)
        assert torch.equal(mm.mixer.lam, lam.expand(6))
        # mixup_process(out, target_reweighted, lam): out * lam + out[indices] * (1 - lam)
        with torch.no_grad():
            h = x
            h = h * lam + h[perm] * (1 - lam) if k == INPUT_POINT else h
            h = model[0](h)
            for i in (1, 2):
                h = model[i](h)
                if k == i - 1:
                    h = h * lam + h[perm] * (1 - lam)
            ref = model[5](model[4](model[3](h)))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        target = F.one_hot(y, 3).float()
        reweighted = target * lam + target[perm] * (1 - lam)
        torch.testing.assert_close(loss, F.cross_entropy(out, reweighted), rtol=1e-5, atol=1e-6)
    assert seen == {INPUT_POINT, 0, 1}
    mm.remove()


def test_settings_pickle_with_the_mixer():
    m = _C.Mixer(alpha=2.0, seed=5, lam_mode="batch", fold=False, prob=0.5)
    back = pickle.loads(pickle.dumps(m))
    assert (back.lam_mode, back.fold, back.prob, back.seed) == ("batch", False, 0.5, 5)


@pytest.mark.parametrize("bad, error, words", [
    (dict(lam_mode="row"), ValueError, "lam_mode"),
    (dict(fold=1), TypeError, "fold"),
    (dict(prob=1.5), ValueError, "prob"),
    (dict(prob=True), ValueError, "prob"),
])
def test_bad_settings_are_named(bad, error, words):
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(error, match=words):
        ManifoldMixer(model, verbose=False, **bad)
    with pytest.raises(error, match=words):
        OutputMixer(**bad)
    assert type(model[0]) is nn.Linear  # nothing installed


def test_the_fastai_callbacks_take_the_settings():
    from fastai.basics import Callback, CrossEntropyLossFlat, DataLoaders, Learner, set_seed
    from manifold_mixup import DynamicManifoldMixup, ManifoldMixup, OutputMixup
    from small_models import cnn

    class Spy(Callback):
        order = 1  # after the mixing callback's before_batch

        def __init__(self, mixing):
            self.mixing, self.seen = mixing, []

        def after_loss(self):
            if self.training:
                m = self.mixing.mixer
                self.seen.append((m.chosen, m.lam.clone(), m.mixed))

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 6, 6, generator=g), torch.randint(0, 10, (96,), generator=g)
    dls = DataLoaders.from_dsets(list(zip(x[:64], y[:64])), list(zip(x[64:], y[64:])), bs=16)
    for mixing in (ManifoldMixup(alpha=2.0, lam_mode="batch", fold=False, prob=0.5, verbose=False),
                   DynamicManifoldMixup(alpha_min=0.5, alpha_max=2.0, lam_mode="batch", prob=0.5,
                                        verbose=False),
                   OutputMixup(alpha=2.0, lam_mode="batch", fold=False, prob=0.5)):
        set_seed(0)
        spy = Spy(mixing)
        learn = Learner(dls, cnn(), loss_func=CrossEntropyLossFlat(), cbs=[mixing, spy])
        with learn.no_bar(), learn.no_logging():
            learn.fit(3)
        m = mixing.mixer
        assert m.lam_mode == "batch" and m.prob == 0.5 and m.batches == 12
        assert 0 < m.skipped_batches < 12
        assert sum(m.point_mixes) + m.input_mixes + m.skipped_batches == 12
        if isinstance(mixing, OutputMixup):
            continue  # its batch ends inside the loss
        skipped = [s for s in spy.seen if s[0] == NO_POINT]
        assert len(skipped) == m.skipped_batches
        assert all(not mixed and torch.equal(lam, torch.ones_like(lam)) for _, lam, mixed in skipped)
        for chosen, lam, mixed in spy.seen:
            assert torch.equal(lam, lam[:1].expand_as(lam))  # one lam per batch
