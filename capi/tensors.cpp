// The C ABI's tensors: from and to host buffers and DLPack, their shape and dtype, devices.
#include <ATen/DLConvertor.h>
#include <ATen/dlpack.h>
#include <ATen/ops/empty.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "device.h"
#include "errors.h"
#include "guard.h"
#include "handles.h"
#include "manifold_mixup.h"

using manifold_mixup::capi::guard;
using manifold_mixup::capi::live;
using manifold_mixup::capi::nonnull;

namespace {

at::ScalarType scalar_type(mm_dtype d) {
  switch (d) {
    case MM_FLOAT32: return at::kFloat;
    case MM_FLOAT64: return at::kDouble;
    case MM_INT64: return at::kLong;
    case MM_INT32: return at::kInt;
    case MM_UINT8: return at::kByte;
  }
  MM_CHECK_ARG(false, "dtype ", static_cast<int>(d), " is not an mm_dtype");
  return at::kFloat;
}

mm_dtype to_mm_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return MM_FLOAT32;
    case at::kDouble: return MM_FLOAT64;
    case at::kLong: return MM_INT64;
    case at::kInt: return MM_INT32;
    case at::kByte: return MM_UINT8;
    default: break;
  }
  MM_CHECK_ARG(false, "the tensor's dtype ", s, " has no mm_dtype");
  return MM_FLOAT32;
}

}  // namespace

extern "C" {

size_t mm_dtype_size(mm_dtype dtype) {
  switch (dtype) {
    case MM_FLOAT32: case MM_INT32: return 4;
    case MM_FLOAT64: case MM_INT64: return 8;
    case MM_UINT8: return 1;
  }
  return 0;
}

mm_status mm_tensor_from_host(const void* data, mm_dtype dtype, const int64_t* shape, int ndim,
                              mm_tensor** out) {
  return guard(__func__, [&] {
    nonnull(out, "out");
    const at::ScalarType st = scalar_type(dtype);
    MM_CHECK_ARG(ndim >= 0 && ndim <= 8, "ndim must be in [0, 8], got ", ndim);
    if (ndim > 0) nonnull(shape, "shape");
    std::vector<int64_t> sizes(shape, shape + ndim);
    int64_t numel = 1;
    for (int i = 0; i < ndim; ++i) {
      MM_CHECK_ARG(sizes[i] >= 0, "shape[", i, "] must be >= 0, got ", sizes[i]);
      MM_CHECK_ARG(!__builtin_mul_overflow(numel, sizes[i], &numel), "shape ", c10::IntArrayRef(sizes),
                   " has more than 2^63 elements");
    }
    const size_t elem = mm_dtype_size(dtype);
    MM_CHECK_ARG(static_cast<uint64_t>(numel) <= static_cast<uint64_t>(PTRDIFF_MAX) / elem, "shape ",
                 c10::IntArrayRef(sizes), " of ", elem, "-byte elements is larger than memory can be");
    if (numel > 0) nonnull(data, "data");
    const size_t bytes = static_cast<size_t>(numel) * elem;
    at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(st));
    if (bytes > 0) std::memcpy(t.data_ptr(), data, bytes);
    *out = manifold_mixup::capi::new_tensor(std::move(t));
  });
}

mm_status mm_tensor_to_host(const mm_tensor* tensor, void* buffer, size_t bytes) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(buffer, "buffer");
    const size_t need = static_cast<size_t>(t.numel()) * mm_dtype_size(to_mm_dtype(t.scalar_type()));
    MM_CHECK_ARG(bytes == need, "the buffer must be ", need, " bytes, got ", bytes);
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    if (need > 0) std::memcpy(buffer, c.data_ptr(), need);
  });
}

mm_status mm_tensor_item(const mm_tensor* tensor, double* value) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(value, "value");
    MM_CHECK_ARG(t.numel() == 1, "the tensor must have one element, has ", t.numel());
    *value = t.detach().to(at::kDouble).item<double>();
  });
}

mm_status mm_tensor_ndim(const mm_tensor* tensor, int* ndim) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(ndim, "ndim");
    *ndim = static_cast<int>(t.dim());
  });
}

mm_status mm_tensor_size(const mm_tensor* tensor, int dim, int64_t* size) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(size, "size");
    const int64_t n = t.dim();
    MM_CHECK_ARG(dim >= -n && dim < n, "dim ", dim, " out of range for a tensor of ", n, " dimensions");
    *size = t.size(dim);
  });
}

mm_status mm_tensor_numel(const mm_tensor* tensor, int64_t* numel) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(numel, "numel");
    *numel = t.numel();
  });
}

mm_status mm_tensor_dtype(const mm_tensor* tensor, mm_dtype* dtype) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(dtype, "dtype");
    *dtype = to_mm_dtype(t.scalar_type());
  });
}

mm_status mm_tensor_from_dlpack(struct DLManagedTensor* managed, mm_tensor** out) {
  return guard(__func__, [&] {
    nonnull(managed, "managed");
    nonnull(out, "out");
    // fromDLPack's own checks (device, dtype) throw before it takes the deleter, so on
    // failure ownership stays with the caller; the checks here make those errors MM_ERR_ARG.
    const DLTensor& dl = managed->dl_tensor;
    MM_CHECK_ARG(dl.device.device_type == kDLCPU, "only CPU DLPack tensors are supported, got device type ",
                 static_cast<int>(dl.device.device_type));
    MM_CHECK_ARG(dl.ndim >= 0 && (dl.ndim == 0 || dl.shape != nullptr) && dl.data != nullptr,
                 "malformed DLTensor (ndim, shape or data)");
    auto holder = std::make_unique<mm_tensor>();
    holder->t = at::fromDLPack(managed);
    *out = holder.release();
  });
}

mm_status mm_tensor_to_dlpack(const mm_tensor* tensor, struct DLManagedTensor** out) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(out, "out");
    *out = at::toDLPack(t.detach());
  });
}

mm_status mm_tensor_destroy(mm_tensor* tensor) {
  return guard(__func__, [&] {
    if (!tensor) return;
    at::Tensor contents = std::move(live(tensor, "tensor").t);
    manifold_mixup::capi::retire(tensor);
  });
}

mm_status mm_tensor_to_device(const mm_tensor* tensor, const char* device, mm_tensor** out) {
  return guard(__func__, [&] {
    const at::Tensor& t = live(tensor, "tensor").t;
    nonnull(out, "out");
    const c10::Device d = manifold_mixup::capi::parse_device(device);
    *out = manifold_mixup::capi::new_tensor(t.to(d, /*non_blocking=*/false, /*copy=*/true));
  });
}

}  // extern "C"
