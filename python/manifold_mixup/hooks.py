"""The forward hooks of mixup points, registered for one batch at a time.

They are plain Python that reads plain attributes and calls the `manifold_mixup::mix` op, so
that `torch.compile` traces them into the model's graph (no graph break). Every candidate gets
its hook at every training batch, whichever point was drawn: a compiled model then always sees
the same hooks (Dynamo does not guard on a module's hook dicts), and guards on `chosen`, so each
point gets its own graph instead of a stale graph that silently skips the mixing.
"""
import torch

__all__ = ["BatchState", "PointHook", "PointHooks"]


class BatchState:
    "What the hooks of one batch read: the chosen point and the batch's lam and perm."

    def __init__(self):
        self.chosen, self.lam, self.perm = -2, None, None


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

    def attach(self):
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
