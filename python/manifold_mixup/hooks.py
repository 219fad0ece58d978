"""The forward hooks of mixup points, registered for one batch at a time.

They are plain Python that reads plain attributes and calls the `manifold_mixup::mix` op, so
that `torch.compile` traces them into the model's graph (no graph break). Every candidate gets
its hook at every training batch, whichever point was drawn, and Dynamo guards on `chosen`, so
each point gets its own graph. By default Dynamo does not guard on a module's hooks
(`torch._dynamo.config.skip_nnmodule_hook_guards`), so a graph traced once without them (a
training-mode call outside a batch) would be reused inside batches and silently skip the
mixing: attaching hooks turns those guards on, once torch._dynamo is loaded.
"""
import sys

import torch

__all__ = ["BatchState", "PointHook", "PointHooks"]

NO_POINT = -2  # _C.Mixer.NO_POINT, without importing the extension here


class BatchState:
    "What the hooks of one batch read: the chosen point and the batch's lam and perm."

    def __init__(self):
        self.chosen, self.lam, self.perm = NO_POINT, None, None


class PointHook:
    "Forward hook of candidate `index`: mixes the module's output on its first call when chosen."

    def __init__(self, batch: BatchState, index: int):
        self.batch, self.index = batch, index
        self.reset()

    def reset(self):
        # calls: every call in this batch (the dry-run evidence that the module runs);
        # tensor_output: False once the module returned something else (a tuple, a dict).
        self.calls, self.tensor_output, self.mixed = 0, True, False

    def __call__(self, module, args, output):
        self.calls += 1
        if not isinstance(output, torch.Tensor):
            self.tensor_output = False
            return None
        batch = self.batch
        # A module in eval mode (a frozen BatchNorm) is never mixed; nor is a second call.
        if batch.chosen != self.index or self.mixed or not module.training:
            return None
        self.mixed = True
        return torch.ops.manifold_mixup.mix(output, batch.perm, batch.lam)

    def __reduce__(self):
        # A model pickled or deep-copied while a batch's hooks are on it gets an inert hook:
        # never this batch's state, never a mix outside the batch.
        return (_inert_hook, ())


def _inert_hook():
    return _no_op


def _no_op(module, args, output):
    return None


class PointHooks:
    "The hooks of a list of candidate modules, attached for one batch and then removed."

    def __init__(self, modules):
        self.batch = BatchState()
        self.modules = list(modules)
        self.hooks = [PointHook(self.batch, i) for i in range(len(self.modules))]
        self._handles = []

    def arm(self, chosen, lam, perm):
        self.batch.chosen, self.batch.lam, self.batch.perm = chosen, lam, perm
        for h in self.hooks:
            h.reset()

    def disarm(self):
        "After the batch: a compiled graph still holding these hooks sees no chosen point."
        self.batch.chosen = NO_POINT

    def attach(self):
        _compiled_graphs_guard_on_hooks()
        # Prepended: the module's other forward hooks see the output the model goes on with.
        if not self._handles:
            self._handles = [m.register_forward_hook(h, prepend=True)
                             for m, h in zip(self.modules, self.hooks)]

    def detach(self):
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    @property
    def attached(self):
        return bool(self._handles)

    def retain(self, indices):
        "Keeps the candidates at `indices`, renumbered in that order (as Mixer.retain_points)."
        self.modules = [self.modules[i] for i in indices]
        self.hooks = [self.hooks[i] for i in indices]
        for i, h in enumerate(self.hooks):
            h.index = i


def _compiled_graphs_guard_on_hooks():
    """Process-wide, once torch._dynamo is loaded (torch.compile loads it; importing it here
    would cost seconds to programs that never compile): compiled graphs check the hooks of
    the modules they inline, as they check the rest of their inputs."""
    config = sys.modules.get("torch._dynamo.config")
    if config is not None and getattr(config, "skip_nnmodule_hook_guards", False):
        config.skip_nnmodule_hook_guards = False
