#include "selection.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <string>
#include <utility>

namespace manifold_mixup {

namespace {

// The name-based facts the rules use (see selection.h).
constexpr const char* kMarker = "ManifoldMixupModule";
constexpr const char* kTabular = "TabularModel";  // fastai.tabular.model
constexpr const char* kLinear = "Linear";
constexpr const char* kUnetBlock = "UnetBlock";   // fastai.vision.models.unet
const char* const kContainers[] = {"Sequential", "ModuleList", "ModuleDict", "ParameterList",
                                   "ParameterDict"};
// fastai.text: AWD_LSTM's internals are recurrent (WeightDropout re-runs its LSTM's weights,
// hidden states carry over); SentenceEncoder returns a tuple and runs its module once per bptt
// chunk, so a point inside it would mix the first chunk only.
const char* const kOpaque[] = {"AWD_LSTM", "SentenceEncoder"};
// fastai.text heads that return a tuple (the output and the encoder's, for RNNRegularizer).
const char* const kTupleOutput[] = {"LinearDecoder", "PoolingLinearClassifier"};
// Regularisers that, like dropout, return their input masked (timm.layers, torchvision.ops):
// never a point, though rule 5's substring finds "block" in two of them.
const char* const kRegularisers[] = {"DropBlock2d", "DropBlock3d", "DropPath", "StochasticDepth"};
// torch.nn's transformer layers; a layer of Hugging Face models is recognised by its place.
const char* const kTorchTransformerLayers[] = {"TransformerEncoderLayer", "TransformerDecoderLayer"};
// The attribute names under which Hugging Face models keep their layers (encoder.layer.0,
// model.layers.0).
const char* const kLayerLists[] = {"layer", "layers"};

bool is_a(const ModuleFacts& m, const char* name) {
  return std::find(m.class_names.begin(), m.class_names.end(), name) != m.class_names.end();
}

template <size_t N>
bool is_any(const ModuleFacts& m, const char* const (&names)[N]) {
  return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return is_a(m, n); });
}

template <size_t N>
bool own_class_in(const ModuleFacts& m, const char* const (&names)[N]) {
  return !m.class_names.empty() &&
         std::any_of(std::begin(names), std::end(names), [&](const char* n) { return m.class_names[0] == n; });
}

bool is_container(const ModuleFacts& m) {
  return !m.has_forward || own_class_in(m, kContainers);
}

bool is_block(const ModuleFacts& m) {
  if (m.class_names.empty()) return false;
  std::string lc = m.class_names[0];
  std::transform(lc.begin(), lc.end(), lc.begin(), [](unsigned char c) { return std::tolower(c); });
  return lc.find("block") != std::string::npos || lc.find("bottleneck") != std::string::npos;
}

bool inside(const std::string& path, const std::string& ancestor) {
  return ancestor.empty() || path == ancestor ||
         (path.size() > ancestor.size() && path.compare(0, ancestor.size(), ancestor) == 0 &&
          path[ancestor.size()] == '.');
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The last two components of a dotted path: "bert.encoder.layer.0" -> ("layer", "0").
std::pair<std::string, std::string> last_two(const std::string& path) {
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos) return {"", path};
  const size_t before = dot == 0 ? std::string::npos : path.rfind('.', dot - 1);
  const size_t start = before == std::string::npos ? 0 : before + 1;
  return {path.substr(start, dot - start), path.substr(dot + 1)};
}

// modules[i] is a transformer layer: one of torch.nn's, or a Hugging Face one: a class named
// *Layer, made of modules of its own, held as an item of a list named layer or layers. The
// place is what tells a transformer's layer from any class named *Layer (fastai's ConvLayer, a
// single Linear subclass).
bool is_transformer_layer(const std::vector<ModuleFacts>& modules, size_t i) {
  const ModuleFacts& m = modules[i];
  if (is_any(m, kTorchTransformerLayers)) return true;
  if (m.class_names.empty() || !ends_with(m.class_names[0], "Layer")) return false;
  const auto [list, item] = last_two(m.path);
  const bool is_index = !item.empty() && std::all_of(item.begin(), item.end(), [](unsigned char ch) {
    return std::isdigit(ch);
  });
  const bool in_list = std::any_of(std::begin(kLayerLists), std::end(kLayerLists),
                                   [&](const char* n) { return list == n; });
  if (!is_index || !in_list) return false;
  for (size_t j = i + 1; j < modules.size(); ++j)  // made of modules of its own
    if (modules[j].path != m.path && inside(modules[j].path, m.path)) return true;
  return false;
}

std::string count(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

const std::vector<std::string>& non_mixable_class_names() {
  static const std::vector<std::string> names = {
      "Sequential",
      "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
      "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
      "LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "RNNBase", "RNNCell", "RNNCellBase"};
  return names;
}

bool is_non_mixable_class(const std::string& class_name) {
  const auto& names = non_mixable_class_names();
  return std::find(names.begin(), names.end(), class_name) != names.end();
}

RuleChoice apply_selection_rules(const std::vector<ModuleFacts>& modules, bool root_is_candidate) {
  TORCH_CHECK_VALUE(modules.empty() || modules[0].path.empty(),
                    "selection rules: the first module must be the root (path \"\"), got '",
                    modules[0].path, "'");
  std::vector<std::string> opaque;  // roots of the subtrees rules 3 to 6 leave alone
  for (const ModuleFacts& m : modules)
    if (is_any(m, kOpaque)) opaque.push_back(m.path);
  auto candidate = [&](size_t i) { return (i > 0 || root_is_candidate) && !is_container(modules[i]); };
  auto automatic = [&](size_t i) {
    const ModuleFacts& m = modules[i];
    return candidate(i) && !is_any(m, kTupleOutput) && !is_any(m, kRegularisers) && !m.partial_inputs &&
           std::none_of(opaque.begin(), opaque.end(), [&](const std::string& o) { return inside(m.path, o); });
  };
  // The modules `keep` accepts; with `outermost`, none inside another accepted one except the
  // root (the model itself hides nothing: a TorchScript root is no candidate, and both front
  // doors must agree below it).
  auto pick = [&](const std::function<bool(size_t)>& keep, bool outermost) {
    std::vector<size_t> chosen;
    for (size_t i = 0; i < modules.size(); ++i) {
      if (!keep(i)) continue;
      const bool covered = outermost && std::any_of(chosen.begin(), chosen.end(), [&](size_t c) {
        return c != 0 && inside(modules[i].path, modules[c].path);
      });
      if (!covered) chosen.push_back(i);
    }
    return chosen;
  };

  RuleChoice c;
  const bool tabular = !modules.empty() && is_a(modules[0], kTabular);
  auto count_of = [](const char* one, const char* many) {
    return [=](const std::vector<size_t>& chosen) { return count(chosen.size(), one, many); };
  };
  // Rule 5's sentence names what it found: blocks, transformer layers or both.
  auto blocks_and_layers = [&](const std::vector<size_t>& chosen) {
    const size_t layers = std::count_if(chosen.begin(), chosen.end(), [&](size_t i) {
      return !is_block(modules[i]);
    });
    const size_t blocks = chosen.size() - layers;
    std::string s;
    if (blocks)
      s = count(blocks, "module whose class name contains block or bottleneck",
                "modules whose class name contains block or bottleneck");
    if (blocks && layers) s += " and ";
    if (layers) s += count(layers, "transformer layer", "transformer layers");
    return s;
  };
  const struct {
    int rule;
    std::function<bool(size_t)> keep;
    bool outermost;
    std::function<std::string(const std::vector<size_t>&)> describe;
  } rules[] = {
      {2, [&](size_t i) { return candidate(i) && is_a(modules[i], kMarker); }, false,
       count_of("module wrapped in ManifoldMixupModule", "modules wrapped in ManifoldMixupModule")},
      {3, [&](size_t i) { return tabular && automatic(i) && is_a(modules[i], kLinear); }, false,
       count_of("Linear layer of a fastai TabularModel", "Linear layers of a fastai TabularModel")},
      {4, [&](size_t i) { return automatic(i) && is_a(modules[i], kUnetBlock); }, true,
       count_of("UnetBlock of a fastai U-Net", "UnetBlocks of a fastai U-Net")},
      {5, [&](size_t i) { return automatic(i) && (is_block(modules[i]) || is_transformer_layer(modules, i)); },
       true, blocks_and_layers},
      {6, [&](size_t i) { return automatic(i) && !modules[i].non_mixable; }, false,
       count_of("module of a mixable kind", "modules of mixable kinds")},
  };
  for (const auto& r : rules) {
    c.chosen = pick(r.keep, r.outermost);
    if (c.chosen.empty()) continue;
    c.rule = r.rule;
    c.description = r.describe(c.chosen);
    return c;
  }
  c.description = "no module";
  return c;
}

PointSelection select_points(const torch::jit::Module& root) {
  std::vector<ModuleFacts> facts;
  for (const auto& nm : root.named_modules()) {
    ModuleFacts f;
    f.path = nm.name;
    const auto& q = nm.value.type()->name();
    if (q) f.class_names.push_back(q->name());  // the last component: mangling is in the prefix
    f.has_forward = nm.value.find_method("forward").has_value();
    f.non_mixable = !f.class_names.empty() && is_non_mixable_class(f.class_names[0]);
    facts.push_back(std::move(f));
  }
  const RuleChoice c = apply_selection_rules(facts, /*root_is_candidate=*/false);
  TORCH_CHECK_VALUE(!c.chosen.empty(), "no mixup point found: no submodule of this module can mix "
                    "by the selection rules; pass the submodules' names, or wrap them in "
                    "ManifoldMixupModule before scripting");
  PointSelection s;
  for (size_t i : c.chosen) s.names.push_back(facts[i].path);
  s.rule = c.description;
  return s;
}

}  // namespace manifold_mixup
