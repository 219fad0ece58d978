"""The fastai callbacks with a real fastai Learner on small data (sklearn digits), on CPU."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.basics import (CancelFitException, Callback, CrossEntropyLossFlat, Datasets, Learner, MSELossFlat, accuracy, load_learner, set_seed)
import fastai.callback.fp16  # noqa: F401  (adds Learner.to_fp16, to_bf16)
from fastai.callback.schedule import SchedCos, SchedLin, SchedPoly  # also adds fit_one_cycle, lr_find
from sklearn.datasets import load_digits

from manifold_mixup import (DynamicManifoldMixup, DynamicOutputMixup, ManifoldMixup,
                            OutputMixup)
from small_models import ResBlock, cnn, mixup_traces


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    return x[:384], torch.tensor(d.target)[:384]


class Lookup:
    "Item transform i -> t[i] (a class, so that learn.export() can pickle the data pipeline)."

    def __init__(self, t):
        self.t = t

    def __call__(self, i):
        return self.t[i]


def make_dls(x, y, bs=32, n_train=256):
    splits = [list(range(n_train)), list(range(n_train, len(x)))]
    return Datasets(range(len(x)), tfms=[[Lookup(x)], [Lookup(y)]], splits=splits).dataloaders(bs=bs)


@pytest.fixture
def dls(digits):
    return make_dls(*digits)


def learner(dls, cbs=(), model=None, loss=None):
    set_seed(0, reproducible=True)
    return Learner(dls, model or cnn(), loss_func=loss or CrossEntropyLossFlat(), metrics=accuracy,
                   cbs=list(cbs))


def hooks_left(model):
    return mixup_traces(model)


ALL = [ManifoldMixup, OutputMixup, DynamicManifoldMixup, DynamicOutputMixup]


class Spy(Callback):
    "Runs after the mixup callbacks; records each batch's draw once the loss is computed."
    order, run_valid = 50, False

    def __init__(self, cb):
        self.cb, self.rows = cb, []

    def after_loss(self):
        m = self.cb.mixer
        self.rows.append(dict(pct=self.pct_train, alpha=m.alpha, lam=m.lam.clone(),
                              perm=m.perm.clone(), yb=[y.clone() for y in self.yb],
                              pred=self.pred.detach().clone(), loss=self.loss.item(),
                              mixed=m.mixed, chosen=m.chosen))


class CancelAt(Callback):
    "Cancels the fit at the given training iteration."
    order, run_valid = 60, False

    def __init__(self, it):
        self.it = it

    def after_batch(self):
        if self.iter == self.it:
            raise CancelFitException()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_callback_fits_restores_loss_and_leaves_no_hook(dls, cls):
    cb = cls()
    learn = learner(dls, [cb])
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 3e-3)
    assert learn.loss_func is original
    assert hooks_left(learn.model) == 0
    assert not cb.mixer.in_batch
    assert getattr(learn, cb.name) is cb  # fastai's naming: learn.manifold_mixup, ...
    assert cb.name == {"ManifoldMixup": "manifold_mixup", "OutputMixup": "output_mixup",
                       "DynamicManifoldMixup": "dynamic_manifold_mixup",
                       "DynamicOutputMixup": "dynamic_output_mixup"}[cls.__name__]
    assert all(torch.isfinite(torch.tensor(v[:2])).all() for v in learn.recorder.values)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_validation_and_predictions_are_the_plain_models(dls, cls):
    learn = learner(dls, [cls(alpha=1.0) if "Dynamic" not in cls.__name__ else cls(alpha_min=1.0)])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
        plain = learner(dls, model=copy.deepcopy(learn.model))
        assert list(learn.validate()) == pytest.approx(list(plain.validate()), rel=1e-6)
        preds, _ = learn.get_preds()
        plain_preds, _ = plain.get_preds()
    torch.testing.assert_close(preds, plain_preds)
    x, _ = dls.valid.one_batch()
    learn.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(F.softmax(learn.model(x), 1), preds[: len(x)])


@pytest.mark.parametrize("cls", [ManifoldMixup, OutputMixup])
def test_cancelled_fit_restores_loss_and_removes_hooks(dls, cls):
    cb = cls(alpha=1.0)
    learn = learner(dls, [cb, CancelAt(2)])
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 3e-3)
    assert learn.train_iter == 3  # cancelled after three batches
    assert learn.loss_func is original and hooks_left(learn.model) == 0
    assert not cb.mixer.in_batch


def test_exactly_one_point_mixes_per_training_batch(dls):
    cb = ManifoldMixup(alpha=0.4)
    learn = learner(dls, [cb])
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 3e-3)
    n_batches = 3 * len(dls.train)
    assert cb.mixer.batches == n_batches
    assert sum(cb.mixer.point_mixes) + cb.mixer.input_mixes == n_batches
    assert all(c > 0 for c in cb.mixer.point_mixes) and cb.mixer.input_mixes > 0
    assert [type(m) for m in cb.module_list] == [ResBlock, ResBlock]


def test_mixing_changes_the_chosen_module_output_only(dls):
    "With a point chosen, that module's output is lam*h + (1-lam)*h[perm]; the input is not."
    model = cnn()
    block = model[2]
    cb = ManifoldMixup(alpha=1.0, use_input_mixup=False, module_list=[block])
    seen = {}

    class Probe(Callback):
        order, run_valid = 50, False

        def before_batch(self):
            self.h = block.register_forward_hook(lambda m, i, o: seen.update(out=o, inp=i[0]))

        def after_pred(self):
            self.h.remove()

    learn = learner(dls, [cb, Probe()], model=model)
    x, _ = dls.train.one_batch()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 0.0)  # lr 0: weights stay, so the block can be recomputed
    # Our hook runs first (it is prepended), so Probe's sees the mixed output.
    block.eval(); block.train()
    lam, perm = cb.mixer.lam, cb.mixer.perm
    with torch.no_grad():
        h = block(seen["inp"])
        expected = lam.view(-1, 1, 1, 1) * h + (1 - lam.view(-1, 1, 1, 1)) * h[perm]
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


def test_alpha_zero_means_no_mixing_for_every_callback(dls):
    for cb in (ManifoldMixup(alpha=0), OutputMixup(alpha=0),
               DynamicManifoldMixup(alpha_min=0, alpha_max=0),
               DynamicOutputMixup(alpha_min=0, alpha_max=0)):
        learn = learner(dls, [cb])
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 3e-3)
        assert sum(cb.mixer.point_mixes) + getattr(cb.mixer, "input_mixes", 0) == 0, type(cb)


@pytest.mark.parametrize("sched", [SchedLin, SchedCos, SchedPoly], ids=["lin", "cos", "poly"])
def test_alpha_follows_the_scheduler(dls, sched):
    if sched is SchedPoly:
        sched = lambda a, b: SchedPoly(a, b, 2.0)  # noqa: E731
    cb = DynamicManifoldMixup(alpha_min=0.1, alpha_max=0.9, scheduler=sched)
    spy = Spy(cb)
    learn = learner(dls, [cb, spy])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 3e-3)
    f = sched(0.1, 0.9)
    pcts = [r["pct"] for r in spy.rows]
    assert pcts[0] == 0 and 0.9 < pcts[-1] < 1
    for r in spy.rows:
        assert r["alpha"] == pytest.approx(float(f(r["pct"])))
    assert spy.rows[0]["alpha"] == pytest.approx(0.1)


def test_schedule_starting_at_zero_does_not_crash_and_skips_mixing_there(dls):
    cb = DynamicOutputMixup(alpha_min=0.0, alpha_max=0.6, scheduler=SchedCos)
    spy = Spy(cb)
    learn = learner(dls, [cb, spy])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    assert spy.rows[0]["alpha"] == 0
    assert torch.equal(spy.rows[0]["lam"], torch.ones_like(spy.rows[0]["lam"]))
    assert sum(cb.mixer.point_mixes) == len(dls.train) - 1


def test_dynamic_refuses_alpha_and_names_alpha_max():
    for cls in (DynamicManifoldMixup, DynamicOutputMixup):
        with pytest.raises(TypeError, match="alpha_max"):
            cls(alpha=0.5)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_alpha_is_refused(bad):
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        ManifoldMixup(alpha=bad)
    with pytest.raises(ValueError, match="alpha_max must be"):
        DynamicManifoldMixup(alpha_max=bad)


def test_output_mixup_refuses_regression(digits):
    x, y = digits
    dls = make_dls(x, y.float()[:, None])
    learn = Learner(dls, cnn(n_out=1), loss_func=MSELossFlat(), cbs=[OutputMixup()])
    with pytest.raises(ValueError, match="OutputMixup needs a classification loss"):
        with learn.no_bar(), learn.no_logging():
            learn.fit(1)


def test_regression_targets_are_mixed_inside_the_loss(digits):
    "Regression: the loss is that of the mixed targets, mixed after the forward; yb stays plain."
    x, y = digits
    dls = make_dls(x, y.float()[:, None])
    cb = ManifoldMixup(alpha=1.0)
    spy = Spy(cb)
    learn = Learner(dls, cnn(n_out=1), loss_func=MSELossFlat(), cbs=[cb, spy])
    original_targets = []

    class Before(Callback):
        order, run_valid = -5, False

        def before_batch(self):
            original_targets.append(self.yb[0].clone())

    learn.add_cb(Before())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert learn.loss_func.__class__.__name__ == "BaseLoss"  # restored after the fit
    assert len(spy.rows) == len(dls.train) and all(r["mixed"] for r in spy.rows)
    for y0, r in zip(original_targets, spy.rows):
        assert torch.equal(r["yb"][0], y0)
        lam = r["lam"].view(-1, 1)
        mixed = lam * y0 + (1 - lam) * y0[r["perm"]]
        assert r["loss"] == pytest.approx(F.mse_loss(r["pred"], mixed).item(), rel=1e-5)


def test_same_seed_same_run(digits):
    def run():
        set_seed(0, reproducible=True)
        learn = learner(make_dls(*digits), [ManifoldMixup()])
        with learn.no_bar(), learn.no_logging():
            learn.fit(2, 3e-3)
        return learn.recorder.values

    assert run() == run()


# --- workflows reported broken with mixup callbacks -----------------------------------------

@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("precision", ["to_fp16", "to_bf16"])
def test_mixed_precision(dls, cls, precision):
    cb = cls()
    learn = getattr(learner(dls, [cb]), precision)()
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # autocast on CPU may warn about fp16
        learn.fit(1, 3e-3)
    assert sum(cb.mixer.point_mixes) + cb.mixer.input_mixes > 0
    assert all(torch.isfinite(torch.tensor(learn.recorder.values[-1][:2])))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_lr_find_fit_one_cycle_get_preds_then_fit_again_and_reuse(dls, cls):
    cb = cls()
    learn = learner(dls, [cb])
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        suggestion = learn.lr_find(num_it=10, show_plot=False)
        assert suggestion.valley > 0
        assert learn.loss_func is original and hooks_left(learn.model) == 0
        learn.fit_one_cycle(1, 3e-3)
        learn.get_preds()
        learn.fit(1, 1e-3)
        first = cb.mixer
        learn.fit(1, 1e-3)  # the same callback object, a second fit
    assert cb.mixer is not first and cb.mixer.batches == len(dls.train)
    assert learn.loss_func is original and hooks_left(learn.model) == 0


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_export_then_load_learner(dls, cls, tmp_path):
    learn = learner(dls, [cls()])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    learn.path = tmp_path
    learn.export("model.pkl")
    loaded = load_learner(tmp_path / "model.pkl")
    x, _ = dls.valid.one_batch()
    learn.model.eval(), loaded.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), learn.model(x))
    cb = getattr(loaded, cls().name)
    assert isinstance(cb, cls) and cb.mixer is None
    loaded.dls = dls
    with loaded.no_bar(), loaded.no_logging():
        loaded.fit(1, 1e-3)  # the loaded callback builds its native state again
    assert cb.mixer.batches == len(dls.train)


def test_a_fit_that_raises_leaves_a_harmless_loss_that_the_next_fit_restores(dls):
    class Boom(Callback):
        order, run_valid = 60, False

        def after_batch(self):
            if self.iter == 1:
                raise RuntimeError("boom")

    cb = ManifoldMixup(alpha=1.0)
    learn = learner(dls, [cb])
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        with pytest.raises(RuntimeError, match="boom"):
            learn.fit(1, 3e-3, cbs=[Boom()])
        x, y = dls.valid.one_batch()
        learn.model.eval()
        with torch.no_grad():
            pred = learn.model(x)
            assert torch.equal(learn.loss_func(pred, y), original(pred, y))
        learn.fit(1, 3e-3)
    assert learn.loss_func is original and hooks_left(learn.model) == 0
    assert sum(cb.mixer.point_mixes) + cb.mixer.input_mixes == len(dls.train)


# --- runtime: whatever raises, whatever the loss, whatever else is in cbs ----------------------

class RaiseAt(nn.Module):
    "Identity that raises `exc` at its n-th training call (a layer interrupted mid-forward)."

    def __init__(self, exc, at):
        super().__init__()
        self.exc, self.at, self.calls = exc, at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise self.exc
        return x


def cnn_raising(exc, at):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), ResBlock(8), RaiseAt(exc, at),
                         ResBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_cancel_epoch_mid_batch_then_the_next_epoch_trains(dls):
    from fastai.basics import CancelEpochException
    cb = ManifoldMixup(alpha=1.0)
    learn = learner(dls, [cb], model=cnn_raising(CancelEpochException(), at=3))
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 3e-3)
    assert learn.loss_func is original and hooks_left(learn.model) == 0
    assert cb.mixer.batches == 3 + len(dls.train) and not cb.mixer.in_batch


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("inside a layer")],
                         ids=["KeyboardInterrupt", "RuntimeError"])
def test_an_exception_inside_the_forward_leaves_no_hook(dls, exc, tmp_path):
    cb = ManifoldMixup(alpha=1.0)
    model = cnn_raising(exc, at=2)
    learn = learner(dls, [cb], model=model)
    with learn.no_bar(), learn.no_logging():
        with pytest.raises(type(exc)):
            learn.fit(1, 3e-3)
    assert hooks_left(learn.model) == 0 and not cb.mixer.in_batch
    torch.save(learn.model, tmp_path / "model.pt")
    copy.deepcopy(learn.model)
    learn.path = tmp_path
    learn.export("learner.pkl")
    load_learner(tmp_path / "learner.pkl")
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)  # the next fit restores the loss and trains
    assert hooks_left(learn.model) == 0 and learn.loss_func.__class__.__name__ == "CrossEntropyLossFlat"
    assert cb.mixer.batches == len(dls.train)


@pytest.mark.parametrize("cls", [OutputMixup, DynamicOutputMixup])
def test_output_mixup_after_a_fit_that_raised(dls, cls):
    class Boom(Callback):
        order, run_valid = 60, False

        def after_batch(self):
            if self.iter == 1:
                raise RuntimeError("boom")

    cb = cls(alpha=1.0) if cls is OutputMixup else cls(alpha_min=0.5, alpha_max=1.0)
    learn = learner(dls, [cb])
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        with pytest.raises(RuntimeError, match="boom"):
            learn.fit(1, 3e-3, cbs=[Boom()])
        learn.fit(1, 3e-3)  # used to refuse: it inspected the still-wrapped loss
    assert learn.loss_func is original and cb.mixer.point_mixes == [len(dls.train)]


@pytest.mark.parametrize("pair", ["MixUp+ManifoldMixup", "ManifoldMixup+MixUp", "ManifoldMixup+OutputMixup",
                                  "CutMix+DynamicOutputMixup"])
def test_two_mixing_callbacks_are_refused_at_the_start_of_the_fit_naming_both(dls, pair):
    from fastai.callback.mixup import CutMix, MixUp
    classes = dict(MixUp=MixUp, CutMix=CutMix, ManifoldMixup=ManifoldMixup, OutputMixup=OutputMixup,
                   DynamicOutputMixup=DynamicOutputMixup)
    names = pair.split("+")
    learn = learner(dls, [classes[n]() for n in names])
    original = learn.loss_func
    with learn.no_bar(), learn.no_logging():
        with pytest.raises(ValueError, match="are both in this Learner's callbacks") as e:
            learn.fit(1, 3e-3)
    assert all(n in str(e.value) for n in names)
    assert learn.train_iter == 0 and learn.loss_func is original and hooks_left(learn.model) == 0


def test_plain_torch_cross_entropy_is_classification(dls):
    for cb in (ManifoldMixup(alpha=1.0), OutputMixup(alpha=1.0)):
        spy = Spy(cb)
        learn = learner(dls, [cb, spy], loss=nn.CrossEntropyLoss())  # no y_int
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 3e-3)
        assert cb.mixer.batches == len(dls.train) == sum(cb.mixer.point_mixes) + getattr(
            cb.mixer, "input_mixes", 0)
        for r in spy.rows[:3]:
            if isinstance(cb, ManifoldMixup):
                y, lam, perm = r["yb"][0], r["lam"], r["perm"]
                expected = (lam * F.cross_entropy(r["pred"], y, reduction="none")
                            + (1 - lam) * F.cross_entropy(r["pred"], y[perm], reduction="none")).mean()
                assert r["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_bce_multi_label_is_classification_for_both_callbacks(digits):
    from fastai.losses import BCEWithLogitsLossFlat
    x, y = digits
    multi = torch.stack([y % 2 == 0, y > 4, y % 3 == 0], 1).float()
    for cb in (ManifoldMixup(alpha=1.0), OutputMixup(alpha=1.0), DynamicOutputMixup(alpha_min=0.2)):
        learn = Learner(make_dls(x, multi), cnn(n_out=3), loss_func=BCEWithLogitsLossFlat(), cbs=[cb])
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 3e-3)
        assert cb.mixer.batches == 8 and sum(cb.mixer.point_mixes) + cb.mixer.input_mixes == 8
        assert all(torch.isfinite(torch.tensor(learn.recorder.values[-1][:2])))


def test_schedulers_as_the_readme_names_them_work_or_are_refused_with_the_fix(dls):
    from functools import partial
    from fastai.callback.schedule import SchedExp, SchedNo
    with pytest.raises(ValueError, match="alpha_min > 0"):
        DynamicManifoldMixup(alpha_min=0.0, alpha_max=0.6, scheduler=SchedExp)
    with pytest.raises(ValueError, match=r"partial\(SchedPoly, power=2\)"):
        DynamicOutputMixup(scheduler=SchedPoly)
    with pytest.raises(ValueError, match="not all finite and >= 0"):
        DynamicManifoldMixup(scheduler=lambda a, b: (lambda p: a - 1 + p))
    for sched in (partial(SchedPoly, power=2), SchedExp, SchedNo, SchedLin, SchedCos):
        cb = DynamicManifoldMixup(alpha_min=0.05, alpha_max=0.6, scheduler=sched)
        learn = learner(dls, [cb])
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 3e-3)
        assert cb.mixer.batches == len(dls.train)


def test_arguments_numpy_and_tensor_alphas_one_module_and_clear_type_errors(dls):
    import numpy as np
    for alpha in (np.float32(0.2), torch.tensor(0.2), np.int64(1)):
        assert ManifoldMixup(alpha=alpha).alpha == pytest.approx(float(alpha))
        assert DynamicOutputMixup(alpha_max=alpha).alpha_max == pytest.approx(float(alpha))
    for cls in (ManifoldMixup, OutputMixup):
        with pytest.raises(TypeError, match="alpha must be a real number"):
            cls(alpha=True)
    with pytest.raises(TypeError, match="use_input_mixup must be True or False"):
        ManifoldMixup(use_input_mixup="no")
    model = cnn()
    cb = ManifoldMixup(module_list=model[2])  # one module, not a list
    learn = learner(dls, [cb], model=model)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    assert cb.module_list == [model[2]]
    assert "_mm" in ManifoldMixup._stateattrs and "__getstate__" not in vars(ManifoldMixup)


def test_a_chosen_module_that_cannot_mix_trains_on_the_plain_loss_and_is_counted(dls):
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        "A frozen (eval-mode) module and one returning a tuple, as AWD_LSTM's encoder does."

        def __init__(self):
            super().__init__()
            self.stem, self.frozen, self.pair = nn.Conv2d(1, 8, 3, padding=1), ResBlock(8), Pair()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

        def forward(self, x):
            return self.head(self.pair(self.frozen(self.stem(x)))[0])

    class Freeze(Callback):
        order = 1

        def before_batch(self):
            self.learn.model.frozen.eval()

    model = Net()
    cb = ManifoldMixup(alpha=1.0, use_input_mixup=False, module_list=[model.frozen, model.pair])
    spy = Spy(cb)
    learn = learner(dls, [cb, Freeze(), spy], model=model)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        learn.fit(2, 3e-3)
    frozen = [r for r in spy.rows if r["chosen"] == 0]
    assert frozen and not any(r["mixed"] for r in frozen)  # eval mode never mixes
    for r in frozen:
        assert r["loss"] == pytest.approx(F.cross_entropy(r["pred"], r["yb"][0]).item(), rel=1e-5)
    assert cb.mixer.unmixed_batches == len(frozen)
    assert sum("'frozen' did not run" in str(w.message) for w in record) == 1
    # The tuple's first tensor is the one that mixes; the point stays.
    assert all(r["mixed"] for r in spy.rows if r["chosen"] == 1)
    assert cb.mixer.point_mixes == [0, len(spy.rows) - len(frozen)]
    assert cb.module_list == [model.frozen, model.pair]
def test_the_selection_line_is_said_once_per_callback_on_rank_0_and_can_be_silenced(dls, capsys, monkeypatch):
    cb = ManifoldMixup()
    learn = learner(dls, [cb])
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=5, show_plot=False)
        learn.fit(1, 3e-3)
        learn.fit(1, 3e-3)
    assert capsys.readouterr().out.count("ManifoldMixup: selection rule 5 chose") == 1
    learn = learner(dls, [ManifoldMixup(verbose=False)])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    assert "ManifoldMixup" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")
    learn = learner(dls, [ManifoldMixup()])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    assert "ManifoldMixup" not in capsys.readouterr().out


def test_the_selection_line_goes_above_the_progress_bar(dls):
    lines = []
    cb = ManifoldMixup()
    learn = learner(dls, [cb])

    class Catch(Callback):
        order = 100  # after ProgressCallback created its bar, before our first before_train

        def before_fit(self):
            bar = self.learn.progress.mbar
            bar.write = lambda line, table=False: lines.append(line) if not table else None

    with learn.no_logging():
        learn.fit(1, 3e-3, cbs=[Catch()])
    assert sum("ManifoldMixup:" in line for line in lines) == 1


def test_a_compiled_model_in_a_learner_mixes_at_its_modules(dls):
    import torch._dynamo as dynamo
    dynamo.reset()
    dynamo.utils.counters.clear()
    model = cnn()
    cb = ManifoldMixup(alpha=1.0)
    learn = learner(dls, [cb], model=torch.compile(model, backend="aot_eager"))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    assert cb.module_list == [model[2], model[3]]
    assert sum(cb.mixer.point_mixes) > 0 and cb.mixer.unmixed_batches == 0
    assert sum(cb.mixer.point_mixes) + cb.mixer.input_mixes == len(dls.train)
    assert not dynamo.utils.counters["graph_break"]


def test_validate_and_get_preds_inside_a_fit_leave_the_fits_mixer_mixing(dls):
    class SecondValidation(Callback):
        "Validates on another set at every epoch's end, as a user's callback would."
        order, busy = 70, False

        def after_epoch(self):
            if self.busy:  # validate() and get_preds() send after_epoch too
                return
            self.busy = True
            self.learn.validate(dl=self.dls.valid)
            self.learn.get_preds(dl=self.dls.valid)
            self.busy = False

    cb = ManifoldMixup(alpha=1.0, verbose=False)
    learn = learner(dls, [cb, SecondValidation()])
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 3e-3)
    n = 3 * len(dls.train)
    assert cb.mixer.batches == n and cb.mixer.unmixed_batches == 0
    assert sum(cb.mixer.point_mixes) + cb.mixer.input_mixes == n
    assert min(cb.mixer.point_mixes) > 0  # the modules kept mixing after the first validate()
    assert hooks_left(learn.model) == 0 and learn.loss_func.__class__.__name__ == "CrossEntropyLossFlat"


def test_a_callback_that_runs_the_model_again_before_the_step_gets_a_matching_mixed_loss(dls):
    class Consistency(Callback):
        "Adds a second forward's loss before the step, as SAM-style or consistency callbacks do."
        order = 60

        def __init__(self, cb):
            self.cb, self.checked = cb, 0

        def before_step(self):
            pred = self.learn.model(*self.learn.xb)
            loss = self.learn.loss_func(pred, *self.learn.yb)
            m = self.cb.mixer
            if m.mixed:
                lam, perm, y = m.lam, m.perm, self.learn.yb[0]
                expected = (lam * F.cross_entropy(pred, y, reduction="none")
                            + (1 - lam) * F.cross_entropy(pred, y[perm], reduction="none")).mean()
                torch.testing.assert_close(loss, expected)
                torch.testing.assert_close(pred, self.learn.pred)  # the same mix as the first forward
                self.checked += 1
            loss.backward()

    cb = ManifoldMixup(alpha=1.0, verbose=False)
    second = Consistency(cb)
    learn = learner(dls, [cb, second], model=cnn().eval().train())
    learn.model.apply(lambda m: setattr(m, "momentum", 0.0) if isinstance(m, nn.BatchNorm2d) else None)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 3e-3)
    assert second.checked == len(dls.train) and cb.mixer.unmixed_batches == 0
