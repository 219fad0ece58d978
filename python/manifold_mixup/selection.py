"""Which modules ManifoldMixup instruments: ManifoldMixupModule, non_mixable_module_types and
select_modules. The rules themselves are described once, in C++ (csrc/selection.h), and run
by this module and by the TorchScript front door alike; this module says what only Python
knows of each module (its MRO, whether it defines forward, the user's non-mixable types)."""
import sys

import torch
import torch.nn as nn

from . import _C

__all__ = ["ManifoldMixupModule", "non_mixable_module_types", "select_modules", "unwrap_model"]


class ManifoldMixupModule(nn.Module):
    """Marks `module` as a mixup point for ManifoldMixup; otherwise transparent.

    `field` names what to mix when the module returns several things: an index for a tuple or
    list, a key for a dict or a Hugging Face ModelOutput, a field name for a dataclass (None:
    the first tensor), the rest passing through unchanged.

    Scriptable: TorchScript cannot compile a forward taking *args and **kwargs, so
    `torch.jit.script` puts in its place (through torch's __prepare_scriptable__, which also
    writes it into the Python parent) a ManifoldMixupModule sharing the same `module` whose
    forward takes one Tensor and returns one, the form a mixup point must have. Its TorchScript
    class is named ManifoldMixupModule, so the C ABI's selection rules find it after
    `torch.jit.save` and `mm_module_load`."""

    def __init__(self, module: nn.Module, field=None):
        super().__init__()
        self.module, self.field = module, field

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __prepare_scriptable__(self):
        return _ScriptableManifoldMixupModule(self.module, self.field)


class _ScriptableManifoldMixupModule(ManifoldMixupModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def __prepare_scriptable__(self):
        return self


# TorchScript names a class by __name__, and that is what the C++ rules look for; pickle finds
# it by __qualname__, which stays the real one so the Python model still saves.
_ScriptableManifoldMixupModule.__name__ = "ManifoldMixupModule"

# Module types never instrumented by the last selection rule (6). Public and mutable: append
# your own types. Starts as the torch.nn classes the C++ rules name (csrc/selection.cpp).
non_mixable_module_types = [getattr(nn, name) for name in _C.non_mixable_class_names()]


def _loaded_class(module_name, class_name):
    "The class if the program already imported its module (wrappers are never imported here)."
    return getattr(sys.modules.get(module_name), class_name, None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel, DataParallel and torch.compile's OptimizedModule
    wrappers, nested ones too (a DDP of a compiled model); `model` itself when not wrapped."""
    compiled = _loaded_class("torch._dynamo.eval_frame", "OptimizedModule")
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif compiled is not None and isinstance(model, compiled):
            model = model._orig_mod
        else:
            return model


def select_modules(model: nn.Module, module_list=None, log=None, partial_inputs=()) -> list:
    """The modules of `model` to instrument: `module_list` when given (rule 1), else those of the
    first selection rule that yields any (rules 2 to 6, described in csrc/selection.h and the
    README), on the model inside DDP, DataParallel and torch.compile wrappers.

    module_list: None, one nn.Module, or an iterable of distinct nn.Modules of the model, each
    with a forward of its own. log: called once with one sentence saying which rule chose how
    many modules; None: silent. partial_inputs: modules a forward showed to derive from only
    some of a multi-input model's feature inputs (InputProvenance.partial_modules); rules 3 to
    6 leave them out, so a rule whose every module sees one branch yields to the next rule.
    Never returns containers (Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict)
    unless module_list names them; the root model is a candidate like any other module. Raises
    TypeError for a module_list entry that is not a module, and ValueError for an empty
    module_list, a duplicate, a module that is not in the model or that has no forward, and when
    no rule finds a module (rule 7)."""
    log = log or (lambda sentence: None)
    model = unwrap_model(model)
    if module_list is not None:
        modules = _checked_module_list(model, module_list)
        log(f"ManifoldMixup: selection rule 1 chose the {_count(len(modules))} of module_list.")
        return modules
    named = list(model.named_modules())
    non_mixable = tuple(non_mixable_module_types)
    partial = {id(m) for m in partial_inputs}
    facts = [(path, [c.__name__ for c in type(m).__mro__], _has_forward(m), isinstance(m, non_mixable),
              id(m) in partial)
             for path, m in named]
    rule, chosen, description = _C.apply_selection_rules(facts, root_is_candidate=True)
    if not chosen:
        raise ValueError(
            "ManifoldMixup found no module to mix in this model: wrap the layers to mix in "
            "ManifoldMixupModule, or pass them as module_list=[...].")
    log(f"ManifoldMixup: selection rule {rule} chose {description}.")
    return [named[i][1] for i in chosen]


def _count(n):
    return f"{n} module" if n == 1 else f"{n} modules"


def _has_forward(m):
    return type(m).forward is not nn.Module.forward


def _checked_module_list(model, module_list):
    modules = [module_list] if isinstance(module_list, nn.Module) else module_list
    try:
        modules = list(modules)
    except TypeError:
        raise TypeError("module_list must be an nn.Module or an iterable of nn.Modules, got "
                        f"{type(module_list).__name__}") from None
    if not modules:
        raise ValueError("module_list is empty: pass the modules to mix, or None to select them")
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise TypeError(f"module_list[{i}] must be an nn.Module, got {type(m).__name__}")
    positions = {}
    for i, m in enumerate(modules):
        if id(m) in positions:
            raise ValueError(f"module_list[{i}] is module_list[{positions[id(m)]}] again "
                             f"({type(m).__name__}): name each module once")
        positions[id(m)] = i
    in_model = {id(m) for m in model.modules()}
    missing = [f"module_list[{i}] ({type(m).__name__})" for i, m in enumerate(modules) if id(m) not in in_model]
    if missing:
        raise ValueError(f"{', '.join(missing)} not in the model: pass modules of the model "
                         "being trained (a copy of a layer is another module)")
    never_run = [f"module_list[{i}] ({type(m).__name__})" for i, m in enumerate(modules) if not _has_forward(m)]
    if never_run:
        raise ValueError(f"{', '.join(never_run)} has no forward of its own and never runs: pass "
                         "the modules it holds instead")
    return modules
