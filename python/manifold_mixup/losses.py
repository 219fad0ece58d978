"""The loss of a batch from the Mixer's answer to "did this batch mix?".

A batch that did not mix gets the user's loss, ``loss_fn(pred, *targets)``, whatever it is. A
batch that mixed gets, with lam[i] the weight of sample i and perm the batch's permutation:

- A known regression loss (torch's MSE, L1, smooth L1 and Huber losses: modules, functions,
  functools.partials of them, fastai's MSELossFlat and L1LossFlat): the loss of the mixed
  targets, whatever the targets' dtype (integer targets are mixed as floats of the prediction's
  dtype).
- A known classification loss: per element e of sample i, ``lam[i] * l(y[i, e]) + (1 - lam[i]) *
  l(y[perm[i], e])``, reduced as the loss reduces: 'sum' sums them, 'none' returns them in the
  shape the loss returns, and 'mean' divides their sum by the normaliser of the loss mixed the
  same way (torch divides by the kept targets' class weights, so the mixed loss divides by
  ``sum lam[i] * w(y[i, e]) + (1 - lam[i]) * w(y[perm[i], e])``, w the class weight and 0 for an
  ignored target). It is the user's loss exactly when every lam is 1. The known ones: torch's
  CrossEntropyLoss and NLLLoss and F.cross_entropy and F.nll_loss (also through functools.partial)
  with weight, ignore_index, label_smoothing and any reduction, against int64 class indices
  (classes on dim 1, any extra dims: segmentation), through the Mixer's fused
  `mixed_cross_entropy` / `mixed_nll_loss` (one log-softmax for both targets); fastai's
  CrossEntropyLossFlat at any class axis but the batch's, and LabelSmoothingCrossEntropy(Flat)
  (its smoothing term does not depend on the target, so only its weighted NLL term mixes);
  torch's BCE, BCEWithLogits (weight, pos_weight) and MultiLabelSoftMargin losses, whose 'mean'
  counts elements.
- Any other classification loss (integer targets, or a loss with y_int=True): the loss with
  reduction='none' against y and against y[perm], mixed per sample, then reduced as the loss's
  `reduction` says ('mean': the plain mean over all elements, 'sum': the sum). This assumes that
  reduction='none' returns one loss per sample (or per element, sample by sample, as fastai's
  flattened losses do) and that its 'mean' is their plain mean: a loss that normalises otherwise
  (by class weights, say) gets a plain mean.
- Anything else (floating targets, a loss not known): regression, the loss of the mixed targets.
"""
import functools
import inspect
import sys
from contextlib import contextmanager
from typing import NamedTuple, Optional

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
_REDUCTIONS = ("mean", "sum", "none")


def _fastai_losses():
    "fastai.losses if it is loaded (this module never imports fastai)."
    return sys.modules.get("fastai.losses")


def _fastai_base_loss():
    return getattr(_fastai_losses(), "BaseLoss", None)


def _torch_loss(loss_fn):
    "The loss inside a fastai BaseLoss (CrossEntropyLossFlat, ...) or a functools.partial."
    base = _fastai_base_loss()
    if base is not None and isinstance(loss_fn, base):
        loss_fn = loss_fn.func
    return loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn


def _is_one_of(fn, modules, functions):
    return isinstance(fn, modules) or any(fn is f for f in functions)


def is_classification_loss(loss_fn) -> bool:
    "A loss known to take class targets: fastai's y_int, or a torch cross-entropy/BCE loss."
    return bool(getattr(loss_fn, "y_int", False)) or _is_one_of(
        _torch_loss(loss_fn), _CLASSIFICATION_MODULES, _CLASSIFICATION_FUNCTIONS)


def is_regression_loss(loss_fn) -> bool:
    "A loss known to be a regression loss (MSE, L1, smooth L1, Huber), whatever its targets."
    return not is_classification_loss(loss_fn) and _is_one_of(
        _torch_loss(loss_fn), _REGRESSION_MODULES, _REGRESSION_FUNCTIONS)


def is_classification(loss_fn, targets) -> bool:
    """Classification when the loss says so, or when it is not a known regression loss and any
    target is an integer tensor (class indices)."""
    if is_classification_loss(loss_fn):
        return True
    return not is_regression_loss(loss_fn) and any(
        isinstance(y, torch.Tensor) and not torch.is_floating_point(y) for y in targets)


# -- the known classification losses -------------------------------------------------------------

class _ClassLoss(NamedTuple):
    "A known classification loss, as much of it as its mixed loss needs."
    kind: str  # "cross_entropy" or "nll_loss" (torch's), "label_smoothing" (fastai's)
    weight: Optional[torch.Tensor]
    ignore_index: int
    smoothing: float  # torch's label_smoothing, fastai's eps
    reduction: str
    flat_axis: Optional[int]  # a fastai BaseLoss's class axis (it flattens around it); else None

_KEYWORDS = {"cross_entropy": {"weight", "ignore_index", "reduction", "label_smoothing"},
             "nll_loss": {"weight", "ignore_index", "reduction"}}


def _unchanged(module, cls):
    "module is a cls whose forward is cls's own, with no hook of its own to run."
    return (isinstance(module, cls) and type(module).forward is cls.forward
            and not module._forward_hooks and not module._forward_pre_hooks)


def _known_class_loss(loss_fn) -> Optional[_ClassLoss]:
    "What loss_fn computes, if it is one of the classification losses reduced here; else None."
    flat_axis, base = None, _fastai_base_loss()
    if base is not None and isinstance(loss_fn, base):
        # fastai's flattening with the defaults of its cross-entropy losses, nothing else.
        if (type(loss_fn).__call__ is not base.__call__ or not loss_fn.flatten or loss_fn.floatify
                or not loss_fn.is_2d or not isinstance(loss_fn.axis, int)):
            return None
        flat_axis, loss_fn = loss_fn.axis, loss_fn.func
    smoothing_cls = getattr(_fastai_losses(), "LabelSmoothingCrossEntropy", None)
    if smoothing_cls is not None and _unchanged(loss_fn, smoothing_cls):
        return _ClassLoss("label_smoothing", loss_fn.weight, -100, float(loss_fn.eps),
                          loss_fn.reduction, flat_axis)
    if _unchanged(loss_fn, nn.CrossEntropyLoss):
        return _ClassLoss("cross_entropy", loss_fn.weight, loss_fn.ignore_index,
                          loss_fn.label_smoothing, loss_fn.reduction, flat_axis)
    if _unchanged(loss_fn, nn.NLLLoss):
        return _ClassLoss("nll_loss", loss_fn.weight, loss_fn.ignore_index, 0.0,
                          loss_fn.reduction, flat_axis)
    keywords = {}
    if isinstance(loss_fn, functools.partial):
        if loss_fn.args:
            return None
        loss_fn, keywords = loss_fn.func, loss_fn.keywords
    kind = "cross_entropy" if loss_fn is F.cross_entropy else "nll_loss" if loss_fn is F.nll_loss \
        else None
    if kind is None or not set(keywords) <= _KEYWORDS[kind]:
        return None
    return _ClassLoss(kind, keywords.get("weight"), keywords.get("ignore_index", -100),
                      keywords.get("label_smoothing", 0.0), keywords.get("reduction", "mean"),
                      flat_axis)


def _fastai_rows(axis, pred, target):
    """pred and target as a fastai BaseLoss flattens them (class axis last, then rows), viewed
    as [B, C, R] and [B, R]: its rows are sample by sample. None when its flattening would move
    the batch dimension or fastai itself would refuse the shapes (then the generic path calls
    the loss, which says why)."""
    if not (-pred.dim() <= axis < pred.dim() and -target.dim() <= axis < max(target.dim(), 1)):
        return None
    if axis % pred.dim() == 0 or (target.dim() > 1 and axis % target.dim() == 0):
        return None
    x = pred.transpose(axis, -1).contiguous()
    y = target.transpose(axis, -1).contiguous()
    if y.dtype in (torch.int8, torch.int16, torch.int32):
        y = y.long()
    b, c = pred.shape[0], x.shape[-1]
    if y.numel() * c != x.numel() or y.numel() % b:
        return None
    return x.view(b, -1, c).transpose(1, 2), y.view(b, -1)


def _mixed_class_loss(mixer, spec, pred, target):
    "The mixed loss of a known classification loss, or None where its inputs are not for it."
    if spec.reduction not in _REDUCTIONS:
        raise ValueError(f"the loss's reduction must be one of {_REDUCTIONS}, got "
                         f"{spec.reduction!r}")
    if not isinstance(target, torch.Tensor) or not isinstance(pred, torch.Tensor):
        return None
    x, y = pred, target
    if spec.flat_axis is not None:
        rows = _fastai_rows(spec.flat_axis, pred, target)
        if rows is None:
            return None
        x, y = rows
    elif spec.kind == "label_smoothing" and not torch.is_floating_point(y):
        y = y.long()  # as fastai's LabelSmoothingCrossEntropy does
    if y.dtype != torch.int64 or x.dim() < 2 or y.shape != x.shape[:1] + x.shape[2:]:
        return None  # probability targets, unbatched inputs, wrong shapes: not for these formulas
    args = dict(weight=spec.weight, ignore_index=spec.ignore_index, reduction=spec.reduction)
    if spec.kind == "cross_entropy":
        loss = mixer.mixed_cross_entropy(x, y, label_smoothing=spec.smoothing, **args)
    elif spec.kind == "nll_loss":
        loss = mixer.mixed_nll_loss(x, y, **args)
    else:
        # fastai's eps / c * (the smoothing term reduced over elements, a plain mean for 'mean')
        # + (1 - eps) * the weighted NLL: the smoothing term is the same for both targets.
        log_probs = F.log_softmax(x, dim=1)
        smooth = _reduce(-log_probs.sum(1), spec.reduction)
        loss = smooth * (spec.smoothing / x.shape[1]) \
            + (1 - spec.smoothing) * mixer.mixed_nll_loss(log_probs, y, **args)
    if spec.reduction == "none" and spec.flat_axis is not None:
        loss = loss.reshape(-1)  # fastai's rows
    return loss


# -- the generic path --------------------------------------------------------------------------

def _reduce(loss, reduction):
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _reduction_of(loss_fn):
    "The reduction loss_fn applies: its attribute, a partial's keyword, or its default."
    if hasattr(loss_fn, "reduction"):
        return loss_fn.reduction
    if isinstance(loss_fn, functools.partial) and "reduction" in loss_fn.keywords:
        return loss_fn.keywords["reduction"]
    try:
        param = inspect.signature(loss_fn).parameters.get("reduction")
    except (TypeError, ValueError):
        param = None
    if param is not None and isinstance(param.default, str):
        return param.default
    return "mean"


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


def _generic_mixed_loss(mixer, loss_fn, pred, targets):
    "Per-sample losses against y and y[perm], mixed, then reduced as the loss's reduction says."
    reduction = _reduction_of(loss_fn)
    perm = mixer.perm
    with _unreduced(loss_fn) as lf:
        own = lf(pred, *targets)
        other = lf(pred, *(y[perm] for y in targets))
    bs = pred.shape[0]
    if own.dim() == 0 or own.numel() % bs:
        raise ValueError(f"the loss {loss_fn!r} returned shape {tuple(own.shape)} with "
                         f"reduction='none': manifold mixup needs one loss per sample (or per "
                         f"element, sample by sample) of the batch's {bs} to mix them")
    shape = own.shape
    if own.shape[0] != bs:  # flattened per-element losses (fastai's *Flat losses)
        own, other = own.reshape(bs, -1), other.reshape(bs, -1)
    loss = _reduce(mixer.mixed_loss(own, other), reduction)
    return loss.reshape(shape) if reduction == "none" else loss


def _mixed_target(mixer, y, pred):
    "A regression target mixed; integer targets as floats of the prediction's dtype."
    if isinstance(y, torch.Tensor) and not torch.is_floating_point(y):
        y = y.to(pred.dtype if torch.is_floating_point(pred) else torch.get_default_dtype())
    return mixer.mix_targets(y)


def mixed_loss(mixer, loss_fn, pred, targets):
    """The batch's loss: loss_fn(pred, *targets) when `mixer.mixed` is False, else the mixed
    loss (classification, reduced as loss_fn reduces) or the loss of the mixed targets
    (regression). See the module's docstring for which losses are known and what is assumed of
    the others."""
    if not mixer.mixed:
        return loss_fn(pred, *targets)
    if not is_classification(loss_fn, targets):
        return loss_fn(pred, *(_mixed_target(mixer, y, pred) for y in targets))
    spec = _known_class_loss(loss_fn)
    if spec is not None and len(targets) == 1:
        loss = _mixed_class_loss(mixer, spec, pred, targets[0])
        if loss is not None:
            return loss
    return _generic_mixed_loss(mixer, loss_fn, pred, targets)
