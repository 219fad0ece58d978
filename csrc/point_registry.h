// Which TorchScript module objects are mixup points, and of which Mixer: the table that the op
// manifold_mixup::_mix_point (ops/mix_point.cpp) reads on every call. Keyed by object identity,
// so when several instances share one module type (and so one graph, where the op is inserted)
// only the named instance is found. It also records which module types have their methods
// replaced by a PointRewrite (one at a time per type), and whether the current thread runs a
// plain forward, in which no point mixes.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/class_type.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mixer.h"

namespace manifold_mixup {

struct PointEntry {
  std::shared_ptr<Mixer> mixer;
  int64_t index;  // the point's index in the mixer
};

// The entry of `object` when it is a registered point.
std::optional<PointEntry> find_point(const c10::ivalue::Object* object);

// Registers objects[i] (named names[i]) as point i of `mixer` and claims `types`, all or
// nothing: throws StateError naming the first object or type another rewrite holds.
void claim_points(const std::vector<const c10::ivalue::Object*>& objects,
                  const std::vector<std::string>& names, const std::vector<c10::ClassTypePtr>& types,
                  const std::shared_ptr<Mixer>& mixer);
// Undoes claim_points.
void release_points(const std::vector<const c10::ivalue::Object*>& objects,
                    const std::vector<c10::ClassTypePtr>& types);

// While one lives, no point mixes in the forward passes this thread runs.
class PlainForwardGuard {
 public:
  PlainForwardGuard();
  ~PlainForwardGuard();
  PlainForwardGuard(const PlainForwardGuard&) = delete;
  PlainForwardGuard& operator=(const PlainForwardGuard&) = delete;

 private:
  bool previous_;
};
bool in_plain_forward();

}  // namespace manifold_mixup
