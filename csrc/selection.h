// The selection rules: which submodules of a TorchScript module become mixup points when the
// host names none. The Python package applies the same rules to nn.Module trees
// (python/manifold_mixup/selection.py).
#pragma once

#include <torch/csrc/jit/api/module.h>

#include <string>
#include <vector>

namespace manifold_mixup {

// Which submodules the selection rules pick when the host names none, and the rule that did.
struct PointSelection {
  std::vector<std::string> names;  // dotted paths from the root ("layer2.1")
  std::string rule;                // e.g. "3 modules whose class name contains block"
};

// The selection rules of the Python package, on a TorchScript module, first rule that yields
// modules wins: (1) submodules whose class is named ManifoldMixupModule; (2) submodules whose
// class name contains "block" or "bottleneck" (any case); (3) every submodule whose class is not
// a non-mixable kind (see is_non_mixable_class). The root is never a candidate. Throws
// c10::Error telling the user to pass names when no rule yields anything.
PointSelection select_points(const torch::jit::Module& root);

// Whether a class name (last component of the qualified name) is a kind that is never a point:
// containers, dropout, batch norm and recurrent layers, as Python's non_mixable_module_types.
bool is_non_mixable_class(const std::string& class_name);

}  // namespace manifold_mixup
