// Device strings of the C ABI ("cpu", "cuda", "cuda:N"), checked against what libtorch reaches.
#pragma once

#include <c10/core/Device.h>

namespace manifold_mixup::capi {

// The device `device` names: NullError when NULL, ArgumentError when it is not "cpu" or
// "cuda[:N]" or names a GPU that libtorch does not see.
c10::Device parse_device(const char* device);

}  // namespace manifold_mixup::capi
