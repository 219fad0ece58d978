#include "selection.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>

namespace manifold_mixup {

namespace {

std::string class_name(const torch::jit::Module& m) {
  const auto& q = m.type()->name();
  return q ? q->name() : std::string();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

}  // namespace

bool is_non_mixable_class(const std::string& name) {
  static const char* const exact[] = {
      "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict",
      "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
      "LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "RNNBase", "RNNCell", "RNNCellBase",
      "AWD_LSTM"};
  for (const char* e : exact)
    if (name == e) return true;
  return name.find("Dropout") != std::string::npos;  // Dropout1d/2d/3d, AlphaDropout, ...
}

PointSelection select_points(const torch::jit::Module& root) {
  std::vector<std::string> marked, blocks, mixable;
  for (const auto& nm : root.named_modules()) {
    if (nm.name.empty()) continue;  // the root itself
    const std::string cls = class_name(nm.value);
    const std::string lc = lower(cls);
    if (cls == "ManifoldMixupModule") marked.push_back(nm.name);
    if (lc.find("block") != std::string::npos || lc.find("bottleneck") != std::string::npos)
      blocks.push_back(nm.name);
    if (!is_non_mixable_class(cls)) mixable.push_back(nm.name);
  }
  PointSelection s;
  auto pick = [&](std::vector<std::string>& names, const char* what) {
    s.names = std::move(names);
    s.rule = std::to_string(s.names.size()) + (s.names.size() == 1 ? " module " : " modules ") + what;
  };
  if (!marked.empty()) pick(marked, "wrapped in ManifoldMixupModule");
  else if (!blocks.empty()) pick(blocks, "whose class name contains block or bottleneck");
  else if (!mixable.empty()) pick(mixable, "of mixable kinds");
  TORCH_CHECK(!s.names.empty(), "no mixup point found: the module has no submodule that can mix; "
              "pass the submodules' names, or wrap them in ManifoldMixupModule before scripting");
  return s;
}

}  // namespace manifold_mixup
