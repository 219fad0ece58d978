"""Manifold Mixup in any PyTorch training loop: ManifoldMixer and OutputMixer.

The fastai callbacks are a thin layer over these two classes; the numbers (lam, perm, the
chosen point, "did this batch mix?") live in the native Mixer (`manifold_mixup._C.Mixer`).
"""
import math
import numbers
import os
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn

from . import _C
from .hooks import PointHooks
from .losses import is_classification, is_regression_loss, mixed_loss
from .selection import select_modules, unwrap_model

__all__ = ["ManifoldMixer", "OutputMixer"]


def check_alpha(alpha, name="alpha"):
    "alpha as a float: a real number (int, float, numpy scalar, 0-d tensor) >= 0; bools refused."
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 0 and not alpha.dtype.is_complex \
            and alpha.dtype != torch.bool:
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0 (0 means no mixing), got "
                        f"{type(alpha).__name__} {alpha!r}")
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 means no mixing), got {alpha!r}")
    return alpha


def check_flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be None or an int >= 0, got {type(seed).__name__} {seed!r}")
    return int(seed)


def _rank():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def _logger(verbose):
    "verbose -> a function taking one line: print, nothing, or the user's own; rank 0 only."
    if verbose is True:
        sink = print
    elif verbose is False or verbose is None:
        return lambda line: None
    elif callable(verbose):
        sink = verbose
    else:
        raise TypeError(f"verbose must be True, False or a function taking a line, got {verbose!r}")
    return lambda line: sink(line) if _rank() == 0 else None


class ManifoldMixer:
    """Manifold Mixup for a plain PyTorch training loop.

    Each training batch, one point is drawn among the selected modules (and the input): its
    output for sample i becomes ``lam[i] * h[i] + (1 - lam[i]) * h[perm[i]]``, with
    ``lam ~ Beta(alpha, alpha)`` folded to ``max(lam, 1 - lam)`` and ``perm`` a permutation of
    the batch; the loss is the same mix of the two samples' losses::

        mm = ManifoldMixer(model, alpha=0.4)
        for x, y in loader:
            with mm.batch(x) as xb:              # draws lam, perm and the point; mixes the input
                out = model(xb)                  # or mixes the chosen module's output
                loss = mm.loss(F.cross_entropy, out, y)   # or loss_fn(out, mm.mix_targets(y))
            opt.zero_grad(); loss.backward(); opt.step()
            mm.alpha = schedule(step)            # optional: any schedule
        mm.remove()                              # or: with ManifoldMixer(model) as mm: ...

    Args:
        model: the model the loop calls; may be wrapped in DistributedDataParallel or
            torch.compile (modules are selected and hooked inside the wrapper).
        alpha: parameter of the Beta(alpha, alpha) law of the weights; 0 means no mixing.
        modules: the modules to mix at (a list, or one module); None selects them by the rules
            of `manifold_mixup.selection.select_modules`.
        input_mixup: whether the input is one of the points (left out automatically when the
            input is not all floating tensors, e.g. tabular categories).
        seed: None draws from torch's default generators (torch.manual_seed governs); an int
            gives this mixer its own generator (under DDP pass e.g. ``seed + rank``).
        verbose: True prints which modules were selected and why (rank 0 only), False is
            silent, or pass a function taking the line (e.g. ``logging.info``).

    Guarantees: hooks exist only inside ``batch()`` and are removed whatever raises (so
    ``torch.save``, ``copy.deepcopy`` and ``state_dict`` of the model are never affected); a
    model in eval mode is never mixed; a batch whose chosen point did not run gets the plain
    loss and is counted in ``mixer.unmixed_batches``; a module that runs twice in a batch is
    mixed on its first call only (and warned about once). Modules that do not run in the first
    training batch, or whose output is not a single tensor, are dropped from the candidates.
    Counters: ``mixer.batches``, ``mixer.point_mixes``, ``mixer.input_mixes``,
    ``mixer.unmixed_batches``, ``mixer.repeated_calls``.
    """

    def __init__(self, model: nn.Module, alpha=0.4, modules=None, input_mixup: bool = True,
                 seed=None, verbose=True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        alpha = check_alpha(alpha)
        check_flag(input_mixup, "input_mixup")
        self._say, self._verbose = _logger(verbose), verbose not in (False, None)
        self.model, self._root = model, unwrap_model(model)
        if isinstance(modules, nn.Module):
            modules = [modules]
        self.modules = select_modules(model, modules, log=self._say)
        self.mixer = _C.Mixer(alpha=alpha, input_mixup=input_mixup, seed=_check_seed(seed))
        names = {id(m): n for n, m in self._root.named_modules()}
        for m in self.modules:
            self.mixer.add_point(names.get(id(m)) or type(m).__name__)
        self._hooks = PointHooks(self.modules)
        self._active = self._begun = self._removed = False
        self._synced = True
        self._dry_run_done = self._input_checked = self._warned_repeat = False
        self._warned_silent = False

    # -- settings ---------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        "Parameter of the Beta law; set it before any batch (e.g. from a schedule)."
        return self.mixer.alpha

    @alpha.setter
    def alpha(self, value):
        self.mixer.alpha = check_alpha(value)

    @property
    def point_names(self):
        "Names of the candidate modules (paths in the model), in the order of mixer.point_mixes."
        return list(self.mixer.point_names)

    @property
    def mixed(self) -> bool:
        "Whether the current batch has mixed (the input, or the chosen module's output)."
        self._sync()
        return self._active and self.mixer.mixed

    # -- one batch --------------------------------------------------------------------------
    @contextmanager
    def batch(self, *inputs):
        """Starts a training batch: yields the inputs, mixed if the input was drawn (one tensor
        if one was given, else a tuple). Call the model and `loss` inside the block."""
        mixed = self._begin(inputs)
        try:
            self._attach()
            yield mixed[0] if len(mixed) == 1 else mixed
        except BaseException:
            self._end(completed=False)
            raise
        self._end(completed=True)

    def loss(self, loss_fn, pred, *targets):
        """The batch's loss: ``lam * loss_fn(pred, y) + (1 - lam) * loss_fn(pred, y[perm])`` per
        sample, reduced as loss_fn's `reduction` says (classification: integer targets, or a
        cross-entropy/BCE loss), or ``loss_fn(pred, mix_targets(y))`` (regression); the plain
        ``loss_fn(pred, *targets)`` when this batch did not mix (eval mode, alpha 0, or the
        chosen module did not run). loss_fn must accept ``reduction='none'`` (as torch's losses
        do) or have a `reduction` attribute."""
        if not self._in_batch("loss"):
            return loss_fn(pred, *targets)
        self._detach()  # the forward is over: no hook stays for the rest of the block
        return mixed_loss(self.mixer, loss_fn, pred, targets)

    def mix_targets(self, *targets):
        "Regression targets mixed as the batch was (unchanged when it did not mix)."
        if self._in_batch("mix_targets"):
            self._detach()
            targets = tuple(self.mixer.mix_targets(y) for y in targets)
        return targets[0] if len(targets) == 1 else targets

    def remove(self):
        "Ends any batch and detaches everything; the mixer cannot be used afterwards."
        if self.mixer.in_batch or self._hooks.attached:
            self._end(completed=False)
        self._removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __repr__(self):
        return (f"ManifoldMixer(alpha={self.alpha}, points={self.point_names}, "
                f"input_mixup={self.mixer.input_mixup})")

    # -- the steps of a batch, also driven one by one by the fastai callback ------------------
    def _in_batch(self, what):
        "True in a training batch, False in an eval-mode one; outside batch() an error."
        if not self._begun:
            raise RuntimeError(f"ManifoldMixer.{what}: call it inside `with mixer.batch(x):`, "
                               "after the model's forward")
        return self._active

    def _begin(self, inputs):
        if self._removed:
            raise RuntimeError("ManifoldMixer: remove() was called; create a new mixer")
        if self.mixer.in_batch or self._hooks.attached:  # left open by an exception
            self._end(completed=False)
        if not inputs:
            raise TypeError("ManifoldMixer.batch() needs the batch's input tensor(s)")
        self._begun, self._synced = True, False
        self._active = self._root.training
        if not self._active:  # eval mode never mixes
            return inputs
        if not self._input_checked:
            self._check_input(inputs)
        ref = inputs[0]
        if not isinstance(ref, torch.Tensor) or ref.dim() == 0:
            raise TypeError("ManifoldMixer.batch: the first input must be a tensor whose dim 0 "
                            f"is the batch, got {type(ref).__name__}")
        chosen = self.mixer.begin_batch(ref.shape[0], ref.device)
        self._hooks.arm(chosen, self.mixer.lam, self.mixer.perm)
        if chosen != _C.Mixer.INPUT_POINT:
            return inputs
        first = self.mixer.mix_input(ref)  # counts the input's mix once per batch
        return (first,) + tuple(self.mixer.mix(x) for x in inputs[1:])

    def _check_input(self, inputs):
        "Once: integer inputs (tabular categories) cannot be mixed; leave the input out."
        self._input_checked = True
        floating = all(isinstance(x, torch.Tensor) and torch.is_floating_point(x) for x in inputs)
        if self.mixer.input_mixup and not floating:
            self.mixer.input_mixup = False
            if self._verbose and _rank() == 0:
                warnings.warn("ManifoldMixup: the batch input is not all floating tensors "
                              "(e.g. tabular categories), so the input is left out of the mixup "
                              "points; the modules are still mixed.", stacklevel=4)

    def _attach(self):
        if self._active:
            self._hooks.attach()

    def _detach(self):
        self._hooks.detach()
        self._sync()

    def _sync(self):
        "Hands what the hooks saw to the Mixer, once per batch, after the forward."
        if self._synced or not self.mixer.in_batch:
            return
        chosen = self.mixer.chosen
        if chosen >= 0:
            hook = self._hooks.hooks[chosen]
            if hook.mixed:
                self._synced = True
                self.mixer.record_point_mixed(chosen, hook.calls)
                return
        # Synced for good only once the forward has run (some hook was called).
        self._synced = any(h.calls for h in self._hooks.hooks) or not self._hooks.hooks

    def _end(self, completed):
        self._hooks.detach()
        self._hooks.disarm()
        if self.mixer.in_batch:
            self._sync()
            forward_ran = any(h.calls for h in self._hooks.hooks)
            self.mixer.end_batch()
            if completed and self._hooks.hooks:
                if not forward_ran:
                    self._warn_no_module_ran()
                elif not self._dry_run_done:
                    self._drop_candidates_that_cannot_mix()
            if self.mixer.repeated_calls and not self._warned_repeat:
                self._warned_repeat = True
                warnings.warn("ManifoldMixup: a mixup point ran more than once in a batch (a "
                              "module used recurrently or shared); only its first call was "
                              "mixed. Pass module_list=[...] to choose modules that run once "
                              "per batch.", stacklevel=4)
        self._active = self._begun = False

    def _drop_candidates_that_cannot_mix(self):
        "After the first training batch: drop candidates that did not run or return a tuple."
        self._dry_run_done = True
        keep = [i for i, h in enumerate(self._hooks.hooks) if h.calls and h.tensor_output]
        if len(keep) == len(self._hooks.hooks):
            return
        names = self.point_names
        dropped = [(names[i], "did not run" if not h.calls else "does not return a single tensor")
                   for i, h in enumerate(self._hooks.hooks) if i not in keep]
        self.mixer.retain_points(keep)
        self._hooks.retain(keep)
        self.modules = self._hooks.modules
        self._say(f"ManifoldMixup: {len(dropped)} of {len(names)} selected modules left out: "
                  + "; ".join(f"{n} ({why})" for n, why in dropped) + ".")
        if not keep and not self.mixer.input_mixup:
            warnings.warn("ManifoldMixup: none of the selected modules can be mixed (see above) "
                          "and the input is not a point: nothing will be mixed.", stacklevel=5)

    def _warn_no_module_ran(self):
        if self._warned_silent:
            return
        self._warned_silent = True
        warnings.warn(
            "ManifoldMixup: none of the selected modules ran in this training batch, so it was "
            "not mixed (and trained on the plain loss). If the model was compiled (torch.compile) "
            "and run in training mode before the mixer's first batch, its compiled graph has no "
            "mixup hooks: create the mixer and start its batches first, or call "
            "torch._dynamo.reset().", stacklevel=5)


class OutputMixer:
    """Output Mixup for a plain PyTorch training loop: the logits are mixed inside the loss.

        om = OutputMixer(alpha=0.4)
        for x, y in loader:
            loss = om.loss(F.cross_entropy, model(x), y)   # training batches only
            opt.zero_grad(); loss.backward(); opt.step()

    Each call draws lam and perm, mixes the logits and returns the mixed loss (see
    `ManifoldMixer.loss`). Classification only: a loss known to be a regression loss, or
    floating targets with a loss not known to be a classification loss, raise ValueError.
    Call the loss itself for evaluation. `alpha` may be set before any call.
    """

    def __init__(self, alpha=0.4, seed=None):
        self.mixer = _C.Mixer(alpha=check_alpha(alpha), input_mixup=False, seed=_check_seed(seed))
        self.mixer.add_point("output")  # the logits are the one mixup point

    alpha = ManifoldMixer.alpha

    @staticmethod
    def check_loss(loss_fn, targets=()):
        "Raises ValueError unless loss_fn (with these targets) is a classification loss."
        # With targets, the targets decide (integer: classes); without, only a known regression loss
        # is refused (at the start of a fit, before any batch is seen).
        refused = not is_classification(loss_fn, targets) if targets else is_regression_loss(loss_fn)
        if refused:
            raise ValueError(
                "OutputMixup needs a classification loss (integer class targets, a loss with "
                f"y_int=True such as CrossEntropyLossFlat, or BCE for multi-label); got "
                f"{loss_fn!r}: mixing logits means nothing for regression. Use ManifoldMixup "
                "instead.")

    def loss(self, loss_fn, logits, *targets):
        "The mixed loss of this training batch (lam, perm and the mixing drawn for this call)."
        self.check_loss(loss_fn, targets)
        if self.mixer.in_batch:  # left open by an exception
            self.mixer.end_batch()
        self.mixer.begin_batch(logits.shape[0], logits.device)
        try:
            return mixed_loss(self.mixer, loss_fn, self.mixer.point_output(0, logits), targets)
        finally:
            self.mixer.end_batch()

    def __repr__(self):
        return f"OutputMixer(alpha={self.alpha})"

