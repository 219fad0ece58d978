"""The selection rules on today's architectures, built here without downloads: torch's
transformers, a tiny Hugging Face BERT, timm's ResNet, ViT and ConvNeXt, fastai's XResNet and
U-Net. Each test derives the expected points from the model's own structure (its layer lists,
its block classes) and, where the model scripts, checks that the TorchScript front door (the C
ABI's) chooses the same."""
import pytest
import torch
import torch.nn as nn

import third_party
from manifold_mixup import _C
from manifold_mixup.selection import select_modules


def paths(model, modules):
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in modules]


def selected(model):
    "The modules the rules choose, and the line saying which rule chose them."
    lines = []
    return select_modules(model, log=lines.append), lines[0]


def instances(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def assert_torchscript_chooses_the_same(model):
    chosen = paths(model, select_modules(model, log=lambda s: None))
    names, _ = _C.select_points(torch.jit.script(model.eval()))
    assert names == [p for p in chosen if p]  # a TorchScript root is never a point


# --- transformers: whole layers, nothing inside them ------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_chooses_its_layers_only(batch_first):
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=batch_first)
    model = nn.TransformerEncoder(layer, num_layers=3, norm=nn.LayerNorm(16), enable_nested_tensor=False)
    chosen, line = selected(model)
    assert chosen == list(model.layers)  # not self_attn, out_proj, linear1/2, the norms or the root
    assert line == "ManifoldMixup: selection rule 5 chose 3 transformer layers."
    assert_torchscript_chooses_the_same(model)


def test_transformer_chooses_encoder_and_decoder_layers():
    model = nn.Transformer(16, 2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=32)
    chosen, _ = selected(model)
    assert chosen == [*model.encoder.layers, *model.decoder.layers]
    assert all(isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) for m in chosen)
    assert_torchscript_chooses_the_same(model)


def test_transformer_layers_of_a_custom_model_and_a_subclass():
    class MyLayer(nn.TransformerEncoderLayer):  # Python passes the MRO: still a transformer layer
        pass

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.blocks = nn.ModuleList([MyLayer(16, 2, 32, batch_first=True) for _ in range(2)])
            self.head = nn.Linear(16, 3)

        def forward(self, tokens):
            h = self.embed(tokens)
            for block in self.blocks:
                h = block(h)
            return self.head(h.mean(1))

    model = Classifier()
    assert selected(model)[0] == list(model.blocks)


def test_tiny_bert_chooses_its_encoder_layers():
    transformers = third_party.transformers()
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    chosen, line = selected(model)
    assert chosen == list(model.bert.encoder.layer) and len(chosen) == config.num_hidden_layers
    assert line == "ManifoldMixup: selection rule 5 chose 2 transformer layers."
    logits = model(input_ids=torch.randint(0, 100, (2, 8))).logits  # the model runs as built
    assert logits.shape == (2, 3)


# --- timm: blocks, the outermost only, never a regulariser ------------------------------------

def test_timm_resnet_chooses_its_basic_blocks_not_the_drop_blocks_inside():
    timm = third_party.timm()
    from timm.layers import DropBlock2d
    from timm.models.resnet import BasicBlock
    model = timm.create_model("resnet18", num_classes=10, drop_block_rate=0.1)
    assert instances(model, DropBlock2d)  # inside layer3 and layer4's blocks
    chosen, _ = selected(model)
    assert chosen == instances(model, BasicBlock) and len(chosen) == 8
    assert_torchscript_chooses_the_same(model)


def test_timm_vit_chooses_its_blocks():
    timm = third_party.timm()
    from timm.layers import DropPath
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10, drop_path_rate=0.1)
    assert instances(model, DropPath)
    chosen, _ = selected(model)
    assert chosen == list(model.blocks) and len(chosen) == 12
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert_torchscript_chooses_the_same(model)


def test_timm_convnext_chooses_its_blocks():
    timm = third_party.timm()
    from timm.models.convnext import ConvNeXtBlock
    model = timm.create_model("convnext_atto", num_classes=10)
    chosen, _ = selected(model)
    assert chosen == instances(model, ConvNeXtBlock)
    assert len(chosen) == sum(len(stage.blocks) for stage in model.stages)
    assert_torchscript_chooses_the_same(model)


def test_regularisers_are_never_points():
    third_party.timm()
    from timm.layers import DropBlock2d, DropPath
    model = nn.Sequential(nn.Conv2d(3, 4, 3), DropBlock2d(0.1, 3), DropPath(0.1), nn.ReLU())
    chosen, line = selected(model)
    assert chosen == [model[0], model[3]] and "rule 6" in line


# --- nested blocks --------------------------------------------------------------------------

class ConvBlock(nn.Sequential):
    def __init__(self, c):
        super().__init__(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.convs = nn.Sequential(ConvBlock(c), ConvBlock(c))

    def forward(self, x):
        return x + self.convs(x)


def test_blocks_inside_a_block_are_left_out():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ResBlock(4), ResBlock(4), ConvBlock(4))
    chosen, line = selected(model)
    assert chosen == [model[1], model[2], model[3]]  # the ConvBlocks inside the ResBlocks are not
    assert line == "ManifoldMixup: selection rule 5 chose 3 modules whose class name contains block or bottleneck."
    assert_torchscript_chooses_the_same(model)


# --- fastai ---------------------------------------------------------------------------------

def test_fastai_xresnet_chooses_its_res_blocks():
    third_party.fastai_vision()
    from fastai.layers import ResBlock as FastaiResBlock
    from fastai.vision.models.xresnet import xresnet18
    model = xresnet18(n_out=10)
    chosen, _ = selected(model)
    assert chosen == instances(model, FastaiResBlock) and len(chosen) == 8
    assert_torchscript_chooses_the_same(model)


def test_fastai_dynamic_unet_chooses_its_unet_blocks_not_its_encoders_res_blocks():
    third_party.fastai_vision()
    from fastai.layers import ResBlock as FastaiResBlock
    from fastai.vision.models.unet import DynamicUnet, UnetBlock
    from fastai.vision.models.xresnet import xresnet18
    encoder = nn.Sequential(*list(xresnet18().children())[:-3])
    model = DynamicUnet(encoder, n_out=2, img_size=(32, 32))
    assert instances(model, FastaiResBlock)
    chosen, line = selected(model)
    assert chosen == instances(model, UnetBlock) and "rule 4" in line
