"""Mixup points: the modules a mixer may mix at, for as long as the mixer lives.

Each point module's class is swapped for a generated subclass of it, as FSDP2's `fully_shard`
does, whose forward runs the module's own forward and then hands the output to the point's
`MixupPoint`; the root model's class is swapped the same way, so that each forward of the model
starts a fresh `ForwardRecord`. `Points.remove()` puts the original classes back. Why classes
rather than forward hooks added for each batch:
- a point exists from the mixer's creation to its removal, and the batch's state says whether it
  mixes: a second forward in a batch, a checkpointed layer recomputed in the backward, and a
  `validate()` in the middle of a fit all see the same points;
- torch.compile guards on the class of every module it inlines, so a graph traced before the
  mixer existed (or for another model of the same class) is never reused for a model whose
  points mix, and nothing a batch changes is a class: one graph serves every batch, whichever
  point is drawn (it reads the drawn point from a tensor, see `MixupPoint.__call__`);
- pickling (torch.save, copy.deepcopy, fastai's export) records the original classes, so a saved
  or copied model holds no trace of the mixer and never mixes.
The state a batch sets (`BatchState`) and what a forward saw (`ForwardRecord`) are plain Python
objects: torch.compile traces the reads and replays the writes.
"""
import bisect
import copyreg
import dataclasses
import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = ["NO_POINT", "INPUT_POINT", "BatchState", "ForwardRecord", "MixupPoint", "Points",
           "batch_first_hint"]

NO_POINT, INPUT_POINT = -2, -1  # _C.Mixer.NO_POINT and INPUT_POINT, without the extension here
# How many of the latest forwards that built a graph keep their draw for a recomputation in the
# backward: gradient accumulation summing more micro-batches than this before one backward
# recomputes the oldest unmixed (and says so).
MAX_REPLAYED_FORWARDS = 256


class ForwardRecord:
    "What the points saw in one forward of the model, by point index."

    def __init__(self, n):
        self.ran = [False] * n        # the point's module ran in training mode
        self.repeats = [0] * n        # its calls after the first (left unmixed)
        self.unmixable = [None] * n   # why its output could not be mixed, when it could not
        self.masks = [None] * n       # PatchUp: the block mask its mix drew (it weighs the targets)


class BatchState:
    """What every point reads in a forward: whether a training batch is open, the drawn point,
    lam, perm, the Philox key of PatchUp's mask or of the noise, and Noisy Feature Mixup's noise
    levels. Written by the mixer at the start and end of each batch; the method (`patchup`:
    None, 'soft' or 'hard', with its block size and gamma; whether there is noise) is the
    mixer's, set once."""

    def __init__(self, n_points, patchup=None, patchup_block=7, patchup_gamma=0.9, add_noise=0.0,
                 mult_noise=0.0):
        self.n_points = n_points
        self.patchup, self.patchup_block, self.patchup_gamma = patchup, patchup_block, patchup_gamma
        self.noisy = add_noise > 0 or mult_noise > 0
        self.armed = False
        self.chosen = NO_POINT  # read by eager forwards
        self.chosen_t = None    # the same as a 0-d tensor on the batch's device: compiled graphs
        self.lam = self.perm = self.key = self.noise = None
        self.warned_old_graph = False
        self.forward = ForwardRecord(n_points)
        # What a checkpointed layer recomputed in the backward replays: the draw of the forward it
        # belongs to, which other forwards may have followed (micro-batches summed before one
        # backward, a clean forward for a log). Forwards that build a graph, in order:
        # (first autograd sequence number, (chosen, lam, perm, key, noise) or None for a forward
        # that did not mix). Every node a forward creates numbers from its first on, on its
        # thread, so the node being run when a recomputation starts (the checkpoint's own, or
        # the one whose saved tensor is unpacked) says which forward it belongs to.
        self.graphs = []

    def begin_forward(self, module):
        "A forward of the model starts: a fresh record, and the draw a recomputation replays."
        self.forward = ForwardRecord(self.n_points)
        if (torch.compiler.is_compiling()  # compiled graphs recompute without Python
                or not (module.training and torch.is_grad_enabled())  # no graph, no recomputation
                or torch._C._current_graph_task_id() != -1):  # a recomputation itself
            return
        draw = (self.chosen, self.lam, self.perm, self.key, self.noise) if self.armed else None
        if draw is None and (not self.graphs or self.graphs[-1][1] is None):
            return  # the forward before did not mix either: its range covers this one
        self.graphs.append((torch._C._autograd._get_sequence_nr(), draw))
        if len(self.graphs) > MAX_REPLAYED_FORWARDS:
            del self.graphs[0]

    def replayed_draw(self):
        """The draw of the forward whose graph the backward is running: None when it did not
        mix, or when it is older than the MAX_REPLAYED_FORWARDS forwards kept (said once)."""
        node = torch._C._current_autograd_node()
        if not self.graphs or node is None:
            return None
        seq = node._sequence_nr()
        starts = [first for first, _ in self.graphs]
        k = bisect.bisect_right(starts, seq) - 1
        if k < 0:
            if not self.warned_old_graph:
                self.warned_old_graph = True
                warnings.warn(f"ManifoldMixup: a checkpointed layer is recomputed for a forward older "
                              f"than the last {MAX_REPLAYED_FORWARDS} forwards that built a graph; its "
                              "mix is not replayed, so its gradients are those of an unmixed layer.")
            return None
        return self.graphs[k][1]


def batch_first_hint(module):
    """True or False when the module (or the first of its submodules that says so, such as a
    TransformerEncoderLayer's self_attn) declares `batch_first`; None when nothing does."""
    for m in module.modules():
        flag = getattr(m, "batch_first", None)
        if isinstance(flag, bool):
            return flag
    return None


def _mix(state, t, dim, perm, lam, key, noise):
    "t mixed by the mixer's method along `dim`, and PatchUp's mask (None for mixup)."
    if state.patchup is not None:  # _target made sure t is [B, C, H, W]
        return torch.ops.manifold_mixup.patchup(t, perm, lam, key, state.patchup_block,
                                                state.patchup_gamma)
    noisy = (noise, key) if state.noisy else (None, None)
    if dim == 0:
        return torch.ops.manifold_mixup.mix(t, perm, lam, *noisy), None
    mixed = torch.ops.manifold_mixup.mix(t.transpose(0, dim), perm, lam, *noisy)
    return mixed.transpose(0, dim), None


class MixupPoint:
    """Point `index` of a mixer: what the module's generated forward calls with its output.

    It mixes the output when a training batch is open, the module is in training mode, this
    point is the batch's drawn one, and this is the module's first call in this forward of the
    model (a module run twice in one forward, recurrently or shared, mixes on its first call).
    It mixes the tensor that carries the batch: the output itself, or for a tuple, list, dict,
    dataclass or Hugging Face ModelOutput the entry named by `field` (else the first floating
    tensor),
    passing the rest through unchanged; along dim 0, or along dim 1 for a sequence-first module
    (`batch_first=False`). An output it cannot mix (no dimension of the batch's size where the
    batch must be, not floating, no tensor) is left as it is and recorded, never guessed."""

    def __init__(self, state: BatchState, index: int, field=None, batch_first=None):
        self.state, self.index, self.field, self.batch_first = state, index, field, batch_first

    def __call__(self, module, out):
        state = self.state
        if not module.training:
            return out
        compiling = torch.compiler.is_compiling()
        if not compiling and torch._C._current_graph_task_id() != -1:
            # A forward inside the backward: a checkpointed layer being recomputed.
            return self._replay(out)
        if not state.armed:
            return out
        record, i = state.forward, self.index
        if record.ran[i]:
            record.repeats[i] += 1
            return out
        record.ran[i] = True
        target = self._target(out, state.lam.shape[0])
        if isinstance(target, str):
            record.unmixable[i] = target
            return out
        t, dim, rebuild = target
        if compiling:
            # One graph for every draw: lam is exactly 1 (the op copies the row) and the noise
            # levels 0 (the op adds none) unless this point is the drawn one, read from a tensor
            # rather than a Python int (a guard).
            drawn = state.chosen_t == i
            lam = torch.where(drawn, state.lam, torch.ones_like(state.lam))
            noise = (torch.where(drawn, state.noise, torch.zeros_like(state.noise))
                     if state.noisy else None)
        elif state.chosen == i:
            lam, noise = state.lam, state.noise
        else:
            return out
        mixed, mask = _mix(state, t, dim, state.perm, lam, state.key, noise)
        if mask is not None:
            record.masks[i] = mask
        return rebuild(mixed)

    def _replay(self, out):
        replay = self.state.replayed_draw()
        if replay is None or replay[0] != self.index:
            return out
        _, lam, perm, key, noise = replay
        target = self._target(out, lam.shape[0])
        if isinstance(target, str):
            return out
        t, dim, rebuild = target
        return rebuild(_mix(self.state, t, dim, perm, lam, key, noise)[0])

    # -- which tensor of the output carries the batch -----------------------------------------
    def _target(self, out, batch):
        "(tensor, batch dim, rebuild) for the tensor to mix, or a string saying why none."
        found = self._find_target(out, batch)
        if self.state.patchup is not None and not isinstance(found, str):
            t, dim, _ = found
            if dim != 0 or t.dim() != 4:
                return (f"PatchUp mixes feature maps [B, C, H, W], and its output of shape "
                        f"{tuple(t.shape)} is not one")
        return found

    def _find_target(self, out, batch):
        if isinstance(out, torch.Tensor):
            where = self._batch_dim(out, batch)
            return where if isinstance(where, str) else (out, where, _same)
        key = self.field
        if isinstance(out, (tuple, list)):
            items = list(out)
            if key is None:
                key = next((k for k, v in enumerate(items) if _floating(v)), None)
            if not isinstance(key, int) or not -len(items) <= key < len(items):
                return f"its output is a {type(out).__name__} with no floating tensor at {key!r}"
            value, rebuild = items[key], _rebuild_sequence(out, items, key)
        elif isinstance(out, Mapping):
            if key is None:
                key = next((k for k, v in out.items() if _floating(v)), None)
            if key not in out:
                return f"its output is a {type(out).__name__} with no floating tensor under {key!r}"
            value, rebuild = out[key], _rebuild_mapping(out, key)
        elif dataclasses.is_dataclass(out) and not isinstance(out, type):
            names = [f.name for f in dataclasses.fields(out)]
            if key is None:
                key = next((n for n in names if _floating(getattr(out, n))), None)
            if key not in names:
                return f"its output is a {type(out).__name__} with no floating tensor field {key!r}"
            value, rebuild = getattr(out, key), lambda t: dataclasses.replace(out, **{key: t})
        else:
            return f"its output is a {type(out).__name__}, not a tensor"
        if not isinstance(value, torch.Tensor):
            return f"its output's entry {key!r} is a {type(value).__name__}, not a tensor"
        where = self._batch_dim(value, batch)
        return where if isinstance(where, str) else (value, where, rebuild)

    def _batch_dim(self, t, batch):
        "The dimension of `t` that holds the batch's samples, or a string saying why none does."
        if not t.is_floating_point():
            return f"its output is {t.dtype}, not floating"
        if self.batch_first is False:  # declared sequence-first: [T, B, ...]
            if t.dim() >= 2 and t.shape[1] == batch:
                return 1
            return (f"its module is sequence-first (batch_first=False) but its output of shape "
                    f"{tuple(t.shape)} has no batch of {batch} along dim 1")
        if t.dim() >= 1 and t.shape[0] == batch:
            return 0
        return (f"its output of shape {tuple(t.shape)} has no batch of {batch} along dim 0 "
                "(a module shared by every sample, such as position embeddings, or a layout the "
                "module does not declare with batch_first)")


def _same(t):
    return t


def _floating(v):
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _rebuild_sequence(out, items, key):
    def rebuild(t):
        new = list(items)
        new[key] = t
        if isinstance(out, list):
            return new
        if type(out) is tuple:
            return tuple(new)
        if hasattr(out, "_fields"):  # a namedtuple
            return type(out)(*new)
        return type(out)(new)  # torch.return_types and other struct sequences
    return rebuild


def _rebuild_mapping(out, key):
    def rebuild(t):
        import copy
        new = copy.copy(out)  # a ModelOutput copies as its class, with its fields
        new[key] = t
        return new
    return rebuild


# -- the generated classes ----------------------------------------------------------------------
def _point_class(base, point, state, owner):
    """A subclass of `base` whose forward runs base's, then `point` on the output; with `state`
    (the root model) it first starts a new forward record. Same names as base, so that printing
    and selection see the user's class; pickled as base."""

    def forward(self, *args, **kwargs):
        if state is not None:
            state.begin_forward(self)
        out = base.forward(self, *args, **kwargs)
        return out if point is None else point(self, out)

    def __reduce_ex__(self, protocol):
        reduced = base.__reduce_ex__(self, protocol)
        if not isinstance(reduced, tuple):
            return reduced
        fn, args, *rest = reduced
        if fn is copyreg.__newobj__ and args and args[0] is cls:
            # __newobj__ insists on the object's own class: rebuild as base without it.
            return (copyreg._reconstructor, (base, object, None), *rest)
        return (fn, tuple(base if a is cls else a for a in args), *rest)

    # A code object of its own: torch.compile keeps its graphs and its recompile budget per code
    # object, and the class says which module a traceback is in.
    name = f"forward_of_{'root_' if state is not None else ''}{'point_' if point is not None else ''}{base.__name__}"
    forward.__code__ = forward.__code__.replace(co_name=name, co_qualname=name)
    namespace = {"forward": forward, "__reduce_ex__": __reduce_ex__, "_mm_base": base,
                 "_mm_point": point, "_mm_owner": owner, "__qualname__": base.__qualname__,
                 "__module__": base.__module__, "__doc__": base.__doc__}
    cls = type(base.__name__, (base,), namespace)
    return cls


def _base_class(module):
    return type(module).__dict__.get("_mm_base")


def _owner(module):
    return type(module).__dict__.get("_mm_owner")


class Points:
    """The mixup points of one mixer on one model: installed by the constructor, removed by
    `remove()`; `method` holds BatchState's patchup settings and noise levels. A model
    has one mixer at a time: points a previous mixer left on these modules (one that was never
    removed, say a notebook cell run twice) are removed first, with a warning, and that mixer is
    spent. Raises ValueError, before changing anything, for a TorchScript module (its forward is
    compiled code)."""

    def __init__(self, root: nn.Module, modules, fields=None, method=None):
        fields = fields or [None] * len(modules)
        for m in [root, *modules]:
            if isinstance(m, torch.jit.ScriptModule):
                raise ValueError(f"{type(m).__name__} is a TorchScript module, whose forward is "
                                 "compiled: mix at Python modules (or use the C ABI's mm_hook_install)")
        previous = {id(o): o for o in (_owner(m) for m in [root, *modules]) if o is not None}
        for owner in previous.values():
            owner.remove()
        if previous:
            warnings.warn("ManifoldMixup: this model already had the mixup points of another mixer, "
                          "which was not removed; they are removed now and that mixer can no longer "
                          "be used (a model has one mixer at a time: call remove(), or use the mixer "
                          "as a context manager).", stacklevel=4)
        self.removed = False
        self.root, self.state = root, BatchState(len(modules), **(method or {}))
        self.points = [MixupPoint(self.state, i, f, batch_first_hint(m))
                       for i, (m, f) in enumerate(zip(modules, fields))]
        self.modules = list(modules)
        self._swap_in()

    def _swap_in(self):
        by_module = {id(m): p for m, p in zip(self.modules, self.points)}
        targets = {id(m): m for m in self.modules}
        targets[id(self.root)] = self.root
        for m in targets.values():
            is_root = m is self.root
            m.__class__ = _point_class(type(m), by_module.get(id(m)), self.state if is_root else None, self)

    def _swap_out(self, modules):
        for m in modules:
            base = _base_class(m)
            if base is not None:
                m.__class__ = base

    def retain(self, indices):
        "Keeps the points at `indices`, renumbered in that order (as Mixer.retain_points)."
        keep = set(indices)
        self._swap_out([m for i, m in enumerate(self.modules) if i not in keep])
        self.modules = [self.modules[i] for i in indices]
        self.points = [self.points[i] for i in indices]
        for i, p in enumerate(self.points):
            p.index = i
        self.state.n_points = len(self.points)
        self.state.forward = ForwardRecord(len(self.points))
        if _base_class(self.root) is None:  # the root was a point, dropped: it keeps its role
            self.root.__class__ = _point_class(type(self.root), None, self.state, self)

    def remove(self):
        "Puts every original class back; the points never mix again."
        self.state.armed = False
        self.state.graphs = []
        self.removed = True
        self._swap_out([*self.modules, self.root])
