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
    for settings in (dict(lam_mode="batch", fold=False, prob=0.5, add_noise=0.4, mult_noise=0.2),
                     dict(patchup="hard", patchup_block=5, patchup_gamma=0.5)):
        m = _C.Mixer(alpha=2.0, seed=5, **settings)
        back = pickle.loads(pickle.dumps(m))
        assert back.seed == 5 and back.settings == m.settings
        assert {k: back.settings[k] for k in settings} == settings


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
                   ManifoldMixup(alpha=2.0, lam_mode="batch", prob=0.5, patchup="hard",
                                 patchup_block=3, verbose=False),
                   ManifoldMixup(alpha=1.0, lam_mode="batch", prob=0.5, add_noise=0.4,
                                 mult_noise=0.2, verbose=False),
                   OutputMixup(alpha=2.0, lam_mode="batch", fold=False, prob=0.5, add_noise=0.1)):
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


# -- PatchUp (Faramarzi et al.; chandar-lab/PatchUp) ---------------------------------------------

def philox_first_words(key, counters):
    """The first 32-bit word of Philox4x32-10 at `counters` (subsequence, offset 0), as
    at::Philox4_32 computes it: the centres' draws, written again here to check them."""
    m32 = (1 << 32) - 1
    key &= (1 << 64) - 1
    c0 = torch.zeros_like(counters)
    c1 = torch.zeros_like(counters)
    c2, c3 = counters & m32, counters >> 32
    k0, k1 = key & m32, key >> 32
    for r in range(10):
        p0, p1 = c0 * 0xD2511F53, c2 * 0xCD9E8D57  # 32 x 32 bits: exact in int64 as unsigned
        hi0, lo0 = (p0 >> 32) & m32, p0 & m32
        hi1, lo1 = (p1 >> 32) & m32, p1 & m32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return c0


def test_the_reference_philox_is_random123s():
    # Random123's known answer for philox4x32_10, counter 0 and key 0: first word 0x6627e8d5.
    assert philox_first_words(0, torch.zeros(1, dtype=torch.int64)).item() == 0x6627E8D5


def papers_mask(key, shape, block, gamma):
    """PatchUp's holes as the authors' code makes them from its Bernoulli centres:
    F.max_pool2d(m, block, stride 1, padding block // 2) with gamma adjusted by adjust_gamma
    (here for H != W too); the centres are Philox draws below p * 2^32."""
    c, h, w = shape
    k = min(block, h, w)
    k -= 1 - k % 2
    p = min(1.0, gamma * h * w / (k ** 2 * (h - k + 1) * (w - k + 1)))
    draws = philox_first_words(key, torch.arange(c * h * w, dtype=torch.int64))
    centres = (draws < int(p * 2 ** 32)).double().view(1, c, h, w)
    return F.max_pool2d(centres, k, 1, k // 2)[0], centres, p


def papers_patchup(x, perm, lam, holes, hard):
    "The authors' combining step: unchanged + patches, patches mixed (soft) or swapped (hard)."
    x = x.double()
    patches = holes * x
    patches = patches[perm] if hard else patches * lam.view(-1, 1, 1, 1) + patches[perm] * (1 - lam.view(-1, 1, 1, 1))
    return (1 - holes) * x + patches


@pytest.mark.parametrize("shape, block", [((4, 3, 9, 9), 3), ((5, 2, 7, 11), 5), ((3, 4, 4, 6), 7),
                                          ((2, 16, 32, 32), 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_patchup_op_is_the_papers_expression(shape, block, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype)
    perm = torch.randperm(shape[0], generator=g)
    lam = torch.rand(shape[0], generator=g)
    lam[0] = 1.0  # a row that does not mix is a copy
    for key, gamma, hard in ((12345, 0.9, False), (-7, 0.5, True), (2 ** 40 + 3, 0.75, False)):
        weights = torch.zeros_like(lam) if hard else lam
        out, mask = torch.ops.manifold_mixup.patchup(x, perm, weights, torch.tensor(key), block, gamma)
        holes, centres, p = papers_mask(key, shape[1:], block, gamma)
        assert torch.equal(mask.double(), holes) and mask.dtype == dtype
        assert 0 < holes.mean() < 1
        tol = {torch.bfloat16: 1e-2}.get(dtype, 1e-6)
        torch.testing.assert_close(out.double(), papers_patchup(x, perm, weights, holes, hard),
                                   rtol=tol, atol=tol)
        if not hard:
            assert torch.equal(out[0], x[0])
    # the centres are Bernoulli(p): on 16 x 32 x 32 features, within 4 standard deviations
    if shape[1:] == (16, 32, 32):
        n = centres.numel()
        assert abs(centres.mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5


def test_patchup_opcheck_gradcheck_and_refusals():
    from torch.library import opcheck
    g = torch.Generator().manual_seed(0)
    op = torch.ops.manifold_mixup.patchup.default
    perm, key = torch.tensor([2, 0, 3, 1]), torch.tensor(99)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(4, 3, 5, 6, generator=g).to(dtype)
        for xg, lg in ((False, False), (True, False), (True, True)):
            opcheck(op, (x.clone().requires_grad_(xg), perm,
                         torch.rand(4, generator=g).to(dtype if lg else torch.float32).requires_grad_(lg),
                         key, 3, 0.8))
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(4, dtype=torch.float64, requires_grad=True)
    fn = lambda a, l: op(a, perm, l, key, 3, 0.7)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, lam))
    assert torch.autograd.gradgradcheck(fn, (x, lam))
    good = (torch.randn(4, 2, 5, 5), perm, torch.rand(4), key, 3, 0.5)
    for i, bad, words in ((0, torch.randn(4, 10), "x must be"), (1, perm.int(), "perm must"),
                          (2, torch.rand(3), "lam must"), (3, torch.tensor([1, 2]), "key must"),
                          (4, 4, "block_size must be an odd"), (5, 1.5, "gamma")):
        args = list(good)
        args[i] = bad
        with pytest.raises(RuntimeError, match=words):
            op(*args)
    with pytest.raises(RuntimeError, match=r"perm must hold indices"):
        op(good[0], torch.tensor([0, 1, 2, 9]), *good[2:])


def papers_patchup_loss(out, y, perm, lam, changed, hard, classes=3):
    """main.py's PatchUp loss (loss_alpha = loss_beta = 1): BCE of the softmax against
    target_a weighted by the unchanged portion, target_b by the changed one, plus BCE against
    target_reweighted."""
    bce, p = nn.BCELoss(), F.softmax(out, 1)
    a = F.one_hot(y, classes).double()
    shuffled = a[perm]
    unchanged = 1 - changed
    if hard:
        reweighted, b = unchanged * a + changed * shuffled, shuffled
    else:
        reweighted = unchanged * a + lam * changed * a + shuffled * (1 - lam) * changed
        b = lam * a + (1 - lam) * shuffled
    return bce(p, a) * unchanged + bce(p, b) * (1 - unchanged) + bce(p, reweighted)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_patchup_mixes_and_weighs_the_loss_as_the_papers_code(mode):
    """At a feature map the mixer's forward is the authors' PatchUp with the batch's mask, and
    the target weight w it gives the loss is the authors': their loss is exactly twice the BCE of
    the softmax against w y + (1 - w) y[perm] (BCE is linear in the target), and ours is the
    user's loss against the same mixture (docs/family.md says why the factor 2 goes)."""
    model = paper_model()
    mm = ManifoldMixer(model, alpha=2.0, modules=[model[1], model[2]], lam_mode="batch",
                       fold=False, patchup=mode, patchup_block=3, patchup_gamma=0.6, seed=2,
                       input_mixup=False, verbose=False)
    x, y = torch.randn(6, 1, 7, 7, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    model.double()
    for _ in range(6):
        with mm.batch(x) as xb:
            out = model(xb)
            loss = mm.loss(F.cross_entropy, out, y)
            k, lam, perm, key = mm.mixer.chosen, mm.mixer.lam, mm.mixer.perm, mm.mixer.key
            w = mm.mixer.target_weights
        with torch.no_grad():
            h = model[0](x)
            for i in (1, 2):
                h = model[i](h)
                if k == i - 1:
                    holes = papers_mask(key.item(), h.shape[1:], 3, 0.6)[0]
                    h = papers_patchup(h, perm, lam.double(), holes, mode == "hard")
            ref = model[5](model[4](model[3](h)))
        torch.testing.assert_close(out, ref)
        changed = holes.mean().item()
        assert torch.equal(lam, torch.zeros(6) if mode == "hard" else lam[:1].expand(6))
        torch.testing.assert_close(w.double(), 1 - changed * (1 - lam.double()))
        target = F.one_hot(y, 3).double()
        mixture = w.double().view(-1, 1) * target + (1 - w.double().view(-1, 1)) * target[perm]
        torch.testing.assert_close(papers_patchup_loss(out, y, perm, lam[0].double(), changed, mode == "hard"),
                                   2 * nn.BCELoss()(F.softmax(out, 1), mixture))
        torch.testing.assert_close(loss, F.cross_entropy(out, mixture))
    mm.remove()


def test_patchup_leaves_out_what_is_not_a_feature_map_and_compiles_like_eager():
    import torch._dynamo as dynamo

    def run(compiled):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ResBlock(4), nn.Flatten(),
                              nn.Linear(4 * 25, 8), nn.Linear(8, 3))
        call = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        lines = []
        mm = ManifoldMixer(call, alpha=1.0, modules=[model[1], model[3]], patchup="soft",
                           patchup_block=3, seed=4, verbose=lines.append)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for step in range(8):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(6, 1, 5, 5, generator=g), torch.randint(0, 3, (6,), generator=g)
            with mm.batch(x) as xb:
                loss = mm.loss(F.cross_entropy, call(xb), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert mm.point_names == ["1"] and "not one" in " ".join(lines)  # the Linear's [B, 8]
        return losses, mm.mixer.point_mixes + [mm.mixer.input_mixes]

    eager = run(False)
    assert sum(eager[1]) == 8  # every batch mixed, at the block or at the input image
    dynamo.reset()
    dynamo.utils.counters.clear()
    assert run(True) == (pytest.approx(eager[0], rel=1e-5), eager[1])
    assert not dynamo.utils.counters["graph_break"]


def test_patchup_leaves_a_non_image_input_out():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.warns(UserWarning, match="PatchUp"):
        mm = ManifoldMixer(model, patchup="hard", verbose=lambda line: None, modules=[model[0]])
        with mm.batch(torch.randn(3, 4)):
            model(torch.randn(3, 4))
    assert not mm.mixer.input_mixup


# -- Noisy Feature Mixup (Lim et al.; erichson/NFM) ------------------------------------------------

def philox_words(key, counters):
    "All four words of Philox4x32-10 at `counters` (as philox_first_words)."
    m32 = (1 << 32) - 1
    key &= (1 << 64) - 1
    c0, c1 = torch.zeros_like(counters), torch.zeros_like(counters)
    c2, c3 = counters & m32, counters >> 32
    k0, k1 = key & m32, key >> 32
    for _ in range(10):
        p0, p1 = c0 * 0xD2511F53, c2 * 0xCD9E8D57
        c0, c1, c2, c3 = ((p1 >> 32) & m32) ^ c1 ^ k0, p1 & m32, ((p0 >> 32) & m32) ^ c3 ^ k1, p0 & m32
        k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
    return c0, c1, c2, c3


def our_draws(key, n):
    """The noise of elements 0..n-1 as docs/family.md defines it: Philox at counter e // 2,
    Box-Muller of its first two words for the normals, its last two words for the uniforms."""
    w0, w1, w2, w3 = philox_words(key, torch.arange((n + 1) // 2, dtype=torch.int64))
    unit = 2.0 ** -24
    u1 = ((w0 >> 8) + 1).float() * unit
    angle = (w1 >> 8).float() * unit * 6.2831853071795864769
    radius = torch.sqrt(-2 * torch.log(u1))
    normal = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1).flatten()[:n]
    uniform = torch.stack([(w2 >> 8).float(), (w3 >> 8).float()], 1).flatten()[:n] * (2 * unit) - 1
    return normal, uniform


def nfm_noise(mixed_x, add_level, mult_level, normal, uniform):
    "The authors' _noise with their draws replaced by ours (levels already times Beta(2, 5))."
    add_noise = add_level * normal.view_as(mixed_x)
    mult_noise = mult_level * (uniform.view_as(mixed_x)) + 1
    return mult_noise * mixed_x + add_noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_noise_is_nfms_expression_with_our_draws(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 5, 7, generator=g).to(dtype)
    perm, lam = torch.randperm(6, generator=g), torch.rand(6, generator=g)
    lam[1] = 1.0  # a row that does not mix still gets the noise
    for key, levels in ((5, (0.4, 0.2)), (-(2 ** 62), (0.0, 0.3)), (2 ** 33 + 1, (0.25, 0.0))):
        noise = torch.tensor(levels)
        out = torch.ops.manifold_mixup.mix(x, perm, lam, noise, torch.tensor(key))
        normal, uniform = our_draws(key, x.numel())
        mixed_x = lam.double().view(-1, 1, 1, 1) * x.double() + (1 - lam.double().view(-1, 1, 1, 1)) * x.double()[perm]
        ref = nfm_noise(mixed_x, *levels, normal.double(), uniform.double())
        tol = {torch.bfloat16: 2e-2}.get(dtype, 2e-6)
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    # levels (0, 0): exactly mix, a copy where lam is 1
    plain = torch.ops.manifold_mixup.mix(x, perm, lam)
    assert torch.equal(torch.ops.manifold_mixup.mix(x, perm, lam, torch.zeros(2), torch.tensor(1)), plain)


def test_the_draws_follow_nfms_laws():
    "N(0, 1) and U(-1, 1) per element, against torch's own samplers, on 2^18 elements."
    normal, uniform = our_draws(12345, 1 << 18)
    torch.testing.assert_close(quantiles(normal), quantiles(torch.randn(1 << 18)), atol=0.02, rtol=0)
    torch.testing.assert_close(quantiles(uniform), quantiles(2 * torch.rand(1 << 18) - 1), atol=0.01, rtol=0)
    assert uniform.min() >= -1 and uniform.max() < 1 and torch.isfinite(normal).all()


def test_noisy_mix_opcheck_gradcheck_and_refusals():
    from torch.library import opcheck
    op = torch.ops.manifold_mixup.mix.default
    perm, key = torch.tensor([2, 0, 3, 1]), torch.tensor(7)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(4, 3, 5).to(dtype)
        for xg, lg in ((False, False), (True, False), (True, True)):
            opcheck(op, (x.clone().requires_grad_(xg), perm,
                         torch.rand(4).to(dtype if lg else torch.float32).requires_grad_(lg),
                         torch.tensor([0.4, 0.2]), key))
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(4, dtype=torch.float64, requires_grad=True)
    fn = lambda a, l: op(a, perm, l, torch.tensor([0.4, 0.2], dtype=torch.float64), key)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, lam)) and torch.autograd.gradgradcheck(fn, (x, lam))
    # channels_last in, contiguous out: the draws follow the logical order
    xc = torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last)
    noise, lam = torch.tensor([0.4, 0.2]), torch.rand(4)
    assert torch.equal(op(xc, perm, lam, noise, key), op(xc.contiguous(), perm, lam, noise, key))
    for bad, words in (((torch.tensor([0.4]), key), "noise must"), ((noise, None), "both or neither"),
                       ((noise, torch.tensor([1, 2])), "key must")):
        with pytest.raises(RuntimeError, match=words):
            op(xc, perm, lam, *bad)


def test_the_mixer_draws_nfms_levels_and_runs_repeat():
    """Each batch that mixes takes s_a, s_m ~ Beta(2, 5) (the authors' np.random.beta(2, 5)), times
    the levels; a seed repeats every draw; a skipped batch has none."""
    m = _C.Mixer(alpha=1.0, seed=9, add_noise=0.4, mult_noise=0.2, prob=0.5)
    m.add_point("p")
    levels = []
    for _ in range(2000):
        m.begin_batch(4, torch.device("cpu"))
        if m.chosen == NO_POINT:
            assert torch.equal(m.noise, torch.zeros(2))
        else:
            levels.append(m.noise / torch.tensor([0.4, 0.2]))
        m.end_batch()
    s = torch.stack(levels)
    ref = torch.distributions.Beta(2.0, 5.0).sample((100_000,))
    for column in (s[:, 0], s[:, 1]):  # about 1000 draws: quantiles within 0.04 (4 sd)
        torch.testing.assert_close(quantiles(column), quantiles(ref), atol=0.04, rtol=0)
    a, b = (_C.Mixer(alpha=1.0, seed=9, add_noise=0.4, mult_noise=0.2) for _ in range(2))
    for m in (a, b):
        m.begin_batch(4, torch.device("cpu"))
    x = torch.randn(4, 6)
    assert torch.equal(a.mix(x), b.mix(x)) and not torch.equal(a.mix(x), torch.ops.manifold_mixup.mix(x, a.perm, a.lam))


def test_nfm_trains_like_the_authors_forward_and_compiles_like_eager():
    """The drawn point's output is NFM's noisy mix of it (the op with the batch's levels and key);
    compiled, every other point stays exactly its output, and the losses match eager's."""
    import torch._dynamo as dynamo

    def run(compiled):
        model = paper_model()
        call = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        mm = ManifoldMixer(call, alpha=1.0, modules=[model[1], model[2]], add_noise=0.4,
                           mult_noise=0.2, seed=5, verbose=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        for step in range(6):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(6, 1, 5, 5, generator=g), torch.randint(0, 3, (6,), generator=g)
            with mm.batch(x) as xb:
                out = call(xb)
                loss = mm.loss(F.cross_entropy, out, y)
                k, lam, perm = mm.mixer.chosen, mm.mixer.lam, mm.mixer.perm
                noise, key = mm.mixer.noise, mm.mixer.key
            if not compiled:
                with torch.no_grad():
                    h = x if k != INPUT_POINT else torch.ops.manifold_mixup.mix(x, perm, lam, noise, key)
                    h = model[0](h)
                    for i in (1, 2):
                        h = model[i](h)
                        if k == i - 1:
                            h = torch.ops.manifold_mixup.mix(h, perm, lam, noise, key)
                    torch.testing.assert_close(out, model[5](model[4](model[3](h))))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, mm.mixer.point_mixes + [mm.mixer.input_mixes]

    eager = run(False)
    dynamo.reset()
    dynamo.utils.counters.clear()
    assert run(True) == (pytest.approx(eager[0], rel=1e-5), eager[1])
    assert not dynamo.utils.counters["graph_break"]


def test_noise_and_patchup_do_not_go_together_and_levels_are_checked():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="do not go with patchup"):
        ManifoldMixer(model, add_noise=0.4, patchup="soft", verbose=False)
    for bad in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match="add_noise"):
            OutputMixer(add_noise=bad)
    with pytest.raises(RuntimeError, match="do not go with PatchUp"):
        _C.Mixer(mult_noise=0.2, patchup="hard")


# -- on CUDA (where torch sees a GPU; scripts/gpu-check.sh runs them) ------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@cuda
def test_cuda_draws_the_cpus_mask_and_noise():
    from torch.library import opcheck
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 13, 13, generator=g)
    perm, lam, key = torch.randperm(8, generator=g), torch.rand(8, generator=g), torch.tensor(321)
    lam[2] = 1.0
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        xc = x.to(dtype)
        out, mask = torch.ops.manifold_mixup.patchup(xc, perm, lam, key, 5, 0.8)
        out_g, mask_g = torch.ops.manifold_mixup.patchup(xc.cuda(), perm.cuda(), lam.cuda(), key.cuda(), 5, 0.8)
        assert torch.equal(mask_g.cpu(), mask) and torch.equal(out_g[2].cpu(), xc[2])
        torch.testing.assert_close(out_g.cpu(), out)
        noise = torch.tensor([0.4, 0.2])
        mixed = torch.ops.manifold_mixup.mix(xc, perm, lam, noise, key)
        mixed_g = torch.ops.manifold_mixup.mix(xc.cuda(), perm.cuda(), lam.cuda(), noise.cuda(), key.cuda())
        torch.testing.assert_close(mixed_g.cpu(), mixed, rtol=1e-4, atol=1e-5)
        zero = torch.ops.manifold_mixup.mix(xc.cuda(), perm.cuda(), lam.cuda(), torch.zeros(2, device="cuda"),
                                            key.cuda())
        assert torch.equal(zero, torch.ops.manifold_mixup.mix(xc.cuda(), perm.cuda(), lam.cuda()))
    xs = x.cuda().requires_grad_()
    ls = lam.cuda().requires_grad_()
    opcheck(torch.ops.manifold_mixup.patchup.default, (xs, perm.cuda(), ls, key.cuda(), 5, 0.8))
    opcheck(torch.ops.manifold_mixup.mix.default, (xs, perm.cuda(), ls, torch.tensor([0.4, 0.2], device="cuda"),
                                                   key.cuda()))
    xd = x[:4, :2, :6, :6].double().cuda().requires_grad_()
    ld = torch.rand(4, dtype=torch.float64, device="cuda", requires_grad=True)
    p4, k = torch.tensor([1, 3, 0, 2], device="cuda"), key.cuda()
    assert torch.autograd.gradcheck(lambda a, l: torch.ops.manifold_mixup.patchup(a, p4, l, k, 3, 0.7)[0], (xd, ld))
    noise = torch.tensor([0.4, 0.2], dtype=torch.float64, device="cuda")
    assert torch.autograd.gradcheck(lambda a, l: torch.ops.manifold_mixup.mix(a, p4, l, noise, k), (xd, ld))


@cuda
def test_cuda_training_steps_with_noise_and_patchup():
    for settings in (dict(add_noise=0.4, mult_noise=0.2), dict(patchup="soft", patchup_block=3),
                     dict(patchup="hard", patchup_block=3, prob=0.7)):
        model = paper_model().cuda()
        mm = ManifoldMixer(model, alpha=2.0, modules=[model[1], model[2]], seed=0, verbose=False,
                           **settings)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(4):
            x, y = torch.randn(6, 1, 5, 5, device="cuda"), torch.randint(0, 3, (6,), device="cuda")
            with mm.batch(x) as xb:
                loss = mm.loss(F.cross_entropy, model(xb), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
        assert sum(mm.mixer.point_mixes) + mm.mixer.input_mixes + mm.mixer.skipped_batches == 4
        mm.remove()


@pytest.mark.parametrize("settings", [dict(add_noise=0.4, mult_noise=0.2), dict(patchup="soft", patchup_block=3)],
                         ids=["nfm", "patchup"])
def test_a_checkpointed_point_recomputes_the_same_noise_and_mask(settings):
    "The key replays with lam and perm: the gradients equal the un-checkpointed model's."
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self, ckpt):
            super().__init__()
            torch.manual_seed(0)
            self.stem, self.blocks = nn.Conv2d(1, 4, 3, padding=1), nn.ModuleList([ResBlock(4), ResBlock(4)])
            self.head, self.ckpt = nn.Linear(4, 3), ckpt

        def forward(self, x):
            h = self.stem(x)
            for b in self.blocks:
                h = checkpoint(b, h, use_reentrant=False) if self.ckpt else b(h)
            return self.head(h.mean((2, 3)))

    ref, net = Net(False), Net(True)
    mms = [ManifoldMixer(m, alpha=1.0, seed=5, input_mixup=False, verbose=False, **settings)
           for m in (ref, net)]
    for step in range(6):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(6, 1, 5, 5, generator=g), torch.randint(0, 3, (6,), generator=g)
        grads = []
        for m, mm in zip((ref, net), mms):
            m.zero_grad()
            with mm.batch(x) as xb:
                loss = mm.loss(F.cross_entropy, m(xb), y)
            loss.backward()
            grads.append([p.grad.clone() for p in m.parameters()])
        for g_ref, g_net in zip(*grads):
            torch.testing.assert_close(g_net, g_ref, rtol=1e-5, atol=1e-6)
    assert sum(mms[1].mixer.point_mixes) == 6
