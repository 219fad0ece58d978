// The handles the C ABI hands out. Each begins with a magic number of its kind, checked on
// every entry (live()) and cleared by its destroy function (retire()), as sqlite does for
// SQLITE_MISUSE: a handle used after its destroy, destroyed twice, or of another kind is
// refused with a status instead of being followed. So that reading a destroyed handle's magic
// is not itself a use of freed memory, retire() keeps the empty shells of the last
// kQuarantine handles of each kind; older ones are freed, and a handle used after that is
// undefined behaviour, as any freed pointer is.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/jit/api/module.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

#include "errors.h"
#include "guard.h"
#include "mixer.h"
#include "point_rewrite.h"

struct mm_tensor {
  static constexpr uint32_t kMagic = 0x6d6d5445;  // "mmTE"
  static constexpr const char* kKind = "an mm_tensor";
  uint32_t magic = kMagic;
  at::Tensor t;
};
struct mm_mixer {
  static constexpr uint32_t kMagic = 0x6d6d4d58;  // "mmMX"
  static constexpr const char* kKind = "an mm_mixer";
  uint32_t magic = kMagic;
  std::shared_ptr<manifold_mixup::Mixer> mixer;
};
struct mm_module {
  static constexpr uint32_t kMagic = 0x6d6d4d4f;  // "mmMO"
  static constexpr const char* kKind = "an mm_module";
  uint32_t magic = kMagic;
  torch::jit::Module module;
};
struct mm_hook {
  static constexpr uint32_t kMagic = 0x6d6d484b;  // "mmHK"
  static constexpr const char* kKind = "an mm_hook";
  uint32_t magic = kMagic;
  std::unique_ptr<manifold_mixup::PointRewrite> rewrite;
};

namespace manifold_mixup::capi {

constexpr uint32_t kDestroyed = 0x6d6d4445;  // "mmDE"
constexpr size_t kQuarantine = 1024;         // stated in manifold_mixup.h

// *h, once h is known to be a live handle of its kind: NullError, StateError (destroyed), or
// ArgumentError (another kind), each naming the argument.
template <typename H>
H& live(H* h, const char* name) {
  nonnull(h, name);
  MM_CHECK_STATE(h->magic != kDestroyed, name, " was destroyed (a handle used after its destroy "
                 "function, or destroyed twice)");
  MM_CHECK_ARG(h->magic == H::kMagic, name, " is not ", H::kKind, " handle");
  return *h;
}
template <typename H>
const H& live(const H* h, const char* name) {
  return live(const_cast<H*>(h), name);
}

// A new handle that owns `t`.
inline mm_tensor* new_tensor(at::Tensor t) { return new mm_tensor{mm_tensor::kMagic, std::move(t)}; }

// Marks *h destroyed and keeps its shell in the quarantine, freeing the oldest beyond
// kQuarantine. The caller has moved the contents out first (so that whatever their
// destructors run happens outside the lock).
template <typename H>
void retire(H* h) {
  static std::mutex mutex;
  static std::deque<std::unique_ptr<H>> quarantine;
  std::unique_ptr<H> oldest;
  std::lock_guard<std::mutex> lock(mutex);
  h->magic = kDestroyed;
  quarantine.emplace_back(h);
  if (quarantine.size() > kQuarantine) {
    oldest = std::move(quarantine.front());
    quarantine.pop_front();
  }
}

}  // namespace manifold_mixup::capi
