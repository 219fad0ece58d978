"""Which of a model's batch inputs each tensor of one forward derives from.

A multi-input model (an image tower and a metadata tower joined by a cat, a tabular model's
categorical and continuous inputs) has modules that see one input's branch only. Mixing there
mixes part of each sample's features while the loss is fully mixed, so the selection rules leave
such modules out (csrc/selection.h, ModuleFacts::partial_inputs). Which modules those are cannot
be read from the module tree; InputProvenance observes it in a forward.

It is a TorchDispatchMode: it sees every ATen operator the forward runs, whoever calls it
(nn.functional, tensor methods, C++ code, TorchScript submodules, torch.ops.manifold_mixup.mix),
and the operator's schema says which arguments it writes. Sources are kept per storage, so a
view shares its base's sources and a write through any view reaches every alias. The mode only
calls each operator as given and reads its arguments: results are unchanged.
"""
import contextlib
import dataclasses
import sys
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["InputProvenance"]

# Operators whose argument 1 holds indices into a table (F.embedding, nn.EmbeddingBag).
_EMBEDDING_OPS = {"aten::embedding", "aten::_embedding_bag", "aten::_embedding_bag_forward_only",
                  "aten::embedding_bag"}


class InputProvenance:
    """During one forward, the set of input indices every tensor computed from `inputs` derives
    from: `with InputProvenance((x_cat, x_cont)) as prov: out = model(x_cat, x_cont)`, then
    `prov.of(out)`.

    inputs: the batch's input tensors, in the order the model takes them (index i is inputs[i]).
    modules: modules whose outputs to record (forward hooks attached only inside the `with`);
    `partial_modules()` then names those that miss a feature input.

    Feature inputs are those that carry a sample's features: floating-point inputs, and
    integer inputs used as indices of an embedding lookup (token ids, categories). Other integer
    or bool inputs (attention masks, lengths) change how features are combined but are not a
    branch of them, so a module that misses only those is not partial. Control flow that reads a
    tensor's values (`if mask.all():`) is not a derivation and is not seen. Inputs that share a
    storage (two slices of one batch tensor) cannot be told apart: each derives from both. The
    mode is thread-local: replicas DataParallel runs in other threads are not seen.
    """

    def __init__(self, inputs, modules=()):
        if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (tuple, list)):
            raise TypeError("InputProvenance: inputs must be a tuple or list of the batch's input "
                            f"tensors, got {type(inputs).__name__}")
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"InputProvenance: inputs[{i}] must be a tensor, got {type(t).__name__}")
        modules = list(modules)
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module) or isinstance(m, torch.jit.ScriptModule):
                raise TypeError(f"InputProvenance: modules[{i}] must be an nn.Module that takes forward "
                                f"hooks (not a ScriptModule), got {type(m).__name__}")
        self.inputs = tuple(inputs)
        self.modules = modules
        self._sources = WeakIdKeyDictionary()  # storage (or tensor without one) -> frozenset
        self._embedded = set()  # input indices that reached an embedding's indices
        self._seen = {}  # id(module) -> sources of its outputs, over its calls
        self._mode = None
        self._handles = []

    # --- what a forward showed -----------------------------------------------------------

    def of(self, obj) -> frozenset:
        """The input indices `obj` derives from: a tensor, or the union over the tensors of a
        tuple, list, dict or dataclass (a Hugging Face ModelOutput) holding them. Empty for
        tensors no input reaches (parameters, constants) and for objects holding no tensor."""
        return frozenset().union(*(self._get(t) for t in _tensors(obj)))

    @property
    def feature_inputs(self) -> frozenset:
        """Indices of the inputs that carry features (see the class docstring); complete once
        the forward has finished."""
        floating = {i for i, t in enumerate(self.inputs) if t.is_floating_point() or t.is_complex()}
        return frozenset(floating | self._embedded)

    def partial_modules(self) -> list:
        """The modules given as `modules` whose outputs, in the forward, derived from only some
        of the feature inputs (one input's branch), in the order given. Read after the forward;
        a module that did not run is not partial (nothing was seen)."""
        features = self.feature_inputs
        return [m for m in self.modules if id(m) in self._seen and features - self._seen[id(m)]]

    # --- the forward ---------------------------------------------------------------------

    def __enter__(self):
        if self._mode is not None:
            raise RuntimeError("InputProvenance: this object is already observing a forward")
        for i, t in enumerate(self.inputs):
            self._add(t, frozenset((i,)))
        self._handles = [m.register_forward_hook(self._record) for m in self.modules]
        self._eager = _eager_while_observing()
        self._eager.__enter__()
        self._mode = _Mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        mode, self._mode = self._mode, None
        handles, self._handles = self._handles, []
        try:
            mode.__exit__(*exc)
        finally:
            self._eager.__exit__(*exc)
            for h in handles:
                h.remove()
        return False

    def _record(self, module, args, output):
        self._seen[id(module)] = self._seen.get(id(module), frozenset()) | self.of(output)

    def _get(self, t):
        return self._sources.get(_key(t), frozenset())

    def _add(self, t, sources):
        if sources:
            k = _key(t)
            self._sources[k] = self._sources.get(k, frozenset()) | sources

    def _after(self, func, args, kwargs, out):
        "What operator `func` did: its outputs and the arguments it wrote derive from all its inputs."
        name = func._schema.name
        if name.endswith("_like") or name.startswith("aten::new_"):
            return  # zeros_like(x), x.new_empty(n): x gives a shape, dtype and device, not values
        sources = frozenset().union(*(self._get(t) for t in _leaf_tensors((args, kwargs))))
        if name in _EMBEDDING_OPS and len(args) > 1:
            self._embedded.update(self._get(args[1]) if isinstance(args[1], torch.Tensor) else ())
        if not sources:
            return
        for t in _leaf_tensors(out):
            self._add(t, sources)
        for t in _written(func, args, kwargs):
            self._add(t, sources)


class _Mode(TorchDispatchMode):
    def __init__(self, provenance):
        super().__init__()
        self.provenance = provenance

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.provenance._after(func, args, kwargs, out)
        return out


def _eager_while_observing():
    """A compiled model runs eagerly while observed, so the mode sees its operators and the hooks
    run. Without it, Dynamo meets a frame under a dispatch mode, runs it uncompiled and marks its
    code never to compile again. Only where Dynamo is already loaded (torch.compile loads it):
    importing it costs seconds to a program that never compiles."""
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def _key(t):
    "Sources live on the storage, which every view of a tensor shares."
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, some subclasses
        return t


def _leaf_tensors(tree):
    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _written(func, args, kwargs):
    "The tensors an operator writes, by its schema: in-place self, out= arguments."
    written = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(a.name)
            written += _leaf_tensors(value)
    return written


def _tensors(obj, depth=0):
    "The tensors in a model's output: nested tuples, lists, dicts and dataclasses."
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 32:
        return
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name), depth + 1)
