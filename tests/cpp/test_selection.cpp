// The selection rules (csrc/selection.h): on facts as the Python front door gives them, and on
// TorchScript modules built here with define() as the C ABI sees them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "selection.h"

namespace mm = manifold_mixup;

namespace {

// A TorchScript module of class `qualified` ("__torch__." is prepended), with a forward unless
// `with_forward` is false, and the given children (called in order by its forward).
torch::jit::Module module(const std::string& qualified,
                          const std::vector<std::pair<std::string, torch::jit::Module>>& children = {},
                          bool with_forward = true) {
  torch::jit::Module m(c10::QualifiedName("__torch__." + qualified));
  std::string body = "def forward(self, x):\n";
  for (const auto& [name, child] : children) {
    m.register_module(name, child);
    if (child.find_method("forward")) body += "  x = self." + name + ".forward(x)\n";
  }
  body += "  return torch.relu(x)\n";
  if (with_forward) m.define(body);
  return m;
}

mm::ModuleFacts facts(std::string path, std::vector<std::string> class_names, bool non_mixable = false,
                      bool has_forward = true) {
  return {std::move(path), std::move(class_names), has_forward, non_mixable};
}

std::vector<std::string> chosen_paths(const std::vector<mm::ModuleFacts>& f, const mm::RuleChoice& c) {
  std::vector<std::string> out;
  for (size_t i : c.chosen) out.push_back(f[i].path);
  return out;
}

}  // namespace

TEST(SelectionRules, FirstRuleThatYieldsWins) {
  // A marker beats blocks; blocks beat the fallback.
  torch::jit::Module net = module("Net", {{"stem", module("Conv")},
                                          {"b1", module("BasicBlock")},
                                          {"m", module("ManifoldMixupModule", {{"module", module("Linear")}})}});
  mm::PointSelection s = mm::select_points(net);
  EXPECT_EQ(s.names, std::vector<std::string>{"m"});
  EXPECT_EQ(s.rule, "1 module wrapped in ManifoldMixupModule");
  net = module("Net", {{"stem", module("Conv")}, {"b1", module("BasicBlock")}, {"b2", module("MyBottleneck")}});
  s = mm::select_points(net);
  EXPECT_EQ(s.names, (std::vector<std::string>{"b1", "b2"}));
  EXPECT_EQ(s.rule, "2 modules whose class name contains block or bottleneck");
  net = module("Net", {{"fc", module("torch.nn.modules.linear.___torch_mangle_3.Linear")},
                       {"bn", module("BatchNorm1d")}, {"drop", module("FeatureAlphaDropout")}});
  s = mm::select_points(net);
  EXPECT_EQ(s.names, std::vector<std::string>{"fc"});  // the class name is the last component
  EXPECT_EQ(s.rule, "1 module of a mixable kind");
}

TEST(SelectionRules, ContainersAndTheTorchScriptRootAreNeverChosen) {
  torch::jit::Module list = module("ModuleList", {{"fc", module("Linear")}, {"act", module("ReLU")}}, false);
  torch::jit::Module net = module("Net", {{"layers", list}, {"seq", module("Sequential", {{"t", module("Tanh")}})}});
  EXPECT_EQ(mm::select_points(net).names, (std::vector<std::string>{"layers.fc", "layers.act", "seq.t"}));
  // A class named like a container is one, even with a forward; the root alone is no candidate.
  EXPECT_THROW(mm::select_points(module("Net", {{"d", module("ModuleDict", {{"x", module("ModuleList", {}, false)}})}})),
               c10::ValueError);
  try {
    mm::select_points(module("ResBlock"));
    FAIL() << "no error";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("ManifoldMixupModule"), std::string::npos) << e.what();
  }
}

TEST(SelectionRules, FastaiStructuresByClassName) {
  // Python passes the MRO, so a subclass of TabularModel is one; every Linear, not only layers'.
  std::vector<mm::ModuleFacts> tab = {
      facts("", {"WithHead", "TabularModel", "Module"}), facts("embeds", {"ModuleList"}, false, false),
      facts("layers", {"Sequential"}, true), facts("layers.0", {"LinBnDrop", "Sequential"}, true),
      facts("layers.0.0", {"Linear"}), facts("layers.0.1", {"ReLU"}), facts("head", {"Linear"})};
  mm::RuleChoice c = mm::apply_selection_rules(tab, true);
  EXPECT_EQ(c.rule, 3);
  EXPECT_EQ(chosen_paths(tab, c), (std::vector<std::string>{"layers.0.0", "head"}));
  EXPECT_EQ(c.description, "2 Linear layers of a fastai TabularModel");
  // UnetBlocks anywhere (the root need not be a DynamicUnet), before other blocks.
  std::vector<mm::ModuleFacts> unet = {facts("", {"Wrapper"}), facts("0", {"ResBlock"}),
                                       facts("1", {"UnetBlock"}), facts("2", {"UnetBlock"})};
  c = mm::apply_selection_rules(unet, true);
  EXPECT_EQ(c.rule, 4);
  EXPECT_EQ(chosen_paths(unet, c), (std::vector<std::string>{"1", "2"}));
  // The block rule reads the own class name only, not a base's.
  std::vector<mm::ModuleFacts> bases = {facts("", {"Net"}), facts("a", {"Conv", "BasicBlock"})};
  c = mm::apply_selection_rules(bases, true);
  EXPECT_EQ(c.rule, 6);
  EXPECT_EQ(chosen_paths(bases, c), (std::vector<std::string>{"", "a"}));
}

TEST(SelectionRules, AwdLstmInsidesAndTextHeadsAreLeftOut) {
  std::vector<mm::ModuleFacts> clas = {
      facts("", {"SequentialRNN", "Sequential"}, true), facts("0", {"SentenceEncoder"}),
      facts("0.module", {"AWD_LSTM"}), facts("0.module.encoder", {"Embedding"}),
      facts("0.module.rnns", {"ModuleList"}, false, false), facts("0.module.rnns.0", {"WeightDropout"}),
      facts("0.module.rnns.0.module", {"LSTM", "RNNBase"}, true), facts("1", {"PoolingLinearClassifier"}),
      facts("1.layers", {"Sequential"}, true), facts("1.layers.0", {"LinBnDrop", "Sequential"}, true),
      facts("1.layers.0.0", {"BatchNorm1d"}, true), facts("1.layers.0.1", {"Linear"}),
      facts("1.layers.0.2", {"ReLU"}), facts("10", {"Linear"})};  // "10" is not inside "1"... nor "0"
  mm::RuleChoice c = mm::apply_selection_rules(clas, true);
  EXPECT_EQ(c.rule, 6);
  EXPECT_EQ(chosen_paths(clas, c), (std::vector<std::string>{"1.layers.0.1", "1.layers.0.2", "10"}));
  // A marker inside AWD_LSTM is the user's choice and is kept.
  clas.push_back(facts("0.module.mark", {"ManifoldMixupModule"}));
  EXPECT_EQ(chosen_paths(clas, mm::apply_selection_rules(clas, true)), std::vector<std::string>{"0.module.mark"});
}

TEST(SelectionRules, NonMixableNamesAreExact) {
  for (const char* n : {"Sequential", "Dropout1d", "FeatureAlphaDropout", "SyncBatchNorm", "RNNCellBase"})
    EXPECT_TRUE(mm::is_non_mixable_class(n)) << n;
  for (const char* n : {"Linear", "RNNDropout", "ModuleList", "MyDropout"})
    EXPECT_FALSE(mm::is_non_mixable_class(n)) << n;
  EXPECT_THROW(mm::apply_selection_rules({facts("a", {"Linear"})}, true), c10::ValueError);
  const mm::RuleChoice none = mm::apply_selection_rules({}, true);
  EXPECT_EQ(none.rule, 7);
  EXPECT_TRUE(none.chosen.empty());
}

TEST(SelectionRules, TransformerLayersWholeAndNothingInside) {
  // torch.nn's layers by class name (a subclass counts in Python, which passes the MRO).
  std::vector<mm::ModuleFacts> enc = {
      facts("", {"TransformerEncoder"}), facts("layers", {"ModuleList"}, false, false),
      facts("layers.0", {"TransformerEncoderLayer"}), facts("layers.0.self_attn", {"MultiheadAttention"}),
      facts("layers.0.self_attn.out_proj", {"NonDynamicallyQuantizableLinear", "Linear"}),
      facts("layers.0.linear1", {"Linear"}), facts("layers.0.norm1", {"LayerNorm"}),
      facts("layers.1", {"MyLayer", "TransformerEncoderLayer"}), facts("layers.1.linear1", {"Linear"}),
      facts("norm", {"LayerNorm"})};
  mm::RuleChoice c = mm::apply_selection_rules(enc, true);
  EXPECT_EQ(c.rule, 5);
  EXPECT_EQ(chosen_paths(enc, c), (std::vector<std::string>{"layers.0", "layers.1"}));
  EXPECT_EQ(c.description, "2 transformer layers");
  // Hugging Face: a *Layer made of modules, an item of a list named layer or layers.
  std::vector<mm::ModuleFacts> bert = {
      facts("", {"BertForSequenceClassification"}), facts("bert", {"BertModel"}),
      facts("bert.embeddings", {"BertEmbeddings"}), facts("bert.embeddings.word_embeddings", {"Embedding"}),
      facts("bert.encoder", {"BertEncoder"}), facts("bert.encoder.layer", {"ModuleList"}, false, false),
      facts("bert.encoder.layer.0", {"BertLayer"}), facts("bert.encoder.layer.0.attention", {"BertAttention"}),
      facts("bert.encoder.layer.0.attention.self.query", {"Linear"}),
      facts("bert.encoder.layer.1", {"BertLayer"}), facts("bert.encoder.layer.1.output", {"BertOutput"}),
      facts("bert.pooler", {"BertPooler"}), facts("classifier", {"Linear"})};
  c = mm::apply_selection_rules(bert, true);
  EXPECT_EQ(chosen_paths(bert, c), (std::vector<std::string>{"bert.encoder.layer.0", "bert.encoder.layer.1"}));
  // Not transformer layers: a *Layer that is a leaf, one outside a layer(s) list, one that is the
  // list's own attribute rather than an item, and a ConvLayer in a Sequential.
  std::vector<mm::ModuleFacts> others = {
      facts("", {"Net"}), facts("layers", {"Sequential"}), facts("layers.0", {"DenseLayer", "Linear"}),
      facts("stem", {"Sequential"}), facts("stem.0", {"ConvLayer", "Sequential"}), facts("stem.0.0", {"Conv2d"}),
      facts("blocks", {"ModuleList"}, false, false), facts("blocks.0", {"EncoderLayer"}),
      facts("blocks.0.fc", {"Linear"}), facts("layer", {"MergeLayer"}), facts("layer.fc", {"Linear"})};
  c = mm::apply_selection_rules(others, true);
  EXPECT_EQ(c.rule, 6);
}

TEST(SelectionRules, BlocksOutermostOnlyBelowTheRoot) {
  // A ConvBlock inside a ResBlock and a transformer layer inside a block are inside its residual
  // branch; the root hides nothing (a TorchScript root is no candidate: both doors agree).
  std::vector<mm::ModuleFacts> f = {
      facts("", {"ResBlockNet"}), facts("0", {"ResBlock"}), facts("0.conv", {"ConvBlock"}),
      facts("0.conv.0", {"Conv2d"}), facts("1", {"ResBlock"}), facts("1.layers", {"ModuleList"}, false, false),
      facts("1.layers.0", {"TransformerEncoderLayer"}), facts("2", {"ConvBlock"}), facts("20", {"ConvBlock"})};
  mm::RuleChoice c = mm::apply_selection_rules(f, true);
  EXPECT_EQ(c.rule, 5);
  EXPECT_EQ(chosen_paths(f, c), (std::vector<std::string>{"", "0", "1", "2", "20"}));
  EXPECT_EQ(c.description, "5 modules whose class name contains block or bottleneck");
  torch::jit::Module net = module("ResBlockNet", {{"a", module("ResBlock", {{"conv", module("ConvBlock")}})},
                                                  {"b", module("TransformerEncoderLayer", {{"fc", module("Linear")}})}});
  mm::PointSelection s = mm::select_points(net);
  EXPECT_EQ(s.names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(s.rule, "1 module whose class name contains block or bottleneck and 1 transformer layer");
  // UnetBlocks too, outermost only.
  std::vector<mm::ModuleFacts> unet = {facts("", {"DynamicUnet"}), facts("4", {"UnetBlock"}),
                                       facts("4.inner", {"UnetBlock"})};
  EXPECT_EQ(chosen_paths(unet, mm::apply_selection_rules(unet, true)), std::vector<std::string>{"4"});
}

TEST(SelectionRules, RegularisersAreNeverPoints) {
  // timm's DropBlock2d has "block" in its name; it and DropPath return their input masked.
  std::vector<mm::ModuleFacts> f = {facts("", {"Sequential"}), facts("0", {"Conv2d"}), facts("1", {"DropBlock2d"}),
                                    facts("2", {"DropPath"}), facts("3", {"StochasticDepth"}),
                                    facts("4", {"DropBlock3d"}), facts("5", {"ReLU"})};
  mm::RuleChoice c = mm::apply_selection_rules(f, true);
  EXPECT_EQ(c.rule, 6);
  EXPECT_EQ(chosen_paths(f, c), (std::vector<std::string>{"0", "5"}));
}

TEST(SelectionRules, ModulesSeenOnOneInputBranchYieldToTheNextRule) {
  // A two-tower model: the image tower's blocks see one input, so rule 5 finds nothing and rule
  // 6 chooses the modules after the join. A marker is the user's choice and stays.
  auto two_tower = [](bool marker) {
    std::vector<mm::ModuleFacts> f = {facts("", {"TwoTower"}), facts("image", {"Sequential"}),
                                      facts("image.0", {"ResBlock"}), facts("image.1", {"ResBlock"}),
                                      facts("meta", {"Linear"}), facts("head", {"Linear"})};
    for (size_t i = 1; i <= 4; ++i) f[i].partial_inputs = true;
    if (marker) f[2].class_names = {"ManifoldMixupModule"};
    return f;
  };
  std::vector<mm::ModuleFacts> f = two_tower(false);
  mm::RuleChoice c = mm::apply_selection_rules(f, true);
  EXPECT_EQ(c.rule, 6);
  EXPECT_EQ(chosen_paths(f, c), (std::vector<std::string>{"", "head"}));
  f = two_tower(true);
  EXPECT_EQ(chosen_paths(f, mm::apply_selection_rules(f, true)), std::vector<std::string>{"image.0"});
  // TabularModel: its embeddings see the categories only; every Linear sees both.
  std::vector<mm::ModuleFacts> tab = {facts("", {"TabularModel"}), facts("embeds.0", {"Embedding"}),
                                      facts("lin", {"Linear"}), facts("cont", {"Linear"})};
  tab[1].partial_inputs = tab[3].partial_inputs = true;
  EXPECT_EQ(chosen_paths(tab, mm::apply_selection_rules(tab, true)), std::vector<std::string>{"lin"});
}
