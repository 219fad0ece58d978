"""ManifoldMixer on a tiny Hugging Face BERT for sequence classification, built from a config
(no download): the default selection, and under gradient checkpointing with either reentrancy.
Each batch is checked by tests/python/invariants.py; under checkpointing the gradients must also
equal those of the same model without it, mixed with the same draws, also when other forwards
of the model come between a batch and its backward. And examples/huggingface.py, both ways."""
import copy
import importlib
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from manifold_mixup import ManifoldMixer

import third_party
from invariants import ModelState, assert_copyable, assert_counters, train_checked

pytestmark = pytest.mark.xdist_group("transformers")  # one worker imports transformers once

B, T, VOCAB, CLASSES = 8, 6, 50, 3  # B and T differ, so the batch dimension is never ambiguous
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def bert():
    "A 2-layer BERT of width 32 with no dropout (deterministic), built once; tests copy it."
    transformers = third_party.transformers()
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=16, num_labels=CLASSES,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).train()


def text_batches(n, seed=0):
    "Token ids with padding at the end of some sequences, and their attention masks."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (B, T), generator=g)
        lengths = torch.randint(3, T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None] < lengths[:, None]).long()
        out.append(((ids * mask,), torch.randint(0, CLASSES, (B,), generator=g), {"attention_mask": mask}))
    return out


def logits_of(model):
    return lambda ids, attention_mask: model(ids, attention_mask=attention_mask).logits


def layers_of(model):
    return list(model.bert.encoder.layer)


def test_bert_default_selection_mixes_whole_layers(bert):
    model = copy.deepcopy(bert)
    before = ModelState(model)
    mm = ManifoldMixer(model, alpha=1.0, seed=3, verbose=False)  # integer ids: no input point
    # The transformer-layer rule: the encoder's BertLayers, not the modules inside them.
    assert [id(m) for m in mm.modules] == [id(m) for m in layers_of(model)], mm.point_names
    data = text_batches(6)
    train_checked(model, mm, data, forward=logits_of(model))
    assert_counters(mm.mixer, len(data))
    assert mm.mixer.input_mixes == 0
    before.assert_same_state_dict_keys()
    assert_copyable(model)
    mm.remove()
    before.assert_restored()
    assert_copyable(model)


def enable_checkpointing(model, use_reentrant):
    "gradient_checkpointing_enable() as users call it: its default, or the other reentrancy."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 5.x renames it activation_checkpointing_enable
        if use_reentrant is None:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(layer.gradient_checkpointing for layer in layers_of(model))


@pytest.mark.parametrize("use_reentrant", [None, True, False], ids=["default", "reentrant", "non_reentrant"])
def test_bert_with_gradient_checkpointing_mixes_and_gets_the_gradients_of_the_plain_model(bert, use_reentrant):
    model, twin = copy.deepcopy(bert), copy.deepcopy(bert)
    enable_checkpointing(model, use_reentrant)
    before = ModelState(model)  # after enabling: its own embedding hook (reentrant) is the model's
    mm = ManifoldMixer(model, alpha=1.0, seed=4, verbose=False)
    mm_twin = ManifoldMixer(twin, alpha=1.0, seed=4, verbose=False)  # the same draws
    assert mm.point_names == mm_twin.point_names
    data = text_batches(4, seed=1)
    for batch in data:
        train_checked(model, mm, [batch], forward=logits_of(model), lr=0.0)
        (ids,), y, kwargs = batch
        with mm_twin.batch(ids) as xb:
            loss = mm_twin.loss(F.cross_entropy, twin(xb, **kwargs).logits, y)
        twin.zero_grad()
        loss.backward()
        # The backward recomputes the layers after the batch has ended: it must mix them again.
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            assert_grad_close(p.grad, q.grad, name)
        with torch.no_grad():  # one SGD step on both, so the next batch starts from new weights
            for p, q in zip(model.parameters(), twin.parameters()):
                p.sub_(0.5 * p.grad)
                q.sub_(0.5 * q.grad)
        model.zero_grad()
    assert_counters(mm.mixer, len(data))
    assert list(mm.mixer.point_mixes) == list(mm_twin.mixer.point_mixes)
    mm.remove()
    mm_twin.remove()
    before.assert_restored()
    # torch.save of the whole model fails on transformers' own hook (a local function that
    # gradient_checkpointing_enable adds to the embeddings), so only once that hook is gone.
    model.disable_input_require_grads()
    assert_copyable(model)


def micro_batches_summed(model, mm, batches):
    "Gradient accumulation by summing: each micro-batch mixed in its own batch, one backward."
    total = 0
    for (ids,), y, kwargs in batches:
        with mm.batch(ids) as xb:
            total = total + mm.loss(F.cross_entropy, model(xb, **kwargs).logits, y)
    total.backward()


def clean_accuracy_then_backward(model, mm, batches):
    "A mixed batch, then the clean batch's accuracy in training mode (for a log), then backward."
    ((ids,), y, kwargs), = batches
    with mm.batch(ids) as xb:
        loss = mm.loss(F.cross_entropy, model(xb, **kwargs).logits, y)
    with torch.no_grad():
        (model(ids, **kwargs).logits.argmax(1) == y).float().mean()
    loss.backward()


@pytest.mark.parametrize("use_reentrant", [None, True], ids=["default", "reentrant"])
@pytest.mark.parametrize("step,n", [(micro_batches_summed, 2), (clean_accuracy_then_backward, 1)],
                         ids=["micro_batches_summed", "clean_forward_before_backward"])
def test_bert_checkpointing_recomputes_each_batch_with_its_own_draw(bert, use_reentrant, step, n):
    """The backward may come after other forwards of the model: another mixed batch, or a plain
    one outside any batch. Each checkpointed layer must recompute with the draw of the forward
    it belongs to: the gradients equal the plain model's under the same draws."""
    model, twin = copy.deepcopy(bert), copy.deepcopy(bert)
    enable_checkpointing(model, use_reentrant)
    grads = []
    for m in (model, twin):
        mm = ManifoldMixer(m, alpha=1.0, seed=6, verbose=False)
        for seed in range(3):  # a few draws, so that some recompute a layer the next batch did not draw
            m.zero_grad()
            step(m, mm, text_batches(n, seed=10 + seed))
            grads.append([p.grad.clone() for p in m.parameters()])
        assert_counters(mm.mixer, 3 * n)
        mm.remove()
    names = [name for name, _ in model.named_parameters()]
    for got, want in zip(grads[:3], grads[3:]):
        for name, a, b in zip(names, got, want):
            assert_grad_close(a, b, name)


def assert_grad_close(a, b, name):
    assert (a is None) == (b is None), name
    if a is not None:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def example(bert):  # after the bert fixture: transformers is importable
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module("huggingface")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_huggingface_example_trains_with_every_batch_mixed(example, checkpointing):
    torch.manual_seed(0)
    model = example.tiny_bert(gradient_checkpointing=checkpointing)
    before = ModelState(model)
    mixer = example.train(model, steps=8, log_every=0).mixer
    assert_counters(mixer, 8)
    assert list(mixer.point_names) == [f"bert.encoder.layer.{i}" for i in range(2)]
    before.assert_restored()  # the with-block removed the mixer
