// What the tests of manifold_mixup::mix's kernels compare with: the definition written with
// ordinary ATen ops in float64, and how close each dtype must come to it.
#pragma once

#include <torch/types.h>

#include <vector>

namespace mix_reference {

inline torch::Tensor reference(const torch::Tensor& x, const torch::Tensor& perm, const torch::Tensor& lam) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  const auto l = lam.to(torch::kDouble).view(shape);
  const auto xd = x.to(torch::kDouble);
  return l * xd + (1 - l) * xd.index_select(0, perm);
}

inline double tolerance(torch::ScalarType t) {
  switch (t) {
    case torch::kHalf: return 1e-3;
    case torch::kBFloat16: return 1e-2;
    case torch::kFloat: return 1e-6;
    default: return 1e-12;
  }
}

}  // namespace mix_reference
