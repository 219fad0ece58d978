"""fastai callbacks over the native Mixer: ManifoldMixup, OutputMixup and their Dynamic
variants. Python only forwards fastai's events; weights, permutation, the choice of mixup
point and the mixing itself are C++ (manifold_mixup._C)."""
import math
import warnings

import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import reduce_loss
from fastai.callback.schedule import SchedCos
from fastai.layers import NoneReduce
from fastai.torch_core import find_bs

from . import _C
from .selection import select_modules

__all__ = ["ManifoldMixup", "OutputMixup", "DynamicManifoldMixup", "DynamicOutputMixup"]


def _check_alpha(alpha, name):
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 means no mixing), got {alpha!r}")


class _MixupCallback(Callback):
    "What ManifoldMixup and OutputMixup share: the Mixer, the loss wrapper, cleanup."
    run_valid = False

    def __init__(self, alpha):
        _check_alpha(alpha, "alpha")
        self.alpha, self.mixer = alpha, None

    def _new_mixer(self, input_mixup):
        self.mixer = _C.Mixer(alpha=self.alpha, input_mixup=input_mixup)

    def _begin(self):
        "Starts the Mixer's batch on the batch's device; returns the chosen point."
        ref = self.yb[0] if len(self.yb) else self.xb[0]
        return self.mixer.begin_batch(find_bs(self.yb if len(self.yb) else self.xb), ref.device)

    # fastai calls before_fit/after_fit around get_preds and validate too, so the per-fit
    # setup waits for the first before_train, and the loss is wrapped for training phases
    # only (as fastai's MixHandler does): validation always sees the original loss.
    def before_fit(self):
        self._set_up = False

    def before_train(self):
        if not self._set_up:
            self._set_up = True
            self._setup()
        if self.learn.loss_func != self._loss_func:  # still wrapped if a fit raised
            self._old_lf = self.learn.loss_func
        self.stack_y = bool(getattr(self._old_lf, "y_int", False))
        if self.stack_y:
            self.learn.loss_func = self._loss_func

    def after_train(self):
        self._end_batch()
        if self.learn.loss_func == self._loss_func:
            self.learn.loss_func = self._old_lf

    def after_cancel_train(self):
        self.after_train()

    def _mixed_loss(self, pred, *yb):
        "lam * L(pred, y) + (1 - lam) * L(pred, y[perm]), reduced as the original loss says."
        old_lf = self._old_lf
        bs = pred.shape[0]
        with NoneReduce(old_lf) as lf:
            own = lf(pred, *yb)
            other = lf(pred, *(y[self.mixer.perm] for y in yb))
        if own.dim() == 1 and own.shape[0] != bs:  # flattened per-element losses
            own, other = own.view(bs, -1), other.view(bs, -1)
        loss = self.mixer.mixed_loss(own, other)
        return reduce_loss(loss, getattr(old_lf, "reduction", "mean"))

    def _loss_func(self, pred, *yb):
        if not (self.training and self.mixer.in_batch and self.mixer.chosen != _C.Mixer.NO_POINT):
            return self._old_lf(pred, *yb)
        return self._mixed_loss(pred, *yb)

    def _end_batch(self):
        if self.mixer is not None and self.mixer.in_batch:
            self.mixer.end_batch()

    def after_batch(self):
        self._end_batch()

    def after_fit(self):
        self.after_train()

    def after_cancel_fit(self):
        self.after_fit()

    def __getstate__(self):
        # learn.export() pickles the callbacks; the native objects are rebuilt at the next fit.
        state = {k: v for k, v in self.__dict__.items() if k not in ("mixer", "_hooks", "_handle")}
        state["mixer"] = None
        return state


class ManifoldMixup(_MixupCallback):
    "Manifold Mixup: mixes the output of one random module (or the input) per training batch"

    def __init__(self,
                 alpha: float = 0.4,  # parameter of the Beta(alpha, alpha) law of the weights; 0: no mixing
                 use_input_mixup: bool = True,  # the input is one of the mixup points
                 module_list=None):  # explicit modules to mix; None: selected from the model
        super().__init__(alpha)
        self.use_input_mixup, self.module_list = use_input_mixup, module_list
        self._user_module_list, self._handle = module_list, None

    def _setup(self):
        self._remove_hook()
        self.module_list = select_modules(self.learn.model, self._user_module_list)
        names = {id(m): n for n, m in self.learn.model.named_modules()}
        self._new_mixer(self.use_input_mixup)
        for i, m in enumerate(self.module_list):
            self.mixer.add_point(names.get(id(m), type(m).__name__) or "model")
        self._hooks = [_C.PointHook(self.mixer, i) for i in range(len(self.module_list))]
        self._input_checked = self._warned_repeat = False

    def _check_input(self):
        "Once per fit: integer inputs (tabular categories) cannot be mixed; leave the input out."
        self._input_checked = True
        if self.mixer.input_mixup and not all(torch.is_floating_point(x) for x in self.xb):
            self.mixer.input_mixup = False
            warnings.warn("ManifoldMixup: the batch input is not all floating tensors (e.g. "
                          "tabular categories), so the input is left out of the mixup points "
                          "for this fit; the modules are still mixed.")

    def before_batch(self):
        if not self._input_checked:
            self._check_input()
        chosen = self._begin()
        if chosen == _C.Mixer.INPUT_POINT:
            self.learn.xb = tuple(self.mixer.mix_input(x) for x in self.xb)
        elif chosen >= 0:
            self._handle = self.module_list[chosen].register_forward_hook(self._hooks[chosen])
        if not self.stack_y and chosen != _C.Mixer.NO_POINT:  # regression: mix the targets
            self.learn.yb = tuple(self.mixer.mix_targets(y) for y in self.yb)

    def after_pred(self):
        self._remove_hook()  # a hook lives for the forward pass only

    def after_batch(self):
        self._remove_hook()
        if self.mixer.repeated_calls and not self._warned_repeat:
            self._warned_repeat = True
            warnings.warn("ManifoldMixup: a mixup point ran more than once in a batch (a module "
                          "used recurrently or shared); only its first call was mixed. Pass "
                          "module_list=[...] to choose modules that run once per batch.")
        super().after_batch()

    def after_train(self):
        self._remove_hook()
        super().after_train()

    def _remove_hook(self):
        if getattr(self, "_handle", None) is not None:
            self._handle.remove()
            self._handle = None


class OutputMixup(_MixupCallback):
    "Mixes the final output (logits) inside the loss, each training batch"

    def __init__(self, alpha: float = 0.4):  # parameter of the Beta(alpha, alpha) law; 0: no mixing
        super().__init__(alpha)

    def _setup(self):
        if not getattr(self.learn.loss_func, "y_int", False):
            raise ValueError("OutputMixup needs a classification loss (one with y_int=True, such "
                             "as CrossEntropyLossFlat): mixing logits means nothing for regression. "
                             "Use ManifoldMixup instead.")
        self._new_mixer(input_mixup=False)
        self.mixer.add_point("output")  # the logits are the one mixup point

    def before_batch(self):
        self._begin()

    def _mixed_loss(self, pred, *yb):
        return super()._mixed_loss(self.mixer.point_output(0, pred), *yb)


class _Scheduled:
    "Alpha follows scheduler(alpha_min, alpha_max)(pct_train) before each training batch."

    def __init__(self, alpha_min=0.0, alpha_max=0.6, scheduler=SchedCos, **kwargs):
        if "alpha" in kwargs:
            raise TypeError(f"{type(self).__name__} takes alpha_max (and alpha_min) instead of "
                            f"alpha: use alpha_max={kwargs['alpha']!r}")
        _check_alpha(alpha_min, "alpha_min")
        _check_alpha(alpha_max, "alpha_max")
        super().__init__(alpha=alpha_min, **kwargs)
        self.alpha_min, self.alpha_max, self.scheduler = alpha_min, alpha_max, scheduler
        self._schedule = scheduler(alpha_min, alpha_max)

    def before_batch(self):
        alpha = float(self._schedule(self.pct_train))
        _check_alpha(max(alpha, 0.0) if alpha > -1e-9 else alpha, "the scheduled alpha")
        self.alpha = self.mixer.alpha = max(alpha, 0.0)  # rounding may give -1e-17
        super().before_batch()


class DynamicManifoldMixup(_Scheduled, ManifoldMixup):
    "ManifoldMixup whose alpha grows from alpha_min to alpha_max along a fastai schedule"


class DynamicOutputMixup(_Scheduled, OutputMixup):
    "OutputMixup whose alpha grows from alpha_min to alpha_max along a fastai schedule"
