"""fastai callbacks over the plain-PyTorch API (manifold_mixup.mixers): ManifoldMixup,
OutputMixup and their Dynamic variants. They only translate fastai's events: the selection,
the hooks, the loss and every number are ManifoldMixer's / OutputMixer's (and the native Mixer's)."""
import math
import sys
from functools import partial

import torch.nn as nn
from fastai.callback.core import (CancelBackwardException, CancelBatchException, CancelEpochException,
                                  CancelFitException, CancelStepException, CancelTrainException,
                                  CancelValidException, Callback)
from fastai.learner import Learner
from fastai.callback.mixup import MixHandler
from fastai.callback.schedule import SchedCos

from .mixers import ManifoldMixer, OutputMixer, check_alpha, check_flag

__all__ = ["ManifoldMixup", "OutputMixup", "DynamicManifoldMixup", "DynamicOutputMixup"]

# The exceptions fastai catches itself (its Cancel*Exceptions): after them it sends the events
# that end the batch, the epoch or the fit.
_CANCELS = (CancelBatchException, CancelBackwardException, CancelStepException,
            CancelTrainException, CancelValidException, CancelEpochException, CancelFitException)


class _MixupCallback(MixHandler):
    """What ManifoldMixup and OutputMixup share: fastai's MixHandler loss swap for training
    phases (validation and get_preds see the original loss), one mixer per fit, and the refusal
    of a second mixing callback.

    fastai sends before_fit/after_fit around `validate()` and `get_preds()` too, also when a
    callback calls them in the middle of a fit (a second validation set, say): those nested
    events leave the fit's mixer as it is. The mixer is built at the fit's first before_train
    and removed at its after_fit, or when an exception that fastai does not catch ends it."""
    run_valid = False
    # learn.export() pickles callbacks: the mixer is rebuilt at the next fit.
    _stateattrs = ("_mm", "_scope", "_fit")

    def __init__(self, alpha, verbose):
        Callback.__init__(self)  # not MixHandler's: it builds a Beta law, which alpha 0 has not
        self.alpha, self.verbose = check_alpha(alpha), verbose
        check_flag(verbose, "verbose")
        self._mm, self._scope, self._fit, self._nested, self._said = None, None, None, 0, False

    def _init_state(self):  # fastcore's Stateful: after unpickling
        super()._init_state()
        self._mm = self._scope = self._fit = None
        self._nested = 0

    @property
    def mixer(self):
        "The native Mixer of the current (or last) fit: lam, perm, chosen, mixed, counters."
        return self._mm.mixer if self._mm is not None else None

    def _verbose_once(self):
        "The selection line goes out once per callback object, above fastai's progress bar."
        first, self._said = not self._said, True
        return self._write_line if first and self.verbose else False

    def _write_line(self, line):
        bar = getattr(getattr(self.learn, "progress", None), "mbar", None)
        (bar.write if bar is not None else print)(line)

    def before_fit(self):
        fit = _running_fit(self.learn)
        if fit is not None and fit is self._fit:  # validate()/get_preds() inside our fit
            self._nested += 1
            return
        self._tear_down()  # what a fit that raised left behind
        self._fit, self._nested = fit, 0
        others = [cb for cb in self.learn.cbs if cb is not self and isinstance(cb, MixHandler)]
        if others:
            raise ValueError(
                f"{type(self).__name__} and {type(others[0]).__name__} are both in this Learner's "
                "callbacks: each mixes the batch and its loss, so together they would mix twice "
                "(and the losses would not match). Keep one of them.")
        self._set_up = False
        self._scope_batches()

    def before_train(self):
        if not self._set_up:
            self._set_up = True
            self._mm = self._new_mixer()
        if self.learn.loss_func != self.lf:
            self.old_lf, self.learn.loss_func = self.learn.loss_func, self.lf

    def before_batch(self):
        pass

    def lf(self, pred, *yb):
        "The training loss: the mixer's mixed loss of the original one (plain outside training)."
        if not self.training or self._mm is None:
            return self.old_lf(pred, *yb)
        return self._mixed_loss(pred, *yb)

    def after_train(self):
        self._end_batch()
        self._restore_loss()

    def after_fit(self):
        if self._nested:
            self._nested -= 1
            return
        self._tear_down()

    def _restore_loss(self):
        learn = getattr(self, "learn", None)
        if learn is not None and learn.loss_func == self.lf:
            learn.loss_func = self.old_lf

    def _tear_down(self):
        "Ends the fit: the batch, the loss swap, the batch scope and the mixer's points."
        self._end_batch()
        self._restore_loss()
        self._unscope_batches()
        self._remove_mixer()
        self._fit, self._nested = None, 0

    def _end_batch(self, completed=False):
        pass

    def _remove_mixer(self):
        pass

    # fastai sends no event after an exception that is not one of its Cancel*Exceptions (a
    # KeyboardInterrupt inside a layer, an error in the loss or in another callback): each
    # training batch, its events included, runs inside try/except here, so that such an
    # exception ends the fit's mixer (no point stays armed) whatever raises.
    def _scope_batches(self):
        learn = self.learn
        current = learn.__dict__.get("one_batch")
        if current is not None and current is self._scope:
            return
        inner = current if current is not None else partial(type(learn).one_batch, learn)
        self._scope = partial(self._one_batch, learn, inner)
        learn.one_batch = self._scope

    def _unscope_batches(self):
        learn = getattr(self, "learn", None)
        if learn is not None and self._scope is not None and learn.__dict__.get("one_batch") is self._scope:
            inner = self._scope.args[1]
            if isinstance(inner, partial) and inner.func is type(learn).one_batch:
                del learn.one_batch
            else:
                learn.one_batch = inner
        self._scope = None

    def _one_batch(self, learn, inner, *args, **kwargs):
        if self.learn is not learn or not learn.training:
            return inner(*args, **kwargs)
        try:
            return inner(*args, **kwargs)
        except _CANCELS:  # fastai goes on, or ends the fit with after_fit
            self._end_batch()
            raise
        except BaseException:
            self._tear_down()
            raise


def _running_fit(learn):
    """The frame of the outermost `learn.fit()` running on this thread, or None: fastai's
    validate() and get_preds() send before_fit too, and only the stack says whether they run
    inside a fit."""
    codes = {Learner.fit.__code__}
    fit = getattr(type(learn), "fit", None)
    if getattr(fit, "__code__", None) is not None:
        codes.add(fit.__code__)
    found, frame = None, sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes and frame.f_locals.get("self") is learn:
            found = frame
        frame = frame.f_back
    return found


class ManifoldMixup(_MixupCallback):
    "Manifold Mixup: mixes the output of one random module (or the input) per training batch"

    def __init__(self,
                 alpha: float = 0.4,  # parameter of the Beta(alpha, alpha) law of the weights; 0: no mixing
                 use_input_mixup: bool = True,  # the input is one of the mixup points
                 module_list=None,  # modules to mix (a list or one module); None: selected from the model
                 verbose: bool = True):  # say once which modules were selected (rank 0)
        super().__init__(alpha, verbose)
        self.use_input_mixup = check_flag(use_input_mixup, "use_input_mixup")
        if module_list is not None and not isinstance(module_list, nn.Module):
            module_list = list(module_list)
        self._user_module_list = module_list

    @property
    def module_list(self):
        "The modules mixed at in the current (or last) fit; before any fit, the ones passed in."
        return self._mm.modules if self._mm is not None else self._user_module_list

    def _new_mixer(self):
        return ManifoldMixer(self.learn.model, self.alpha, modules=self._user_module_list,
                             input_mixup=self.use_input_mixup, verbose=self._verbose_once())

    def before_batch(self):
        self.learn.xb = self._mm._begin(self.xb)

    def _mixed_loss(self, pred, *yb):
        if not self._mm._begun:  # a training-mode loss outside a batch (another callback's)
            return self.old_lf(pred, *yb)
        return self._mm.loss(self.old_lf, pred, *yb)

    def _end_batch(self, completed=False):
        if self._mm is not None and self._mm._begun:
            self._mm._end(completed=completed)

    def _remove_mixer(self):
        if self._mm is not None:
            self._mm.remove()

    def after_batch(self):
        self._end_batch(completed=True)


class OutputMixup(_MixupCallback):
    "Mixes the final output (logits) inside the loss, each training batch"

    def __init__(self,
                 alpha: float = 0.4,  # parameter of the Beta(alpha, alpha) law; 0: no mixing
                 verbose: bool = True):  # kept for symmetry with ManifoldMixup (nothing to say)
        super().__init__(alpha, verbose)

    def _new_mixer(self):
        OutputMixer.check_loss(self.learn.loss_func)  # the original: before_fit restored it
        return OutputMixer(self.alpha)

    def _mixed_loss(self, pred, *yb):
        return self._mm.loss(self.old_lf, pred, *yb)

    def _end_batch(self, completed=False):
        pass


_SCHEDULER_FIXES = {
    "SchedExp": "an exponential schedule multiplies alpha_min by a ratio, so it cannot start at "
                "0: pass alpha_min > 0 (e.g. alpha_min=0.01), or use SchedCos or SchedLin",
    "SchedPoly": "SchedPoly takes a power: pass scheduler=functools.partial(SchedPoly, power=2)",
}


def _check_scheduler(scheduler, alpha_min, alpha_max):
    "scheduler(alpha_min, alpha_max), tried over [0, 1] now rather than at some batch."
    name = getattr(scheduler, "__name__", None) or getattr(
        getattr(scheduler, "func", None), "__name__", None) or repr(scheduler)
    fix = _SCHEDULER_FIXES.get(name, "pass a function scheduler(alpha_min, alpha_max) whose "
                                     "result maps pct_train in [0, 1] to an alpha >= 0")
    try:
        schedule = scheduler(alpha_min, alpha_max)
        values = [float(schedule(p)) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    except Exception as e:
        raise ValueError(f"scheduler={name} cannot schedule alpha from alpha_min={alpha_min} to "
                         f"alpha_max={alpha_max} ({type(e).__name__}: {e}): {fix}") from e
    if not all(math.isfinite(v) and v > -1e-9 for v in values):
        raise ValueError(f"scheduler={name} from alpha_min={alpha_min} to alpha_max={alpha_max} "
                         f"gives alphas {values} over pct_train 0..1, not all finite and >= 0: {fix}")
    return schedule


class _Scheduled:
    "Alpha follows scheduler(alpha_min, alpha_max)(pct_train) before each training batch."

    def __init__(self, alpha_min=0.0, alpha_max=0.6, scheduler=SchedCos, **kwargs):
        if "alpha" in kwargs:
            raise TypeError(f"{type(self).__name__} takes alpha_max (and alpha_min) instead of "
                            f"alpha: use alpha_max={kwargs['alpha']!r}")
        alpha_min, alpha_max = check_alpha(alpha_min, "alpha_min"), check_alpha(alpha_max, "alpha_max")
        schedule = _check_scheduler(scheduler, alpha_min, alpha_max)
        super().__init__(alpha=alpha_min, **kwargs)
        self.alpha_min, self.alpha_max, self.scheduler = alpha_min, alpha_max, scheduler
        self._schedule = schedule

    def before_batch(self):
        alpha = float(self._schedule(self.pct_train))
        self.alpha = self._mm.alpha = max(alpha, 0.0) if alpha > -1e-9 else alpha  # rounding: -1e-17
        super().before_batch()


class DynamicManifoldMixup(_Scheduled, ManifoldMixup):
    "ManifoldMixup whose alpha grows from alpha_min to alpha_max along a fastai schedule"


class DynamicOutputMixup(_Scheduled, OutputMixup):
    "OutputMixup whose alpha grows from alpha_min to alpha_max along a fastai schedule"
