#include "selection.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <functional>

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
    return candidate(i) && !is_any(modules[i], kTupleOutput) &&
           std::none_of(opaque.begin(), opaque.end(), [&](const std::string& o) { return inside(modules[i].path, o); });
  };
  auto pick = [&](const std::function<bool(size_t)>& keep) {
    std::vector<size_t> chosen;
    for (size_t i = 0; i < modules.size(); ++i)
      if (keep(i)) chosen.push_back(i);
    return chosen;
  };

  RuleChoice c;
  const bool tabular = !modules.empty() && is_a(modules[0], kTabular);
  const struct {
    int rule;
    std::function<bool(size_t)> keep;
    const char *one, *many;
  } rules[] = {
      {2, [&](size_t i) { return candidate(i) && is_a(modules[i], kMarker); },
       "module wrapped in ManifoldMixupModule", "modules wrapped in ManifoldMixupModule"},
      {3, [&](size_t i) { return tabular && automatic(i) && is_a(modules[i], kLinear); },
       "Linear layer of a fastai TabularModel", "Linear layers of a fastai TabularModel"},
      {4, [&](size_t i) { return automatic(i) && is_a(modules[i], kUnetBlock); },
       "UnetBlock of a fastai U-Net", "UnetBlocks of a fastai U-Net"},
      {5, [&](size_t i) { return automatic(i) && is_block(modules[i]); },
       "module whose class name contains block or bottleneck",
       "modules whose class name contains block or bottleneck"},
      {6, [&](size_t i) { return automatic(i) && !modules[i].non_mixable; },
       "module of a mixable kind", "modules of mixable kinds"},
  };
  for (const auto& r : rules) {
    c.chosen = pick(r.keep);
    if (c.chosen.empty()) continue;
    c.rule = r.rule;
    c.description = count(c.chosen.size(), r.one, r.many);
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
