#include "device.h"

#include <torch/cuda.h>

#include <string>

#include "errors.h"
#include "guard.h"

namespace manifold_mixup::capi {

c10::Device parse_device(const char* device) {
  nonnull(device, "device");
  const auto bad = [&] {
    MM_CHECK_ARG(false, "device must be \"cpu\" or \"cuda[:N]\", got \"", device, "\"");
  };
  c10::Device d = c10::kCPU;
  try {
    d = c10::Device(std::string(device));
  } catch (const c10::Error&) {
    bad();
  }
  if (!d.is_cpu() && !d.is_cuda()) bad();
  if (d.is_cuda()) {
    const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
    MM_CHECK_ARG(n > 0, "device \"", device, "\" asked for, but libtorch sees no CUDA GPU here (no GPU, ",
                 "or a libtorch built without CUDA)");
    MM_CHECK_ARG(!d.has_index() || d.index() < n, "device \"", device, "\" asked for, but there are ", n,
                 " CUDA devices");
  }
  return d;
}

}  // namespace manifold_mixup::capi
