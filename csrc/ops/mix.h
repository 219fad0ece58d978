// The manifold_mixup::mix op and its helpers, as seen from C++ hosts.
//
//   out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]   (along dim 0)
//
// Every function here goes through PyTorch's dispatcher, so the right backend
// (CPU, CUDA, Meta) and autograd are picked from the arguments.
#pragma once

#include <ATen/core/Tensor.h>

#include "../export.h"

namespace manifold_mixup {

// Mixes `x` along its first dimension. Differentiable with respect to x and lam.
MM_CORE_API at::Tensor mix(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam);

namespace detail {
// The op manifold_mixup::_mix_backward, the gradient of mix with respect to x:
// grad_x[j] = lam[j]*g[j] + sum over k with perm[k] == j of (1 - lam[k]) * g[k]; any index
// vector. Private to the op's autograd (which differentiates it again for double backward).
MM_CORE_API at::Tensor _mix_backward(const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam);

// What follows is the backends' own, inside the core (not exported by libmanifold_mixup_core).
// The dispatcher needs defined tensors to pick a backend: checked before dispatching.
void check_defined(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                   const char* x_name);
// Argument checks shared by every backend; each names the argument and what was expected, and
// throws ArgumentError (errors.h). Checks shapes and dtypes only; index range is checked where
// the indices are read.
void check_mix_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                    const char* x_name = "x");
// The operands as every kernel wants them, after check_mix_args: contiguous x and perm,
// lam in x's opmath dtype (at::toOpMathType: float32 for float16, bfloat16 and float32), and x
// seen as [batch, features].
struct Operands {
  at::Tensor x, perm, lam;
  int64_t batch = 0, features = 0;
  Operands(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in,
           const char* x_name);
};
}  // namespace detail

}  // namespace manifold_mixup
