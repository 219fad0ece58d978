#include "point_registry.h"

#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "errors.h"

namespace manifold_mixup {

namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::unordered_map<const c10::ivalue::Object*, PointEntry>& points() {
  static std::unordered_map<const c10::ivalue::Object*, PointEntry> p;
  return p;
}
std::unordered_set<const c10::ClassType*>& claimed_types() {
  static std::unordered_set<const c10::ClassType*> t;
  return t;
}

// A thread's flag, not a module's: the same module may run plainly on one thread while it
// trains on another.
thread_local bool t_plain_forward = false;

}  // namespace

std::optional<PointEntry> find_point(const c10::ivalue::Object* object) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto it = points().find(object);
  if (it == points().end()) return std::nullopt;
  return it->second;
}

void claim_points(const std::vector<const c10::ivalue::Object*>& objects,
                  const std::vector<std::string>& names, const std::vector<c10::ClassTypePtr>& types,
                  const std::shared_ptr<Mixer>& mixer) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (size_t i = 0; i < objects.size(); ++i)
    MM_CHECK_STATE(!points().count(objects[i]), "'", names[i], "' is already a mixup point of another hook");
  for (const auto& type : types)
    MM_CHECK_STATE(!claimed_types().count(type.get()), "module type ", type->repr_str(),
                   " is already rewritten by another installed hook (remove it first)");
  for (size_t i = 0; i < objects.size(); ++i) points()[objects[i]] = PointEntry{mixer, static_cast<int64_t>(i)};
  for (const auto& type : types) claimed_types().insert(type.get());
}

void release_points(const std::vector<const c10::ivalue::Object*>& objects,
                    const std::vector<c10::ClassTypePtr>& types) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const auto* object : objects) points().erase(object);
  for (const auto& type : types) claimed_types().erase(type.get());
}

PlainForwardGuard::PlainForwardGuard() : previous_(t_plain_forward) { t_plain_forward = true; }
PlainForwardGuard::~PlainForwardGuard() { t_plain_forward = previous_; }
bool in_plain_forward() { return t_plain_forward; }

}  // namespace manifold_mixup
