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
from .points import ForwardRecord, Points
from .provenance import InputProvenance
from .losses import is_classification, is_regression_loss, mixed_loss
from .selection import ManifoldMixupModule, select_modules, unwrap_model

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


def check_probability(value, name):
    "A real number in [0, 1] as a float; bools refused."
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not 0 <= float(value) <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {type(value).__name__} {value!r}")
    return float(value)


def check_level(value, name):
    "A finite real number >= 0 as a float; bools refused."
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {type(value).__name__} {value!r}")
    return float(value)


def mixing_settings(lam_mode="sample", fold=True, prob=1.0, add_noise=0.0, mult_noise=0.0):
    """The keyword arguments of the native Mixer beyond alpha, checked here so that a wrong one
    is named in Python's terms: how lam is drawn, how often a batch mixes, and Noisy Feature
    Mixup's noise levels."""
    if lam_mode not in ("sample", "batch"):
        raise ValueError(f"lam_mode must be 'sample' (one weight per sample) or 'batch' (one per "
                         f"batch, as the paper's code), got {lam_mode!r}")
    return dict(lam_mode=lam_mode, fold=check_flag(fold, "fold"),
                prob=check_probability(prob, "prob"), add_noise=check_level(add_noise, "add_noise"),
                mult_noise=check_level(mult_noise, "mult_noise"))


def patchup_settings(patchup=None, patchup_block=7, patchup_gamma=0.9, noisy=False):
    "PatchUp's keyword arguments of the native Mixer, checked and named in Python's terms."
    if patchup not in (None, "soft", "hard"):
        raise ValueError(f"patchup must be None (mixup), 'soft' or 'hard', got {patchup!r}")
    if patchup is not None and noisy:
        raise ValueError("add_noise and mult_noise are Noisy Feature Mixup's, which mixes whole "
                         "outputs: they do not go with patchup")
    if isinstance(patchup_block, bool) or not isinstance(patchup_block, numbers.Integral) \
            or patchup_block < 1 or patchup_block % 2 == 0:
        raise ValueError(f"patchup_block must be an odd int >= 1 (the block is centred on a "
                         f"feature), got {patchup_block!r}")
    return dict(patchup=patchup, patchup_block=int(patchup_block),
                patchup_gamma=check_probability(patchup_gamma, "patchup_gamma"))


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
            torch.compile (modules are selected and mixed inside the wrapper).
        alpha: parameter of the Beta(alpha, alpha) law of the weights; 0 means no mixing.
        modules: the modules to mix at (a list, or one module); None selects them by the rules
            of `manifold_mixup.selection.select_modules`.
        input_mixup: whether the input is one of the points (left out automatically when the
            input is not all floating tensors, e.g. tabular categories or token ids).
        seed: None draws from torch's default generators (torch.manual_seed governs); an int
            gives this mixer its own generator (under DDP pass e.g. ``seed + rank``).
        verbose: True prints which modules were selected and why (rank 0 only), False is
            silent, or pass a function taking the line (e.g. ``logging.info``).
        lam_mode: ``"sample"``, one lam per sample (the reference extension's), or ``"batch"``,
            one per batch (the paper's code).
        fold: fold lam to ``max(lam, 1 - lam)`` (True), or use it as drawn (False, the paper's
            code).
        prob: the probability that a batch mixes at all (timm's ``prob``); a batch left
            unmixed trains plainly and is counted in ``mixer.skipped_batches``.
        add_noise, mult_noise: Noisy Feature Mixup (Lim et al.): after the mix, ``h <- (1 +
            mult_noise * xi_m) * h + add_noise * xi_a``, xi_m uniform on [-1, 1] and xi_a normal,
            each scaled by a Beta(2, 5) draw per batch, as the authors' code (0: none).
        patchup: None mixes whole outputs; ``"soft"`` or ``"hard"`` is PatchUp (Faramarzi et
            al.): only blocks of feature maps ``[B, C, H, W]`` are mixed (soft) or swapped
            (hard), the loss weighs the targets by the blocks' area, and points whose output
            is not a feature map (and a non-image input) are left out with a line.
        patchup_block, patchup_gamma: PatchUp's block size (odd) and gamma, as the authors'
            ``block_size`` and ``gamma`` (see docs/family.md).

    The points live as long as the mixer (until ``remove()``): inside ``batch()`` every
    training-mode forward of the model mixes at the drawn point with the batch's lam and perm
    (a second forward for SAM or R-Drop, a checkpointed layer recomputed in the backward), and
    each ``loss`` matches the forward before it; outside ``batch()``, in eval mode, or in a copy
    or pickle of the model (which holds the original classes) nothing mixes. A forward whose
    drawn point did not run trains on the plain loss and is counted in
    ``mixer.unmixed_batches``; a module that runs twice in one forward is mixed on its first
    call only (warned once); a point whose output has no batch dimension (or is not floating)
    is left out with a line, as is one that never runs in its first training batches.
    Counters: ``mixer.batches``, ``mixer.point_mixes``, ``mixer.input_mixes``,
    ``mixer.unmixed_batches``, ``mixer.repeated_calls``, ``mixer.skipped_batches``.
    """

    # A candidate that has run in no forward of this many training batches is left out: a
    # layer dropped at random (LayerDrop, stochastic depth) runs in some batch long before.
    NEVER_RAN_BATCHES = 20

    def __init__(self, model: nn.Module, alpha=0.4, modules=None, input_mixup: bool = True,
                 seed=None, verbose=True, *, lam_mode="sample", fold=True, prob=1.0,
                 add_noise=0.0, mult_noise=0.0, patchup=None, patchup_block=7, patchup_gamma=0.9):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        alpha = check_alpha(alpha)
        check_flag(input_mixup, "input_mixup")
        settings = mixing_settings(lam_mode, fold, prob, add_noise, mult_noise)
        settings.update(patchup_settings(patchup, patchup_block, patchup_gamma,
                                         noisy=bool(add_noise or mult_noise)))
        _refuse_data_parallel_over_devices(model)
        self._say, self._verbose = _logger(verbose), verbose not in (False, None)
        self.model, self._root = model, unwrap_model(model)
        if isinstance(modules, nn.Module):
            modules = [modules]
        selected = select_modules(model, modules, log=self._say)
        # Rules 3 to 6 chose without knowing which modules see only one input's branch of a
        # multi-input model: the first training batch called with several inputs shows it.
        self._observe = modules is None and not all(isinstance(m, ManifoldMixupModule) for m in selected)
        self._probe = None
        self.mixer = _C.Mixer(alpha=alpha, input_mixup=input_mixup, seed=_check_seed(seed), **settings)
        self._install(selected)
        self._active = self._begun = self._removed = False
        self._synced = None
        self._input_checked = self._warned_repeat = False
        self._training_batches = 0

    def _install(self, selected):
        "Makes `selected` the mixup points (the native Mixer's, and the modules' classes)."
        names = {id(m): n for n, m in self._root.named_modules()}
        self.mixer.clear_points()
        for m in selected:
            self.mixer.add_point(names.get(id(m)) or type(m).__name__)
        fields = [m.field if isinstance(m, ManifoldMixupModule) else None for m in selected]
        method = {k: self.mixer.settings[k]
                  for k in ("patchup", "patchup_block", "patchup_gamma", "add_noise", "mult_noise")}
        self._points = Points(self._root, selected, fields, method)
        self._state = self._points.state
        self._ran_ever = [False] * len(selected)
        self._warned_not_run = set()

    @property
    def modules(self):
        "The mixup point modules, in the order of point_names and mixer.point_mixes."
        return list(self._points.modules)

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
        "Whether the current batch's latest forward has mixed (the input, or the drawn module)."
        self._sync()
        return self._active and self.mixer.mixed

    # -- one batch --------------------------------------------------------------------------
    @contextmanager
    def batch(self, *inputs):
        """Starts a training batch: yields the inputs, mixed if the input was drawn (one tensor
        if one was given, else a tuple). Call the model and `loss` inside the block."""
        mixed = self._begin(inputs)
        try:
            yield mixed[0] if len(mixed) == 1 else mixed
        except BaseException:
            self._end(completed=False)
            raise
        self._end(completed=True)

    def loss(self, loss_fn, pred, *targets):
        """The loss of the batch's latest forward: for classification (integer targets, a
        loss with y_int, or a cross-entropy/BCE loss) ``lam * l(pred, y) + (1 - lam) *
        l(pred, y[perm])`` per element, reduced as loss_fn reduces (class weights,
        ignore_index and label smoothing counted as torch counts them; see
        manifold_mixup.losses); for a regression loss ``loss_fn(pred, mix_targets(y))``; the
        plain ``loss_fn(pred, *targets)`` when that forward did not mix (eval mode, alpha 0, or
        the drawn module did not run). An unknown loss must accept ``reduction='none'`` or have
        a `reduction` attribute, as torch's losses do."""
        if not self._in_batch("loss"):
            return loss_fn(pred, *targets)
        self._sync()
        return mixed_loss(self.mixer, loss_fn, pred, targets)

    def mix_targets(self, *targets):
        "Regression targets mixed as the batch's latest forward was (unchanged if it did not mix)."
        if self._in_batch("mix_targets"):
            self._sync()
            targets = tuple(self.mixer.mix_targets(y) for y in targets)
        return targets[0] if len(targets) == 1 else targets

    def mix_mask(self, mask, padding=False):
        """The attention mask of the mixed sequences: a mixed position holds both samples'
        states, so it is valid where either sample's is. `mask` is [B, T, ...], True or nonzero
        where a position is valid (Hugging Face's attention_mask); `padding=True` for masks that
        are True where a position is padding (torch's key_padding_mask). Unchanged when nothing
        mixes in this batch (eval mode, alpha 0). Layers before the drawn point see the union
        too: see the docs on padding."""
        if not self._in_batch("mix_mask") or self.mixer.chosen == _C.Mixer.NO_POINT:
            return mask
        if not isinstance(mask, torch.Tensor) or mask.dim() < 1 or mask.shape[0] != self.mixer.batch_size:
            raise ValueError(f"mix_mask: mask must be a tensor whose dim 0 is the batch "
                             f"({self.mixer.batch_size}), got {getattr(mask, 'shape', type(mask).__name__)}")
        other = mask.index_select(0, self.mixer.perm.to(mask.device))
        if mask.dtype == torch.bool:
            return mask & other if padding else mask | other
        return torch.minimum(mask, other) if padding else torch.maximum(mask, other)

    def remove(self):
        "Ends any batch and removes the points (the model's classes are restored); final."
        if self._removed:
            return
        if self.mixer.in_batch or self._begun:
            self._end(completed=False)
        self._points.remove()
        self._removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __reduce_ex__(self, protocol):
        # It holds the native Mixer and the model's swapped classes: a copy could not own them.
        raise TypeError("a ManifoldMixer cannot be pickled or copied (it owns the model's mixup "
                        "points and the native Mixer): save the model's state_dict, or set the "
                        "attribute that holds the mixer to None (after remove()) before pickling "
                        "the module that holds it")

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
        if self._removed or self._points.removed:
            raise RuntimeError("ManifoldMixer: remove() was called (or another mixer took this "
                               "model over); create a new mixer")
        if self.mixer.in_batch or self._begun:  # left open by an exception
            self._end(completed=False)
        if not inputs:
            raise TypeError("ManifoldMixer.batch() needs the batch's input tensor(s)")
        self._begun = True
        self._active = self._root.training
        if not self._active:  # eval mode never mixes
            return inputs
        if not self._input_checked:
            self._check_input(inputs)
        ref = inputs[0]
        if not isinstance(ref, torch.Tensor) or ref.dim() == 0:
            raise TypeError("ManifoldMixer.batch: the first input must be a tensor whose dim 0 "
                            f"is the batch, got {type(ref).__name__}")
        if self._observe:
            self._begin_observing(inputs, ref.shape[0])
        if self._probe is not None:  # this batch only shows which modules see which inputs
            alpha, self.mixer.alpha = self.mixer.alpha, 0.0
            try:
                chosen = self.mixer.begin_batch(ref.shape[0], ref.device)
            finally:
                self.mixer.alpha = alpha
            self._probe.__enter__()
        else:
            chosen = self.mixer.begin_batch(ref.shape[0], ref.device)
        self._arm(chosen)
        if chosen != _C.Mixer.INPUT_POINT:
            return inputs
        first = self.mixer.mix_input(ref)  # counts the input's mix once per batch
        return (first,) + tuple(self.mixer.mix(x) for x in inputs[1:])

    def _arm(self, chosen):
        state = self._state
        state.chosen, state.chosen_t = chosen, self.mixer.chosen_tensor
        state.lam, state.perm, state.key = self.mixer.lam, self.mixer.perm, self.mixer.key
        state.noise = self.mixer.noise
        # A forward that does not go through the root model's own call still has a record.
        state.forward = ForwardRecord(state.n_points)
        self._first_record, self._synced = state.forward, None
        state.armed = True

    def _begin_observing(self, inputs, batch):
        "Once: a model called with several batch tensors gets one batch observed, not mixed."
        self._observe = False
        tensors = [x for x in inputs if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == batch]
        if len(tensors) >= 2:
            watched = [m for m in self._root.modules() if not isinstance(m, torch.jit.ScriptModule)]
            self._probe = InputProvenance(tuple(tensors), modules=watched)

    def _end_observing(self, completed):
        "Chooses the points again without the modules that saw only some of the inputs."
        probe, self._probe = self._probe, None
        probe.__exit__(None, None, None)
        if not completed:
            return
        partial = probe.partial_modules()
        chosen = self.modules
        if not any(m in chosen for m in partial):
            return
        names = {id(m): n for n, m in self._root.named_modules()}
        left = [names.get(id(m), type(m).__name__) for m in chosen if any(m is p for p in partial)]
        self._points.remove()
        self._say(f"ManifoldMixup: {len(left)} of the chosen modules see only some of the model's "
                  f"inputs ({', '.join(left)}): mixing there would mix part of each sample's "
                  "features while the loss is fully mixed, so they are left out.")
        self._install(select_modules(self.model, None, log=self._say, partial_inputs=partial))

    def _check_input(self, inputs):
        """Once: integer inputs (tabular categories) cannot be mixed, nor by PatchUp anything
        but images [B, C, H, W]; leave the input out."""
        self._input_checked = True
        floating = all(isinstance(x, torch.Tensor) and torch.is_floating_point(x) for x in inputs)
        images = all(isinstance(x, torch.Tensor) and x.dim() == 4 for x in inputs)
        why = ("not all floating tensors (e.g. tabular categories or token ids)" if not floating
               else "not all images [B, C, H, W], which PatchUp needs"
               if self.mixer.patchup is not None and not images else None)
        if self.mixer.input_mixup and why:
            self.mixer.input_mixup = False
            if self._verbose and _rank() == 0:
                warnings.warn(f"ManifoldMixup: the batch input is {why}, so the input is left out "
                              "of the mixup points; the modules are still mixed.", stacklevel=4)

    def _sync(self):
        "Hands the latest forward's record to the native Mixer, once per forward."
        record = self._state.forward
        if record is self._synced or not self.mixer.in_batch:
            return
        self._synced = record
        if record is not self._first_record:
            self.mixer.begin_forward()
        for i, ran in enumerate(record.ran):
            self._ran_ever[i] = self._ran_ever[i] or ran
        chosen = self.mixer.chosen
        if chosen >= 0 and record.ran[chosen] and record.unmixable[chosen] is None:
            self.mixer.record_point_mixed(chosen, 1 + record.repeats[chosen], record.masks[chosen])

    def _end(self, completed):
        self._state.armed = False
        if self._probe is not None:
            if self.mixer.in_batch:
                self.mixer.end_batch()
            self._end_observing(completed)
            self._active = self._begun = False
            return
        if self.mixer.in_batch:
            self._sync()
            record, chosen = self._state.forward, self.mixer.chosen
            unmixed = chosen >= 0 and not self.mixer.mixed
            self.mixer.end_batch()
            if completed:
                self._training_batches += 1
                if unmixed:
                    self._say_not_run(chosen, record)
                self._drop_points_that_cannot_mix(record)
            if self.mixer.repeated_calls and not self._warned_repeat:
                self._warned_repeat = True
                warnings.warn("ManifoldMixup: a mixup point ran more than once in a forward (a "
                              "module used recurrently or shared); only its first call was "
                              "mixed. Pass module_list=[...] to choose modules that run once "
                              "per forward.", stacklevel=4)
        self._active = self._begun = False

    def _say_not_run(self, chosen, record):
        "Once per point: why a batch whose drawn point is a module trained on the plain loss."
        if chosen in self._warned_not_run or record.unmixable[chosen] is not None:
            return
        self._warned_not_run.add(chosen)
        warnings.warn(f"ManifoldMixup: the drawn point {self.point_names[chosen]!r} did not run in "
                      "this batch's forward (a layer skipped by random depth, a branch not taken, "
                      "a module unused in training, or a forward outside `mixer.batch()`), so the "
                      "batch trained on the plain loss; counted in mixer.unmixed_batches.",
                      stacklevel=5)

    def _drop_points_that_cannot_mix(self, record):
        "Leaves out, with a line, the points whose output cannot mix and those that never run."
        names = self.point_names
        why = {i: f"{reason}" for i, reason in enumerate(record.unmixable) if reason is not None}
        if self._training_batches >= self.NEVER_RAN_BATCHES:
            why.update({i: f"did not run in the first {self._training_batches} training batches"
                        for i, ran in enumerate(self._ran_ever) if not ran})
        if not why:
            return
        keep = [i for i in range(len(names)) if i not in why]
        self.mixer.retain_points(keep)
        self._points.retain(keep)
        self._ran_ever = [self._ran_ever[i] for i in keep]
        self._warned_not_run = {keep.index(i) for i in self._warned_not_run if i in keep}
        self._say(f"ManifoldMixup: {len(why)} of {len(names)} mixup points left out: "
                  + "; ".join(f"{names[i]} ({why[i]})" for i in sorted(why)) + ".")
        if not keep and not self.mixer.input_mixup:
            warnings.warn("ManifoldMixup: none of the mixup points can be mixed (see above) and "
                          "the input is not a point: nothing will be mixed.", stacklevel=5)


def _refuse_data_parallel_over_devices(model):
    "DataParallel splits the batch over replicas, each of which would mix its chunk with perm[B]."
    while True:
        if isinstance(model, nn.DataParallel):
            if len(model.device_ids or []) > 1:
                raise ValueError(
                    f"ManifoldMixer: the model is in nn.DataParallel over {len(model.device_ids)} "
                    "devices: each replica sees a chunk of the batch, which cannot be mixed with "
                    "the whole batch's permutation. Use DistributedDataParallel (one process per "
                    "GPU; see examples/ddp_torchrun.py), or DataParallel over one device.")
            model = model.module
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return


class OutputMixer:
    """Output Mixup for a plain PyTorch training loop: the logits are mixed inside the loss.

        om = OutputMixer(alpha=0.4)
        for x, y in loader:
            loss = om.loss(F.cross_entropy, model(x), y)   # training batches only
            opt.zero_grad(); loss.backward(); opt.step()

    Each call draws lam and perm, mixes the logits and returns the mixed loss (see
    `ManifoldMixer.loss`). Classification only: a loss known to be a regression loss, or
    floating targets with a loss not known to be a classification loss, raise ValueError.
    Call the loss itself for evaluation. `alpha` may be set before any call. `lam_mode`,
    `fold`, `prob`, `add_noise` and `mult_noise` are ManifoldMixer's (the noise goes on the
    logits).
    """

    def __init__(self, alpha=0.4, seed=None, *, lam_mode="sample", fold=True, prob=1.0,
                 add_noise=0.0, mult_noise=0.0):
        self.mixer = _C.Mixer(alpha=check_alpha(alpha), input_mixup=False, seed=_check_seed(seed),
                              **mixing_settings(lam_mode, fold, prob, add_noise, mult_noise))
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

