"""The loss of a batch from the Mixer's answer to "did this batch mix?".

Not mixed: the loss itself. Classification (integer targets, a loss with `y_int`, or a
cross-entropy/BCE loss): lam * L(pred, y) + (1 - lam) * L(pred, y[perm]) per sample, reduced as
the loss says; a plain cross-entropy goes through the Mixer's fused `mixed_cross_entropy` (one
log-softmax). Regression: the loss of the mixed targets.
"""
import functools
import inspect
import sys
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["mixed_loss", "is_classification_loss", "is_regression_loss", "is_classification"]

_CLASSIFICATION_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss,
                           nn.MultiLabelSoftMarginLoss)
_CLASSIFICATION_FUNCTIONS = (F.cross_entropy, F.nll_loss, F.binary_cross_entropy_with_logits,
                             F.binary_cross_entropy, F.multilabel_soft_margin_loss)
_REGRESSION_MODULES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
_REGRESSION_FUNCTIONS = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)


def _fastai_base_loss():
    "fastai's BaseLoss if fastai.losses is loaded (this module never imports fastai)."
    module = sys.modules.get("fastai.losses")
    return getattr(module, "BaseLoss", None) if module is not None else None


def _torch_loss(loss_fn):
    "The torch loss inside a fastai BaseLoss (CrossEntropyLossFlat, ...), else loss_fn."
    base = _fastai_base_loss()
    return loss_fn.func if base is not None and isinstance(loss_fn, base) else loss_fn


def _is_one_of(fn, modules, functions):
    return isinstance(fn, modules) or any(fn is f for f in functions)


def is_classification_loss(loss_fn) -> bool:
    "A loss known to take class targets: fastai's y_int, or a torch cross-entropy/BCE loss."
    return bool(getattr(loss_fn, "y_int", False)) or _is_one_of(
        _torch_loss(loss_fn), _CLASSIFICATION_MODULES, _CLASSIFICATION_FUNCTIONS)


def is_regression_loss(loss_fn) -> bool:
    "A loss known to be a regression loss (MSE, L1, smooth L1, Huber)."
    return not is_classification_loss(loss_fn) and _is_one_of(
        _torch_loss(loss_fn), _REGRESSION_MODULES, _REGRESSION_FUNCTIONS)


def is_classification(loss_fn, targets) -> bool:
    "Classification when the loss says so or any target is an integer tensor (class indices)."
    return is_classification_loss(loss_fn) or any(
        isinstance(y, torch.Tensor) and not torch.is_floating_point(y) for y in targets)


def _reduce(loss, reduction):
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _fused_cross_entropy(loss_fn, pred, targets):
    "Whether loss_fn(pred, y) is exactly torch's plain cross-entropy of [B, C] logits."
    if len(targets) != 1 or pred.dim() != 2:
        return False
    y = targets[0]
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype != torch.int64:
        return False
    if loss_fn is F.cross_entropy:
        return True
    base = _fastai_base_loss()
    if base is not None and isinstance(loss_fn, base):
        # CrossEntropyLossFlat on [B, C] logits and [B] targets calls its func unchanged.
        if type(loss_fn).__name__ != "CrossEntropyLossFlat" or loss_fn.axis not in (-1, 1):
            return False
        loss_fn = loss_fn.func
    return (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None
            and loss_fn.label_smoothing == 0 and loss_fn.ignore_index == -100
            and loss_fn.reduction in ("mean", "sum"))


@contextmanager
def _unreduced(loss_fn):
    "loss_fn returning per-sample losses, as fastai's NoneReduce does; restored afterwards."
    if hasattr(loss_fn, "reduction"):
        old = loss_fn.reduction
        loss_fn.reduction = "none"
        try:
            yield loss_fn
        finally:
            loss_fn.reduction = old
        return
    try:
        params = inspect.signature(loss_fn).parameters.values()
        takes = any(p.name == "reduction" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # a builtin without a signature: try it
        takes = True
    if not takes:
        raise TypeError(
            f"manifold mixup needs per-sample losses to mix, but the loss {loss_fn!r} has no "
            "`reduction` attribute or keyword: give it one (reduction='none' must return one loss "
            "per sample), or use a torch loss such as F.cross_entropy")
    yield functools.partial(loss_fn, reduction="none")


def mixed_loss(mixer, loss_fn, pred, targets):
    """The batch's loss: loss_fn(pred, *targets) when `mixer.mixed` is False, else the mixed
    loss (classification) or the loss of the mixed targets (regression)."""
    if not mixer.mixed:
        return loss_fn(pred, *targets)
    if not is_classification(loss_fn, targets):
        return loss_fn(pred, *(mixer.mix_targets(y) for y in targets))
    reduction = getattr(loss_fn, "reduction", "mean")
    if _fused_cross_entropy(loss_fn, pred, targets):
        return _reduce(mixer.mixed_cross_entropy(pred, targets[0]), reduction)
    perm = mixer.perm
    with _unreduced(loss_fn) as lf:
        own = lf(pred, *targets)
        other = lf(pred, *(y[perm] for y in targets))
    bs = pred.shape[0]
    if own.dim() == 0:
        raise ValueError(f"the loss {loss_fn!r} returned a scalar with reduction='none': manifold "
                         "mixup needs one loss per sample to mix them")
    if own.shape[0] != bs:  # flattened per-element losses (fastai's *Flat losses)
        own, other = own.reshape(bs, -1), other.reshape(bs, -1)
    return _reduce(mixer.mixed_loss(own, other), reduction)
