// The manifold_mixup::mix op and its helpers, as seen from C++ hosts.
//
//   out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]   (along dim 0)
//
// A row whose lam[i] is exactly 1 is x[i] copied: x[perm[i]] is not read, so an inf or NaN in
// another row cannot leak in through 0 * inf. "Exactly" is after lam is converted to the
// arithmetic's dtype (float32 for float16, bfloat16 and float32 x; float64 for float64 x).
// Under torch.compile every mixup point calls the op, with lam all ones except at the point
// that mixes: there the op is a copy, exact whatever x holds.
//
// The result has x's memory format when x is channels_last (or channels_last_3d), else it is
// contiguous: in both layouts each sample is one dense block, which is all the kernels need.
//
// Every function here goes through PyTorch's dispatcher, so the right backend (CPU, CUDA,
// Meta) and autograd are picked from the arguments.
#pragma once

#include <ATen/core/Tensor.h>

namespace manifold_mixup {

// Mixes `x` along its first dimension. Differentiable with respect to x and lam. Bad arguments
// (dtypes, shapes, devices; on the CPU also an index of perm outside [0, B)) throw
// ArgumentError (errors.h). On CUDA an index outside [0, B) is found by the kernel, which
// cannot throw: it trips a device-side assert (see ops/cuda/mix_kernel.cu).
at::Tensor mix(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam);

namespace detail {
// The op manifold_mixup::_mix_backward, the gradient of mix with respect to x:
//   grad_x[j] = lam[j]*g[j] + sum over k with perm[k] == j and lam[k] != 1 of (1 - lam[k]) * g[k]
// for any index vector (a source k whose 1 - lam[k] is exactly 0 contributes nothing and its
// g[k] is not read: with lam all ones the backward is a copy of g). Private to the op's
// autograd (which differentiates it again for double backward).
at::Tensor _mix_backward(const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam);

// The dispatcher needs defined tensors to pick a backend: checked before dispatching.
void check_defined(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                   const char* x_name);
// Argument checks shared by every backend, on the host, before any kernel or device guard;
// each names the argument and what was expected, and throws ArgumentError (errors.h). Checks
// dtypes, shapes and devices; the index range is checked where the indices are read.
void check_mix_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                    const char* x_name = "x");
// The memory format of mix's result (and of _mix_backward's, from grad): x's own when x is
// channels_last or channels_last_3d, else contiguous. One rule for every backend, Meta too.
at::MemoryFormat result_format(const at::Tensor& x);
// An uninitialised result for x: x's sizes, dtype and device, in result_format(x).
at::Tensor empty_result(const at::Tensor& x);
// The operands as every kernel wants them, after check_mix_args: x in result_format(x) (each
// sample one dense block of `features` elements, sample i at i * features), contiguous perm,
// lam in x's opmath dtype (at::toOpMathType: float32 for float16, bfloat16 and float32).
struct Operands {
  at::Tensor x, perm, lam;
  int64_t batch = 0, features = 0;
  Operands(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in);
};
}  // namespace detail

}  // namespace manifold_mixup
