// The C ABI's mixup points: a hook is a PointRewrite of one module for one mixer.
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "guard.h"
#include "handles.h"
#include "manifold_mixup.h"
#include "point_rewrite.h"

using manifold_mixup::PointRewrite;
using manifold_mixup::capi::guard;
using manifold_mixup::capi::live;
using manifold_mixup::capi::nonnull;

extern "C" {

mm_status mm_hook_install(mm_mixer* mixer, mm_module* module, const char* const* names, size_t n_names,
                          mm_hook** out) {
  return guard(__func__, [&] {
    const auto& m = live(mixer, "mixer").mixer;
    const torch::jit::Module& mod = live(module, "module").module;
    nonnull(out, "out");
    if (n_names > 0) nonnull(names, "names");
    std::vector<std::string> list;
    for (size_t i = 0; i < n_names; ++i) list.emplace_back(nonnull(names[i], c10::str("names[", i, "]").c_str()));
    auto rewrite = std::make_unique<PointRewrite>(m, mod, std::move(list));
    *out = new mm_hook{mm_hook::kMagic, std::move(rewrite)};
  });
}

mm_status mm_hook_remove(mm_hook* hook) {
  return guard(__func__, [&] {
    if (!hook) return;
    std::unique_ptr<PointRewrite> contents = std::move(live(hook, "hook").rewrite);
    manifold_mixup::capi::retire(hook);
    contents->remove();
  });
}

mm_status mm_hook_point_count(const mm_hook* hook, size_t* count) {
  return guard(__func__, [&] {
    const PointRewrite& r = *live(hook, "hook").rewrite;
    nonnull(count, "count");
    *count = r.point_names().size();
  });
}

mm_status mm_hook_point_name(const mm_hook* hook, size_t i, const char** name) {
  return guard(__func__, [&] {
    const PointRewrite& r = *live(hook, "hook").rewrite;
    nonnull(name, "name");
    const auto& names = r.point_names();
    MM_CHECK_ARG(i < names.size(), "point index ", i, " out of range [0, ", names.size(), ")");
    *name = names[i].c_str();
  });
}

mm_status mm_hook_mix_count(const mm_hook* hook, size_t i, int64_t* count) {
  return guard(__func__, [&] {
    const PointRewrite& r = *live(hook, "hook").rewrite;
    nonnull(count, "count");
    *count = r.mix_count(i);
  });
}

mm_status mm_hook_selection(const mm_hook* hook, const char** selection) {
  return guard(__func__, [&] {
    const PointRewrite& r = *live(hook, "hook").rewrite;
    nonnull(selection, "selection");
    *selection = r.selection().c_str();
  });
}

}  // extern "C"
