"""InputProvenance: which batch inputs each tensor of a forward derives from, on real models
(a two-tower model, fastai's TabularModel, a single-input CNN, torch's Transformer, a Hugging
Face BERT with its attention mask), and the selection rules that leave out the modules that see
one input's branch only."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import third_party
from manifold_mixup.provenance import InputProvenance
from manifold_mixup.selection import select_modules
from small_models import ResBlock, cnn


def quiet(sentence):
    pass


def observed(model, inputs, **kwargs):
    "Runs model(*inputs, **kwargs) watching every module: (provenance, {path: sources}, output)."
    named = [(p, m) for p, m in model.named_modules() if not isinstance(m, torch.jit.ScriptModule)]
    with InputProvenance(inputs, [m for _, m in named]) as prov:
        out = model(*inputs, **kwargs)
    seen = {path: prov._seen[id(m)] for path, m in named if id(m) in prov._seen}
    return prov, seen, out


def no_provenance_state_left(model):
    return (torch._C._len_torch_dispatch_stack() == 0 and
            all(not m._forward_hooks for m in model.modules()))


# --- the mechanics ----------------------------------------------------------------------------

@dataclasses.dataclass
class Pair:
    first: torch.Tensor
    rest: tuple


def test_sources_through_functional_methods_in_place_views_cat_stack_embeddings_and_mix():
    import manifold_mixup  # noqa: F401  (registers torch.ops.manifold_mixup)
    a, b, ids = torch.randn(4, 3), torch.randn(4, 2), torch.randint(0, 5, (4,))
    table = nn.Embedding(5, 2)
    with InputProvenance((a, b, ids)) as prov:
        relu = F.relu(a)
        doubled = b.mul(2)
        looked_up = table(ids)
        joined = torch.cat([relu, doubled], 1)
        stacked = torch.stack([doubled, looked_up])
        written = torch.zeros(4, 3)
        written[:, :2] = b  # through a view: the whole tensor now holds b
        flat = relu.view(-1)
        summed = torch.zeros(12).add_(flat)
        out = torch.empty(4, 3)
        torch.add(a, 1, out=out)
        mixed = torch.ops.manifold_mixup.mix(doubled, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.7))
        shaped_like = torch.zeros_like(a)  # a gives a shape, not values
        constant = torch.ones(3) * table.weight.sum()
    expect = {"relu": {0}, "doubled": {1}, "looked_up": {2}, "joined": {0, 1}, "stacked": {1, 2},
              "written": {1}, "flat": {0}, "summed": {0}, "out": {0}, "mixed": {1}, "shaped_like": set(),
              "constant": set()}
    got = {name: set(prov.of(value)) for name, value in locals().items() if name in expect}
    assert got == expect
    assert prov.of(Pair(relu, (doubled, {"x": looked_up}))) == {0, 1, 2}  # dataclass, tuple, dict
    assert prov.of(a) == {0} and prov.of(None) == frozenset() and prov.of(3) == frozenset()
    assert prov.feature_inputs == {0, 1, 2}  # two floating inputs, one embedded


def test_errors_name_the_argument():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="inputs must be a tuple or list.*got Tensor"):
        InputProvenance(x)
    with pytest.raises(TypeError, match=r"inputs\[1\] must be a tensor, got int"):
        InputProvenance((x, 3))
    with pytest.raises(TypeError, match=r"modules\[0\] must be an nn.Module.*got str"):
        InputProvenance((x,), ["fc"])
    with pytest.raises(TypeError, match=r"modules\[1\] must be an nn.Module that takes forward hooks"):
        InputProvenance((x,), [nn.ReLU(), torch.jit.script(nn.ReLU())])
    prov = InputProvenance((x,))
    with prov, pytest.raises(RuntimeError, match="already observing"):
        prov.__enter__()


# --- models -------------------------------------------------------------------------------

class TwoTower(nn.Module):
    "An image tower and a metadata tower joined by a cat."

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ResBlock(4), ResBlock(4),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.meta = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(8, 2)

    def forward(self, image, meta):
        return self.head(torch.cat([self.image(image), self.meta(meta)], 1))


def two_tower_batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randn(n, 3, generator=g)


def test_two_tower_model_its_towers_see_one_input_each():
    model = TwoTower().train()
    prov, seen, out = observed(model, two_tower_batch())
    for path, sources in seen.items():
        expected = {0} if path.startswith("image") else {1} if path.startswith("meta") else {0, 1}
        assert sources == expected, path
    assert prov.of(out) == prov.feature_inputs == {0, 1}
    partial = prov.partial_modules()
    assert {id(m) for m in partial} == {id(m) for m in [*model.image.modules(), *model.meta.modules()]}
    # By default rule 5 would take the image tower's ResBlocks; seen on one branch, they yield to
    # rule 6, which takes what follows the join.
    assert select_modules(model, log=quiet) == [model.image[1], model.image[2]]
    lines = []
    assert select_modules(model, log=lines.append, partial_inputs=partial) == [model, model.head]
    assert lines == ["ManifoldMixup: selection rule 6 chose 2 modules of mixable kinds."]
    # A user's choice is kept whatever it sees.
    assert select_modules(model, [model.image[1]], log=quiet, partial_inputs=partial) == [model.image[1]]


def test_results_unchanged_and_nothing_left_behind():
    model = TwoTower().train()
    inputs = two_tower_batch()

    def run(watch):
        torch.manual_seed(0)  # the same dropout mask both times
        model.zero_grad()
        if watch:
            with InputProvenance(inputs, list(model.modules())):
                out = model(*inputs)
        else:
            out = model(*inputs)
        out.sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    plain, watched = run(False), run(True)
    assert torch.equal(plain[0], watched[0])
    assert all(torch.equal(g, h) for g, h in zip(plain[1], watched[1]))
    assert no_provenance_state_left(model)
    with pytest.raises(ValueError, match="boom"):
        with InputProvenance(inputs, list(model.modules())):
            model(*inputs)
            raise ValueError("boom")
    assert no_provenance_state_left(model)


def test_a_compiled_model_is_observed_eagerly_and_still_compiles_afterwards():
    from torch._dynamo.eval_frame import _stance
    from torch._dynamo.utils import counters

    class Compiled(TwoTower):  # a code object of its own: no other test compiled it
        def forward(self, image, meta):
            return super().forward(image, meta)

    model, inputs = Compiled().train(), two_tower_batch()
    compiled = torch.compile(model, backend="eager")
    counters.clear()
    with InputProvenance(inputs, list(model.modules())) as prov:
        out = compiled(*inputs)
    assert prov.of(out) == {0, 1} and len(prov._seen) == len(list(model.modules()))  # every hook ran
    assert not counters["frames"] and _stance.stance == "default"
    compiled(*inputs)  # Dynamo would have marked the code never to compile, seen under a mode
    assert counters["frames"]["ok"] >= 1


def test_fastai_tabular_model_embeddings_see_the_categories_linears_see_both():
    from fastai.tabular.model import TabularModel
    model = TabularModel(emb_szs=[(5, 3), (5, 3)], n_cont=3, out_sz=2, layers=[16, 8]).train()
    g = torch.Generator().manual_seed(0)
    x_cat, x_cont = torch.randint(0, 5, (8, 2), generator=g), torch.randn(8, 3, generator=g)
    prov, seen, _ = observed(model, (x_cat, x_cont))
    assert prov.feature_inputs == {0, 1}  # the integer categories are features: they are embedded
    assert all(seen[f"embeds.{i}"] == {0} for i in range(len(model.embeds)))
    assert seen["bn_cont"] == {1}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    names = {id(m): n for n, m in model.named_modules()}
    assert linears and all(seen[names[id(m)]] == {0, 1} for m in linears)
    assert select_modules(model, log=quiet, partial_inputs=prov.partial_modules()) == linears


def test_single_input_model_every_point_sees_the_input():
    model = cnn().train()
    prov, seen, _ = observed(model, (torch.randn(4, 1, 6, 6),))
    assert set(seen) == {n for n, m in model.named_modules()}  # every module ran
    assert all(sources == {0} for sources in seen.values())
    assert prov.partial_modules() == []


def test_a_scripted_submodule_is_seen_through():
    model = TwoTower().train()
    model.meta = torch.jit.script(model.meta)  # its operators run in C++, through the dispatcher
    prov, seen, out = observed(model, two_tower_batch())
    assert seen["image"] == {0} and seen["head"] == {0, 1} and prov.of(out) == {0, 1}


def test_torch_transformer_encoder_layers_see_the_source_only():
    model = nn.Transformer(16, 2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=32).train()
    src, tgt = torch.randn(7, 4, 16), torch.randn(5, 4, 16)
    prov, seen, _ = observed(model, (src, tgt))
    assert all(seen[f"encoder.layers.{i}"] == {0} for i in range(2)) and seen["decoder.layers.0"] == {0, 1}
    assert select_modules(model, log=quiet) == [*model.encoder.layers, *model.decoder.layers]
    partial = prov.partial_modules()
    assert select_modules(model, log=quiet, partial_inputs=partial) == list(model.decoder.layers)


def tiny_bert():
    transformers = third_party.transformers()
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertForSequenceClassification(config).train()


@pytest.mark.parametrize("padded", [True, False])
def test_bert_attention_mask_is_no_branch_of_features(padded):
    model = tiny_bert()
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 100, (4, 10), generator=g)
    attention_mask = torch.ones(4, 10, dtype=torch.long)
    if padded:
        attention_mask[0, 6:] = 0
    named = list(model.named_modules())
    with InputProvenance((input_ids, attention_mask), [m for _, m in named]) as prov:
        out = model(input_ids=input_ids, attention_mask=attention_mask)  # keywords: the indices are ours
    seen = {path: prov._seen[id(m)] for path, m in named if id(m) in prov._seen}
    # The ids are embedded, so they are features; the mask only weighs attention.
    assert prov.feature_inputs == {0}
    assert seen["bert.embeddings"] == {0}
    layers = [f"bert.encoder.layer.{i}" for i in range(len(model.bert.encoder.layer))]
    # transformers drops a mask without padding before attention: then nothing derives from it.
    assert all(seen[p] == ({0, 1} if padded else {0}) for p in layers)
    assert prov.of(out) == ({0, 1} if padded else {0})  # a ModelOutput, read as a dict
    # Missing the mask does not make a module partial: the encoder layers stay the points.
    partial = prov.partial_modules()
    assert select_modules(model, log=quiet, partial_inputs=partial) == list(model.bert.encoder.layer)
    assert all(seen[n] == set() for n, m in named if m in partial)  # only constant embeddings
