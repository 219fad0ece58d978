"""Which modules ManifoldMixup instruments: ManifoldMixupModule, non_mixable_module_types and
the selection rules (first rule that yields modules wins)."""
import sys

import torch.nn as nn

__all__ = ["ManifoldMixupModule", "non_mixable_module_types", "select_modules"]


class ManifoldMixupModule(nn.Module):
    "Marks `module` as a mixup point for ManifoldMixup; otherwise transparent."

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# Module types never instrumented by the last selection rule. Public and mutable: append
# your own types. fastai's AWD_LSTM is added at selection time if fastai.text is loaded.
non_mixable_module_types = [
    nn.Sequential,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell, nn.RNN, nn.RNNBase, nn.RNNCell, nn.RNNCellBase,
]


def _loaded_class(module_name, class_name):
    """The class if the user's program already imported its module. Selection never imports
    fastai.vision or fastai.text itself: they pull in torchvision and spacy."""
    module = sys.modules.get(module_name)
    return getattr(module, class_name, None) if module is not None else None


def _non_mixable():
    awd_lstm = _loaded_class("fastai.text.models.awdlstm", "AWD_LSTM")
    return tuple(non_mixable_module_types) + ((awd_lstm,) if awd_lstm else ())


def select_modules(model: nn.Module, module_list=None, log=print):
    "The modules to instrument in `model`, by the first rule that yields any."
    if module_list is not None:
        modules = list(module_list)
        bad = [m for m in modules if not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"module_list must hold nn.Module objects, got {type(bad[0]).__name__}")
        if not modules:
            raise ValueError("module_list is empty: pass the modules to mix, or None to select them")
        log(f"ManifoldMixup: mixing at the {len(modules)} modules of module_list.")
        return modules
    rules = [
        ("modules wrapped in ManifoldMixupModule", lambda: [
            m for m in model.modules() if isinstance(m, ManifoldMixupModule)]),
        ("a fastai TabularModel: its Linear layers", lambda: _tabular_linears(model)),
        ("a fastai U-Net: its UnetBlocks", lambda: _unet_blocks(model)),
        ("Block/Bottleneck modules (residual blocks)", lambda: [
            m for m in model.modules() if _is_block(m)]),
        ("mixable modules (not in non_mixable_module_types)", lambda: [
            m for m in model.modules() if m is not model and not isinstance(m, _non_mixable())]),
    ]
    for description, rule in rules:
        modules = rule()
        if modules:
            log(f"ManifoldMixup: {description} detected, mixing at {len(modules)} modules.")
            return modules
    raise ValueError(
        "ManifoldMixup found no module to mix in this model: wrap the layers to mix in "
        "ManifoldMixupModule, or pass them as module_list=[...].")


def _is_block(m):
    name = type(m).__name__.lower()
    return "block" in name or "bottleneck" in name


def _tabular_linears(model):
    tabular = _loaded_class("fastai.tabular.model", "TabularModel")
    if tabular is None or not isinstance(model, tabular):
        return []
    return [m for m in model.layers.modules() if isinstance(m, nn.Linear)]


def _unet_blocks(model):
    unet = _loaded_class("fastai.vision.models.unet", "DynamicUnet")
    block = _loaded_class("fastai.vision.models.unet", "UnetBlock")
    if unet is None or block is None or not isinstance(model, unet):
        return []
    return [m for m in model.modules() if isinstance(m, block)]
