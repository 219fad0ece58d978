"""Which modules ManifoldMixup instruments: the selection rules on real nn.Module trees, on
their TorchScript forms (the C++ front door, through manifold_mixup._C), and in real fastai fits."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.basics import CrossEntropyLossFlat, DataLoaders, Learner, set_seed

from manifold_mixup import ManifoldMixup, ManifoldMixupModule, _C, non_mixable_module_types
from manifold_mixup.selection import select_modules, unwrap_model
import third_party
from small_models import ResBlock, cnn

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "python"


def quiet(sentence):
    pass


def paths(model, modules):
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in modules]


def item_dls(x, y, bs=16, n_train=None):
    "DataLoaders over (x[i], y[i]) items, 3/4 for training."
    items = list(zip(x, y))
    n_train = n_train or len(items) * 3 // 4
    return DataLoaders.from_dsets(items[:n_train], items[n_train:], bs=bs)


def fit(model, cb, dls, extra_cbs=(), epochs=1):
    set_seed(0, reproducible=True)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[cb, *extra_cbs])
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, 1e-2)
    return learn


def every_batch_mixed(mixer, observed=0):
    """Every training batch mixed at its chosen point or the input: no chosen point failed to run
    (but the `observed` first batches of a model called with several inputs, which only show
    which modules see which inputs)."""
    return sum(mixer.point_mixes) + mixer.input_mixes == mixer.batches - observed


def images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g)


def tabular_data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    cats = torch.randint(0, 5, (n, 2), generator=g)
    conts = torch.randn(n, 3, generator=g)
    y = ((conts[:, 0] > 0) ^ (cats[:, 0] > 2)).long()
    return DataLoaders.from_dsets(list(zip(cats, conts, y))[:128], list(zip(cats, conts, y))[128:], bs=32)


def tabular_model():
    from fastai.tabular.model import TabularModel
    return TabularModel(emb_szs=[(5, 3), (5, 3)], n_cont=3, out_sz=2, layers=[16, 8])


# --- the rules, in order --------------------------------------------------------------------

def test_selection_wrapped_modules_win_over_blocks():
    model = nn.Sequential(ManifoldMixupModule(nn.Conv2d(1, 4, 3)), ResBlock(4))
    lines = []
    chosen = select_modules(model, log=lines.append)
    assert chosen == [model[0]] and "ManifoldMixupModule" in lines[0]
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(model[0](x), model[0].module(x))  # transparent


def test_selection_blocks_then_every_mixable_module():
    lines = []
    model = cnn()
    assert select_modules(model, log=lines.append) == [model[2], model[3]]
    assert lines == ["ManifoldMixup: selection rule 5 chose 2 modules whose class name contains "
                     "block or bottleneck."]
    plain = nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.BatchNorm1d(4), nn.ReLU())
    assert select_modules(plain, log=lines.append) == [plain[0], plain[3]]
    assert lines[1] == "ManifoldMixup: selection rule 6 chose 2 modules of mixable kinds."


def test_selection_explicit_module_list_and_user_types():
    model = cnn()
    assert select_modules(model, [model[0]], log=quiet) == [model[0]]
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    non_mixable_module_types.append(nn.ReLU)
    try:
        assert select_modules(plain, log=quiet) == [plain[0]]
    finally:
        non_mixable_module_types.remove(nn.ReLU)


def test_selection_error_when_nothing_is_eligible():
    model = nn.Sequential(nn.Sequential(nn.Dropout()), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="ManifoldMixupModule.*module_list"):
        select_modules(model, log=quiet)
    with pytest.raises(TypeError, match=r"module_list\[0\] must be an nn.Module, got str"):
        select_modules(model, ["conv"], log=quiet)


def test_selection_tabular_model_linear_layers_and_integer_input():
    dls = tabular_data()
    model = tabular_model()
    cb = ManifoldMixup(alpha=1.0)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[cb])
    with pytest.warns(UserWarning, match="input is left out") as record, learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    assert sum("input is left out" in str(w.message) for w in record) == 1
    assert all(isinstance(m, nn.Linear) for m in cb.module_list) and len(cb.module_list) == 3
    # The first batch, (x_cat, x_cont), is observed: the Linears see both inputs, so they stay.
    assert cb.mixer.input_mixes == 0 and sum(cb.mixer.point_mixes) == len(dls.train) - 1
    assert cb.mixer.unmixed_batches == 0


def test_selection_dynamic_unet_blocks_also_inside_a_wrapper():
    third_party.fastai_vision()  # fastai.vision's U-Net needs torchvision
    from fastai.vision.models.unet import DynamicUnet, UnetBlock
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    model = DynamicUnet(encoder, n_out=2, img_size=(32, 32))
    chosen = select_modules(model, log=quiet)
    assert chosen and all(isinstance(m, UnetBlock) for m in chosen)
    assert select_modules(nn.Sequential(model, nn.Conv2d(2, 2, 1)), log=quiet) == chosen


def test_selection_never_imports_vision_or_text():
    code = ("import sys, torch.nn as nn; from manifold_mixup.selection import select_modules; "
            "select_modules(nn.Sequential(nn.Linear(2, 2)), log=lambda s: None); "
            "import manifold_mixup.callbacks; "
            "bad = [m for m in ('fastai.vision', 'fastai.text', 'torchvision', 'spacy') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_DIR))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_module_called_twice_warns_once_per_fit():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.shared, self.head = nn.Conv2d(1, 4, 3, padding=1), ResBlock(4), nn.Linear(4, 10)

        def forward(self, x):
            h = self.shared(self.shared(self.stem(x)))
            return self.head(h.mean((2, 3)))

    model = Twice()
    dls = item_dls(*images())
    cb = ManifoldMixup(alpha=1.0, use_input_mixup=False, module_list=[model.shared])
    with pytest.warns(UserWarning, match="ran more than once") as record:
        fit(model, cb, dls, epochs=2)
    assert sum("ran more than once" in str(w.message) for w in record) == 1
    assert cb.mixer.repeated_calls == 2 * len(dls.train)
    assert cb.mixer.point_mixes == [2 * len(dls.train)]


def test_log_is_one_sentence_and_silent_by_default(capsys):
    model = cnn()
    select_modules(model)
    select_modules(model, [model[0], model[6]])
    assert capsys.readouterr().out == ""
    lines = []
    select_modules(model, [model[0], model[6]], log=lines.append)
    select_modules(model, model[0], log=lines.append)
    assert lines == ["ManifoldMixup: selection rule 1 chose the 2 modules of module_list.",
                     "ManifoldMixup: selection rule 1 chose the 1 module of module_list."]


# --- containers and the root ---------------------------------------------------------------

class ListNet(nn.Module):
    "The issue's reproduction: layers held in a ModuleList (which never runs forward itself)."

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(36, 16), nn.Linear(16, 16)])
        self.gates = nn.ModuleDict({"act": nn.ReLU()})
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(16))])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = self.gates["act"](layer(x)) * self.scales[0]
        return self.head(x)


def test_containers_are_never_chosen_and_every_chosen_point_mixes():
    model = ListNet()
    assert paths(model, select_modules(model, log=quiet)) == ["", "layers.0", "layers.1", "gates.act", "head"]
    cb = ManifoldMixup(alpha=1.0)
    fit(model, cb, item_dls(*images(192)), epochs=2)
    assert every_batch_mixed(cb.mixer) and cb.mixer.batches == 18


def test_the_root_is_a_point_as_in_the_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = nn.Linear(4, 3)
    cb = ManifoldMixup(alpha=1.0, use_input_mixup=False)
    fit(model, cb, item_dls(x, y))
    assert cb.module_list == [model] and cb.mixer.point_mixes == [cb.mixer.batches]

    class Net(nn.Module):  # a CNN written as an nn.Module subclass keeps its output as a point
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    net = Net()
    assert select_modules(net, log=quiet) == [net, net.conv, net.fc]
    with pytest.raises(ValueError, match="no module to mix"):
        select_modules(nn.BatchNorm1d(3), log=quiet)  # a non-mixable root is no point


def test_default_non_mixable_types_are_the_rules_names_plus_user_types():
    assert non_mixable_module_types[:len(_C.non_mixable_class_names())] == [
        getattr(nn, name) for name in _C.non_mixable_class_names()]
    assert nn.Dropout1d in non_mixable_module_types and nn.FeatureAlphaDropout in non_mixable_module_types
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout1d(), nn.FeatureAlphaDropout(), nn.GELU())
    assert select_modules(model, log=quiet) == [model[0], model[3]]

    class MyDropout(nn.Dropout):  # a subclass is an instance: non-mixable in Python
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyDropout())
    assert select_modules(model, log=quiet) == [model[0]]


# --- module_list ----------------------------------------------------------------------------

def test_module_list_is_checked():
    model = cnn()
    assert select_modules(model, model[6], log=quiet) == [model[6]]  # one module: a list of one
    assert select_modules(model, (m for m in (model[0], model[6])), log=quiet) == [model[0], model[6]]
    with pytest.raises(TypeError, match=r"module_list\[1\] must be an nn.Module, got int"):
        select_modules(model, [model[0], 3], log=quiet)
    with pytest.raises(TypeError, match="module_list must be an nn.Module or an iterable.*got float"):
        select_modules(model, 0.5, log=quiet)
    with pytest.raises(ValueError, match=r"module_list\[1\] \(Linear\) not in the model"):
        select_modules(model, [model[0], nn.Linear(8, 10)], log=quiet)
    with pytest.raises(ValueError, match="module_list is empty"):
        select_modules(model, [], log=quiet)
    with pytest.raises(ValueError, match=r"module_list\[2\] is module_list\[0\] again"):
        select_modules(model, [model[2], model[3], model[2]], log=quiet)
    listnet = ListNet()
    with pytest.raises(ValueError, match=r"module_list\[0\] \(ModuleList\) has no forward"):
        select_modules(listnet, [listnet.layers], log=quiet)
    assert select_modules(model, [model], log=quiet) == [model]  # named explicitly, a Sequential runs


def test_a_module_not_in_the_model_fails_the_fit_instead_of_training_unmixed():
    model = cnn()
    learn = Learner(item_dls(*images()), model, loss_func=CrossEntropyLossFlat(),
                    cbs=[ManifoldMixup(module_list=[nn.Linear(16, 16)])])
    with pytest.raises(ValueError, match=r"module_list\[0\] \(Linear\) not in the model"), \
            learn.no_bar(), learn.no_logging():
        learn.fit(1)


# --- what users run: wrappers, fastai text models --------------------------------------------

def tabular_with_head():
    from fastai.tabular.model import TabularModel

    class WithHead(TabularModel):  # an extra Linear outside model.layers
        def __init__(self):
            super().__init__(emb_szs=[(5, 3), (5, 3)], n_cont=3, out_sz=4, layers=[16, 8])
            self.head = nn.Linear(4, 2)

        def forward(self, x_cat, x_cont=None):
            return self.head(super().forward(x_cat, x_cont))

    return WithHead()


def test_tabular_rule_takes_every_linear_of_the_model():
    model = tabular_with_head()
    chosen = select_modules(model, log=quiet)
    assert chosen == [m for m in model.modules() if isinstance(m, nn.Linear)] and model.head in chosen


def test_dataparallel_tabular_model_in_a_fit_selects_the_inner_linears():
    model = tabular_model()
    cb = ManifoldMixup(alpha=1.0)
    with pytest.warns(UserWarning, match="input is left out"):
        learn = fit(nn.DataParallel(model), cb, tabular_data())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert cb.module_list == linears and learn.model not in cb.module_list
    assert every_batch_mixed(cb.mixer, observed=1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_and_compiled_models_are_selected_on_the_model_inside():
    import torch.distributed as dist
    model = tabular_model()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    compiled = torch.compile(model)  # wraps only: nothing compiles until it runs
    assert unwrap_model(compiled) is model
    assert select_modules(compiled, log=quiet) == linears
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        for wrapped in (nn.parallel.DistributedDataParallel(model),
                        nn.parallel.DistributedDataParallel(compiled)):
            assert unwrap_model(wrapped) is model
            assert select_modules(wrapped, log=quiet) == linears
        ddp = nn.parallel.DistributedDataParallel(model)
        assert select_modules(ddp, [model.layers[0][0]], log=quiet) == [model.layers[0][0]]
    finally:
        dist.destroy_process_group()
    assert unwrap_model(model) is model


def awd_lstm_classifier():
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_config
    from fastai.text.models.core import get_text_classifier
    config = dict(awd_lstm_clas_config, emb_sz=16, n_hid=16, n_layers=2)
    return get_text_classifier(AWD_LSTM, 50, 2, seq_len=8, config=config, lin_ftrs=[8])


def test_awd_lstm_classifier_selection_leaves_the_encoder_out_and_fits():
    loaded_before = {m for m in ("spacy", "torchvision") if m in sys.modules}  # by other tests
    model = awd_lstm_classifier()
    chosen = paths(model, select_modules(model, log=quiet))
    assert chosen == ["1.layers.0.2", "1.layers.0.3", "1.layers.1.2"]  # the head's Linear, ReLU, Linear
    from fastai.callback.rnn import ModelResetter, RNNCallback
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 50, (128, 12), generator=g)
    labels = (tokens[:, 0] > 25).long()
    cb = ManifoldMixup(alpha=1.0)
    with pytest.warns(UserWarning, match="input is left out"):
        fit(model, cb, item_dls(tokens, labels, bs=32), extra_cbs=[ModelResetter(), RNNCallback()])
    assert every_batch_mixed(cb.mixer) and cb.mixer.batches == 3
    assert {m for m in ("spacy", "torchvision") if m in sys.modules} == loaded_before


def test_awd_lstm_language_model_selection():
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_lm_config
    from fastai.text.models.core import get_language_model
    model = get_language_model(AWD_LSTM, 50, config=dict(awd_lstm_lm_config, emb_sz=16, n_hid=16))
    assert paths(model, select_modules(model, log=quiet)) == ["1.decoder", "1.output_dp"]


def test_unet_rule_finds_unet_blocks_anywhere_by_class_name():
    class UnetBlock(nn.Module):  # fastai's is recognised by its class name, as in TorchScript
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    model = nn.Sequential(ResBlock(4), UnetBlock(), UnetBlock())  # the root is no DynamicUnet
    assert select_modules(model, log=quiet) == [model[1], model[2]]


def test_block_rule_reads_the_class_name_not_its_module_path():
    Conv = type("Conv", (nn.Conv2d,), {"__module__": "mylib.blocks"})
    Wide = type("Wide", (ResBlock,), {})  # nor a base's name
    model = nn.Sequential(Conv(1, 4, 3), nn.ReLU(), ResBlock(4), Wide(4))
    assert select_modules(model, log=quiet) == [model[2]]


# --- one description, two front doors --------------------------------------------------------

class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        return x + self.expand(F.relu(self.reduce(x)))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout2d())
        self.body = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.AlphaDropout())
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class MarkedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ManifoldMixupModule(nn.Linear(4, 8))
        self.blocks = nn.ModuleList([ResBlockLinear(8), ResBlockLinear(8)])
        self.b = ManifoldMixupModule(nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))

    def forward(self, x):
        x = self.a(x)
        for block in self.blocks:
            x = block(x)
        return self.b(x)


class ResBlockLinear(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        return x + self.fc(x)


MODELS = {
    "sequential_cnn": (cnn, (2, 1, 6, 6)),
    "bottlenecks": (lambda: nn.Sequential(nn.Conv2d(1, 4, 1), Bottleneck(4), Bottleneck(4)), (2, 1, 4, 4)),
    "nested_non_mixable": (Nested, (2, 1, 6, 6)),
    "containers": (ListNet, (2, 1, 6, 6)),
    "marked": (MarkedNet, (2, 4)),
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.GELU(), nn.Dropout(), nn.Linear(8, 3)), (2, 4)),
}


@pytest.mark.parametrize("name", MODELS)
def test_python_and_torchscript_front_doors_choose_the_same_paths(name):
    make, shape = MODELS[name]
    model = make().eval()
    python = paths(model, select_modules(model, log=quiet))
    scripted = torch.jit.script(model)
    torchscript, rule = _C.select_points(scripted)
    # The one difference the rules allow: a TorchScript root has no call site, so is no candidate.
    assert [p for p in python if p != ""] == torchscript and torchscript
    assert isinstance(rule, str) and str(len(torchscript)) in rule
    x = torch.randn(*shape)
    torch.testing.assert_close(scripted(x), model(x))


def test_python_and_torchscript_agree_when_the_root_is_the_only_candidate():
    model = nn.Sequential(ResBlock(4))  # rule 5 only through the child; the root is a container
    assert paths(model, select_modules(model, log=quiet)) == _C.select_points(torch.jit.script(model))[0]
    with pytest.raises(ValueError, match="wrap them in ManifoldMixupModule"):
        _C.select_points(torch.jit.script(nn.Linear(3, 3)))  # Python would mix the root
    assert select_modules(nn.Linear(3, 3), log=quiet)
    with pytest.raises(TypeError, match="must be a torch.jit.ScriptModule"):
        _C.select_points(nn.Linear(3, 3))


def test_torchscript_keeps_no_base_classes_so_a_dropout_subclass_is_mixable_there():
    class MyDropout(nn.Dropout):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyDropout())
    assert paths(model, select_modules(model, log=quiet)) == ["0"]
    assert _C.select_points(torch.jit.script(model))[0] == ["0", "1"]


def test_rules_reject_facts_without_the_root_first():
    with pytest.raises(ValueError, match="first module must be the root"):
        _C.apply_selection_rules([("a", ["Linear"], True, False, False)], True)
    assert _C.apply_selection_rules([], True) == (7, [], "no module")


# --- ManifoldMixupModule under TorchScript ----------------------------------------------------

def test_manifold_mixup_module_scripts_saves_loads_and_is_selected_from_cpp(tmp_path):
    model = MarkedNet().eval()
    x = torch.randn(5, 4)
    expected = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected)
    torch.jit.save(scripted, str(tmp_path / "marked.pt"))
    loaded = torch.jit.load(str(tmp_path / "marked.pt"))
    torch.testing.assert_close(loaded(x), expected)
    names, rule = _C.select_points(loaded)
    assert names == ["a", "b"] and rule == "2 modules wrapped in ManifoldMixupModule"
    assert loaded.a.original_name == "ManifoldMixupModule"
    # torch's __prepare_scriptable__ put the one-Tensor form into the Python model too: still a
    # marker, same wrapped module, same output, still selected.
    assert isinstance(model.a, ManifoldMixupModule) and select_modules(model, log=quiet) == [model.a, model.b]
    torch.testing.assert_close(model(x), expected)
    torch.save(model, str(tmp_path / "eager.pt"))  # and the Python model still pickles
    torch.testing.assert_close(torch.load(str(tmp_path / "eager.pt"), weights_only=False)(x), expected)
    wrapped = ManifoldMixupModule(nn.Bilinear(2, 2, 1))  # eager: any arguments pass through
    assert wrapped(torch.ones(1, 2), torch.ones(1, 2)).shape == (1, 1)
