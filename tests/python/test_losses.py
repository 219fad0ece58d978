"""The mixed loss of every loss the library knows, against the user's own loss and against the
definition written here in plain torch, element by element:

    sum_e [lam_i * l(y_ie) + (1 - lam_i) * l(y_perm(i)e)] / sum_e [lam_i * w(y_ie) + (1 - lam_i) * w(y_perm(i)e)]

l the loss of one element as torch computes it, w its target's class weight (0 when ignored);
'sum' drops the denominator, 'none' keeps the elements. The batches are mixed by driving the
native Mixer directly: alpha 1e-30 draws lam exactly 1 in float32, alpha 1 a random lam."""
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.basics import Callback, DataLoader, DataLoaders, Learner, set_seed
from fastai.losses import (BCEWithLogitsLossFlat, CrossEntropyLossFlat, L1LossFlat,
                           LabelSmoothingCrossEntropy, LabelSmoothingCrossEntropyFlat, MSELossFlat)
from torch.utils.data import TensorDataset

from manifold_mixup import ManifoldMixup, OutputMixer, OutputMixup, _C
from manifold_mixup.losses import mixed_loss

B, C, H, W = 6, 4, 3, 5
CPU = torch.device("cpu")


def mixed_batch(alpha, seed=0):
    "A native Mixer whose batch of B mixed (at the input), with lam drawn from Beta(alpha, alpha)."
    m = _C.Mixer(alpha=alpha, input_mixup=True, seed=seed)
    assert m.begin_batch(B, CPU) == _C.Mixer.INPUT_POINT
    m.mix_input(torch.zeros(B, 1))
    assert m.mixed
    return m


def unmixed_batch():
    "A batch whose chosen point never ran: it did not mix."
    m = _C.Mixer(alpha=1.0, input_mixup=False, seed=0)
    m.add_point("never_runs")
    assert m.begin_batch(B, CPU) == 0 and not m.mixed
    return m


# -- the configurations -------------------------------------------------------------------------
# Each case: a loss, how to make its prediction from logits, its layout, and the reference's
# parameters (family, weight, ignore_index, smoothing, reduction, fastai's flat axis).

WEIGHT = torch.tensor([0.3, 2.0, 1.0, 4.5])


class Case:
    def __init__(self, name, loss_fn, family, layout="cls", weight=None, ignore=-100, eps=0.0,
                 reduction="mean", flat=False, pred=lambda x: x, ignored_half=False):
        self.name, self.loss_fn, self.family, self.layout = name, loss_fn, family, layout
        self.weight, self.ignore, self.eps, self.reduction = weight, ignore, eps, reduction
        self.flat, self.pred, self.ignored_half = flat, pred, ignored_half

    def data(self, seed=0, dtype=torch.float32):
        "Logits and targets of this case's layout; half of the targets ignored if it says so."
        g = torch.Generator().manual_seed(seed)
        shape = (B, C) if self.layout == "cls" else (B, C, H, W)
        x = torch.randn(shape, generator=g).to(dtype)
        if self.family == "bce":
            return x, (torch.rand(shape, generator=g) > 0.5).float()
        y = torch.randint(0, C, shape[:1] + shape[2:], generator=g)
        if self.ignored_half:
            y.view(-1)[torch.randperm(y.numel(), generator=g)[:y.numel() // 2]] = self.ignore
        return x, y


def _ce_cases():
    out = []
    configs = [("plain", {}, False), ("weight", dict(weight=WEIGHT), False),
               ("ignore", dict(ignore_index=-100), True),
               ("smoothing", dict(label_smoothing=0.2), False),
               ("weight+ignore+smoothing", dict(weight=WEIGHT, ignore_index=-100, label_smoothing=0.1), True)]
    for red in ("mean", "sum", "none"):
        for name, kw, half in configs:
            ref = dict(weight=kw.get("weight"), ignore=kw.get("ignore_index", -100),
                       eps=kw.get("label_smoothing", 0.0), reduction=red, ignored_half=half)
            out.append(Case(f"CrossEntropyLoss[{name},{red}]",
                            nn.CrossEntropyLoss(reduction=red, **kw), "ce", **ref))
            out.append(Case(f"partial(F.cross_entropy)[{name},{red}]",
                            functools.partial(F.cross_entropy, reduction=red, **kw), "ce", **ref))
        seg = dict(weight=WEIGHT, ignore_index=255, label_smoothing=0.1)
        out.append(Case(f"CrossEntropyLoss[segmentation,255,{red}]",
                        nn.CrossEntropyLoss(reduction=red, **seg), "ce", layout="seg",
                        weight=WEIGHT, ignore=255, eps=0.1, reduction=red, ignored_half=True))
        for name, kw, half in configs[:3]:
            ref = dict(weight=kw.get("weight"), ignore=kw.get("ignore_index", -100), reduction=red,
                       ignored_half=half, pred=lambda x: x.log_softmax(1))
            out.append(Case(f"NLLLoss[{name},{red}]", nn.NLLLoss(reduction=red, **kw), "nll", **ref))
            out.append(Case(f"partial(F.nll_loss)[{name},{red}]",
                            functools.partial(F.nll_loss, reduction=red, **kw), "nll", **ref))
        out.append(Case(f"NLLLoss[segmentation,255,{red}]",
                        nn.NLLLoss(weight=WEIGHT, ignore_index=255, reduction=red), "nll",
                        layout="seg", weight=WEIGHT, ignore=255, reduction=red, ignored_half=True,
                        pred=lambda x: x.log_softmax(1)))
    out.append(Case("F.cross_entropy", F.cross_entropy, "ce"))
    out.append(Case("F.cross_entropy[segmentation]", F.cross_entropy, "ce", layout="seg"))
    return out


def _fastai_cases():
    out = []
    for red in ("mean", "sum", "none"):
        out.append(Case(f"CrossEntropyLossFlat[weight,{red}]",
                        CrossEntropyLossFlat(weight=WEIGHT, reduction=red), "ce", weight=WEIGHT,
                        reduction=red, flat=True))
        out.append(Case(f"CrossEntropyLossFlat(axis=1)[segmentation,weight,255,{red}]",
                        CrossEntropyLossFlat(axis=1, weight=WEIGHT, ignore_index=255, reduction=red),
                        "ce", layout="seg", weight=WEIGHT, ignore=255, reduction=red, flat=True,
                        ignored_half=True))
        out.append(Case(f"CrossEntropyLossFlat(axis=1)[segmentation,smoothing,{red}]",
                        CrossEntropyLossFlat(axis=1, label_smoothing=0.2, reduction=red), "ce",
                        layout="seg", eps=0.2, reduction=red, flat=True))
        for name, kw in [("plain", {}), ("weight", dict(weight=WEIGHT))]:
            out.append(Case(f"LabelSmoothingCrossEntropy[{name},{red}]",
                            LabelSmoothingCrossEntropy(eps=0.2, reduction=red, **kw), "fastai_ls",
                            weight=kw.get("weight"), eps=0.2, reduction=red))
        out.append(Case(f"LabelSmoothingCrossEntropy[segmentation,weight,-100,{red}]",
                        LabelSmoothingCrossEntropy(eps=0.1, weight=WEIGHT, reduction=red),
                        "fastai_ls", layout="seg", weight=WEIGHT, eps=0.1, reduction=red,
                        ignored_half=True))
        out.append(Case(f"LabelSmoothingCrossEntropyFlat(axis=1)[segmentation,weight,{red}]",
                        LabelSmoothingCrossEntropyFlat(axis=1, eps=0.1, weight=WEIGHT, reduction=red),
                        "fastai_ls", layout="seg", weight=WEIGHT, eps=0.1, reduction=red, flat=True))
    return out


def _bce_cases():
    out = []
    pos = torch.tensor([1.0, 3.0, 0.5, 2.0])
    for red in ("mean", "sum", "none"):
        out.append(Case(f"BCEWithLogitsLoss[weight,pos_weight,{red}]",
                        nn.BCEWithLogitsLoss(weight=WEIGHT, pos_weight=pos, reduction=red), "bce",
                        weight=(WEIGHT, pos), reduction=red))
        out.append(Case(f"BCELoss[weight,{red}]", nn.BCELoss(weight=WEIGHT, reduction=red), "bce",
                        weight=(WEIGHT, None), reduction=red, pred=torch.sigmoid))
        out.append(Case(f"BCEWithLogitsLossFlat[{red}]", BCEWithLogitsLossFlat(reduction=red), "bce",
                        weight=(None, None), reduction=red, flat=True))
        out.append(Case(f"partial(F.binary_cross_entropy_with_logits)[pos_weight,{red}]",
                        functools.partial(F.binary_cross_entropy_with_logits, pos_weight=pos,
                                          reduction=red), "bce", weight=(None, pos), reduction=red))
    return out


CASES = _ce_cases() + _fastai_cases() + _bce_cases()


# -- the definition, in plain torch --------------------------------------------------------------

def _reduce(num, den, reduction):
    return num if reduction == "none" else num.sum() if reduction == "sum" else num.sum() / den.sum()


def reference(case, logits, y, lam, perm):
    "The mixed loss from the definition, element by element, in float32 (as autocast computes)."
    x = logits.float()
    lam_e = lam.view(-1, *[1] * (y.dim() - 1))
    if case.family == "bce":
        weight, pos = case.weight
        weight = torch.ones(C) if weight is None else weight
        pos = torch.ones(C) if pos is None else pos
        p = torch.sigmoid(x.double()).float() if case.pred is torch.sigmoid else None

        def per_element(t):
            if p is not None:  # BCE of probabilities (torch clamps the logs at -100)
                return -weight * (t * p.log().clamp(min=-100) + (1 - t) * (1 - p).log().clamp(min=-100))
            return -weight * (pos * t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))

        num = lam_e * per_element(y) + (1 - lam_e) * per_element(y[perm])
        if case.flat and case.reduction == "none":
            num = num.reshape(-1)
        return _reduce(num, torch.tensor(float(num.numel())), case.reduction)
    lp = case.pred(x).movedim(1, -1) if case.family == "nll" else x.log_softmax(1).movedim(1, -1)
    w = torch.ones(C) if case.weight is None else case.weight

    def per_element(t):
        kept = t != case.ignore
        tc = t.masked_fill(~kept, 0)
        nll = -lp.gather(-1, tc.unsqueeze(-1)).squeeze(-1) * w[tc] * kept
        if case.family == "fastai_ls":  # its smoothing term is added after the reduction
            return nll, w[tc] * kept
        smooth = -(lp * w).sum(-1) * kept
        return (1 - case.eps) * nll + case.eps / C * smooth, w[tc] * kept

    (l_own, w_own), (l_other, w_other) = per_element(y), per_element(y[perm])
    num = lam_e * l_own + (1 - lam_e) * l_other
    den = lam_e * w_own + (1 - lam_e) * w_other
    if case.flat and case.reduction == "none":  # fastai's rows: class axis swapped with the last
        num = (num.transpose(1, -1) if num.dim() > 1 else num).reshape(-1)
    loss = _reduce(num, den, case.reduction)
    if case.family == "fastai_ls":
        smooth = -lp.sum(-1)
        if case.flat and case.reduction == "none":
            smooth = (smooth.transpose(1, -1) if smooth.dim() > 1 else smooth).reshape(-1)
        smooth = smooth if case.reduction == "none" else smooth.sum() if case.reduction == "sum" \
            else smooth.mean()
        loss = case.eps / C * smooth + (1 - case.eps) * loss
    return loss


def close(a, b):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


# -- the tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lam_one_gives_the_users_loss_and_an_unmixed_batch_gets_it_exactly(case):
    x, y = case.data(seed=1)
    pred = case.pred(x)
    m = mixed_batch(alpha=1e-30)
    assert bool((m.lam == 1.0).all())  # 1e-30 folds to exactly 1 in float32: mixing is the identity
    users = case.loss_fn(pred, y)
    ours = mixed_loss(m, case.loss_fn, pred, (y,))
    assert ours.shape == users.shape
    close(ours, users)
    assert torch.equal(mixed_loss(unmixed_batch(), case.loss_fn, pred, (y,)), users)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_mixed_batch_gets_the_definition_and_its_gradient(case):
    x, y = case.data(seed=2)
    x.requires_grad_(True)
    m = mixed_batch(alpha=1.0, seed=5)
    assert bool((m.lam < 0.999).any())
    ours = mixed_loss(m, case.loss_fn, case.pred(x), (y,))
    expected = reference(case, x, y, m.lam, m.perm)
    close(ours, expected)
    got, = torch.autograd.grad(ours.sum(), x)
    want, = torch.autograd.grad(expected.sum(), x)
    assert got.abs().sum() > 0
    close(got, want)


class Unknown:
    "A loss the library does not know: torch's cross-entropy behind a custom class."

    def __init__(self, reduction, **kwargs):
        self.reduction, self.kwargs = reduction, kwargs

    def __call__(self, x, y):
        return F.cross_entropy(x, y, reduction=self.reduction, **self.kwargs)


@pytest.mark.parametrize("case", [c for c in CASES if c.family == "ce" and not c.flat],
                         ids=lambda c: c.name)
def test_the_fused_path_agrees_with_the_generic_path(case):
    """The fused native path against the generic one (per-sample losses, then the loss's own
    reduction), wherever the generic one is right: 'none', 'sum', and 'mean' when no target is
    weighted or ignored; also against the log-softmax + mixed NLL path, everywhere."""
    x, y = case.data(seed=3)
    x.requires_grad_(True)
    m = mixed_batch(alpha=1.0, seed=6)
    fused = mixed_loss(m, case.loss_fn, x, (y,))
    kw = dict(weight=case.weight, ignore_index=case.ignore, label_smoothing=case.eps)
    if case.reduction != "mean" or (case.weight is None and not case.ignored_half):
        generic = mixed_loss(m, Unknown(case.reduction, **kw), x, (y,))
        close(fused, generic)
        close(*(torch.autograd.grad(loss.sum(), x, retain_graph=True)[0] for loss in (fused, generic)))
    if case.eps == 0:
        nll = mixed_loss(m, nn.NLLLoss(weight=case.weight, ignore_index=case.ignore,
                                       reduction=case.reduction), x.log_softmax(1), (y,))
        close(fused, nll)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_logits_are_mixed_in_float32_as_autocast_does(dtype):
    case = Case("weighted", nn.CrossEntropyLoss(weight=WEIGHT, ignore_index=255, label_smoothing=0.1),
                "ce", layout="seg", weight=WEIGHT, ignore=255, eps=0.1, ignored_half=True)
    x, y = case.data(seed=4, dtype=dtype)
    m = mixed_batch(alpha=1.0, seed=7)
    ours = mixed_loss(m, case.loss_fn, x, (y,))
    assert ours.dtype == torch.float32
    close(ours, reference(case, x, y, m.lam, m.perm))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ones = mixed_batch(alpha=1e-30)
        close(mixed_loss(ones, case.loss_fn, x, (y,)), case.loss_fn(x, y).float())


REGRESSION = {"L1Loss": nn.L1Loss(), "MSELoss(sum)": nn.MSELoss(reduction="sum"),
              "SmoothL1Loss": nn.SmoothL1Loss(beta=0.5), "HuberLoss": nn.HuberLoss(delta=0.7),
              "F.mse_loss": F.mse_loss, "partial(F.l1_loss,sum)": functools.partial(F.l1_loss, reduction="sum"),
              "partial(F.huber_loss)": functools.partial(F.huber_loss, delta=2.0),
              "MSELossFlat": MSELossFlat(), "L1LossFlat": L1LossFlat()}


@pytest.mark.parametrize("loss_fn", REGRESSION.values(), ids=REGRESSION.keys())
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32], ids=str)
def test_a_known_regression_loss_mixes_the_targets_whatever_their_dtype(loss_fn, dtype):
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(B, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (B, 3), generator=g).to(dtype)
    m = mixed_batch(alpha=1.0, seed=9)
    lam = m.lam.double().view(-1, 1)
    y_mixed = lam * y.double() + (1 - lam) * y[m.perm].double()  # floats of the prediction's dtype
    close(mixed_loss(m, loss_fn, pred, (y,)), loss_fn(pred, y_mixed))


def test_output_mixer_refuses_a_known_regression_loss_whatever_the_targets_dtype():
    with pytest.raises(ValueError, match="OutputMixup needs a classification loss"):
        OutputMixer(alpha=1.0).loss(nn.L1Loss(), torch.randn(B, 3), torch.randint(0, 5, (B, 3)))


# -- a fastai Learner ----------------------------------------------------------------------------

class PlainLossOfTheSameForward(Callback):
    "After the mixup callbacks: the loss the Learner records beside the plain loss of its forward."
    order, run_valid = 50, False

    def __init__(self, loss_fn, cb):
        self.loss_fn, self.cb, self.rows = loss_fn, cb, []

    def after_loss(self):
        plain = self.loss_fn(self.learn.pred, *self.learn.yb)
        self.rows.append((self.learn.loss.item(), plain.item()))


def _dls(x, y, bs=16):
    n = len(x) * 3 // 4
    return DataLoaders(DataLoader(TensorDataset(x[:n], y[:n]), bs=bs, shuffle=True, drop_last=True),
                       DataLoader(TensorDataset(x[n:], y[n:]), bs=bs))


def _classification():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, :C] + 0.3 * torch.randn(96, C, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, C))
    return _dls(x, y), model, CrossEntropyLossFlat(weight=WEIGHT)


def _segmentation():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(96, 1, H, W, generator=g)
    y = (x[:, 0] * 1.5 + 1.5).round().clamp(0, C - 1).long()
    y[torch.rand(y.shape, generator=g) < 0.4] = 255  # unlabelled pixels
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, C, 1))
    return _dls(x, y), model, CrossEntropyLossFlat(axis=1, weight=WEIGHT, ignore_index=255)


@pytest.mark.parametrize("task", [_classification, _segmentation], ids=["weighted", "segmentation"])
@pytest.mark.parametrize("cls", [ManifoldMixup, OutputMixup], ids=lambda c: c.__name__)
def test_a_learner_records_the_plain_loss_when_lam_is_one_and_trains(task, cls):
    set_seed(0, reproducible=True)
    dls, model, loss_fn = task()
    cb = cls(alpha=1e-30, verbose=False)
    spy = PlainLossOfTheSameForward(loss_fn, cb)
    learn = Learner(dls, model, loss_func=loss_fn, cbs=[cb, spy])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2)
    mixer = cb.mixer  # every training batch mixed
    assert len(spy.rows) == mixer.batches == sum(mixer.point_mixes) + mixer.input_mixes == 8
    for recorded, plain in spy.rows:
        assert recorded == pytest.approx(plain, rel=1e-5)
    first, last = (sum(r[0] for r in rows) for rows in (spy.rows[:4], spy.rows[4:]))
    assert last < first  # it trains
