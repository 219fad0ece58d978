// The C ABI's mixer: its configuration (a struct that grows by its size field), alpha and the
// schedule, counters, and the batch: begin, weights, end.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>

#include "device.h"
#include "errors.h"
#include "guard.h"
#include "handles.h"
#include "manifold_mixup.h"
#include "mixer.h"

using manifold_mixup::Mixer;
using manifold_mixup::capi::guard;
using manifold_mixup::capi::live;
using manifold_mixup::capi::nonnull;

namespace {

void set_defaults(mm_mixer_config* c) {
  c->alpha = 0.4;
  c->input_mixup = 1;
  c->has_seed = 0;
  c->seed = 0;
  c->schedule = MM_SCHEDULE_NONE;
  c->alpha_min = 0.0;
  c->alpha_max = 0.6;
  c->total_steps = 0;
  c->lam_mode = MM_LAMBDA_SAMPLE;
  c->no_fold = 0;
  c->skip_prob = 0.0;
  c->add_noise = 0.0;
  c->mult_noise = 0.0;
  c->method = MM_METHOD_MIXUP;
  c->patchup_block = 0;
  c->patchup_gamma = 0.0;
}

// Calls fn(offset, size, field of `c`) for every field after `size`, in order.
template <typename Fn>
void for_each_field(mm_mixer_config& c, Fn&& fn) {
#define MM_FIELD(f) fn(offsetof(mm_mixer_config, f), sizeof c.f, &c.f)
  MM_FIELD(alpha);
  MM_FIELD(input_mixup);
  MM_FIELD(has_seed);
  MM_FIELD(seed);
  MM_FIELD(schedule);
  MM_FIELD(alpha_min);
  MM_FIELD(alpha_max);
  MM_FIELD(total_steps);
  MM_FIELD(lam_mode);
  MM_FIELD(no_fold);
  MM_FIELD(skip_prob);
  MM_FIELD(add_noise);
  MM_FIELD(mult_noise);
  MM_FIELD(method);
  MM_FIELD(patchup_block);
  MM_FIELD(patchup_gamma);
#undef MM_FIELD
}

// The caller's config read by its own size: the fields wholly within `size` bytes, the
// defaults for the rest (a program built against an older header); bytes beyond our struct
// (a newer header) must be zero, so a field this library does not know is never ignored.
mm_mixer_config read_config(const mm_mixer_config* config) {
  const size_t size = config->size;
  MM_CHECK_ARG(size >= sizeof(size_t), "config->size must be the caller's sizeof(mm_mixer_config) ",
               "(set by mm_mixer_config_init), got ", size);
  mm_mixer_config c{};
  set_defaults(&c);
  const char* src = reinterpret_cast<const char*>(config);
  for_each_field(c, [&](size_t offset, size_t bytes, void* field) {
    if (offset + bytes <= size) std::memcpy(field, src + offset, bytes);
  });
  for (size_t i = sizeof c; i < size; ++i)
    MM_CHECK_ARG(src[i] == 0, "config->size is ", size, " but this library (", mm_version_string(),
                 ") knows only the first ", sizeof c, " bytes, and byte ", i, " is set: a field of a ",
                 "newer header; use a newer library, or leave the field at its default");
  c.size = sizeof c;
  return c;
}

std::optional<manifold_mixup::Schedule> schedule_of(const mm_mixer_config& c) {
  using manifold_mixup::ScheduleKind;
  manifold_mixup::Schedule s;
  switch (c.schedule) {
    case MM_SCHEDULE_NONE: return std::nullopt;
    case MM_SCHEDULE_LINEAR: s.kind = ScheduleKind::Linear; break;
    case MM_SCHEDULE_COSINE: s.kind = ScheduleKind::Cosine; break;
    case MM_SCHEDULE_EXPONENTIAL: s.kind = ScheduleKind::Exponential; break;
    case MM_SCHEDULE_POLYNOMIAL: s.kind = ScheduleKind::Polynomial; break;
    default: MM_CHECK_ARG(false, "config->schedule ", static_cast<int>(c.schedule), " is not an mm_schedule_kind");
  }
  s.alpha_min = c.alpha_min;
  s.alpha_max = c.alpha_max;
  s.total_steps = c.total_steps;
  return s;
}

// The mixer's batch, which must be open.
const Mixer& require_batch(const mm_mixer* mixer) {
  const Mixer& m = *live(mixer, "mixer").mixer;
  MM_CHECK_STATE(m.in_batch(), "no batch has begun (call mm_batch_begin first)");
  return m;
}

}  // namespace

extern "C" {

mm_status mm_mixer_config_init(mm_mixer_config* config, size_t size) {
  return guard(__func__, [&] {
    nonnull(config, "config");
    MM_CHECK_ARG(size >= sizeof(size_t), "size must be sizeof(mm_mixer_config), got ", size);
    std::memset(config, 0, size);
    mm_mixer_config c{};
    set_defaults(&c);
    char* dst = reinterpret_cast<char*>(config);
    for_each_field(c, [&](size_t offset, size_t bytes, const void* field) {
      if (offset + bytes <= size) std::memcpy(dst + offset, field, bytes);
    });
    config->size = size;
  });
}

mm_status mm_mixer_create(const mm_mixer_config* config, mm_mixer** out) {
  return guard(__func__, [&] {
    nonnull(config, "config");
    nonnull(out, "out");
    const mm_mixer_config c = read_config(config);
    manifold_mixup::MixerOptions o;
    o.alpha = c.alpha;
    o.input_mixup = c.input_mixup != 0;
    if (c.has_seed) o.seed = c.seed;
    o.schedule = schedule_of(c);
    MM_CHECK_ARG(c.lam_mode == MM_LAMBDA_SAMPLE || c.lam_mode == MM_LAMBDA_BATCH, "config->lam_mode ",
                 static_cast<int>(c.lam_mode), " is not an mm_lambda_mode");
    o.lam_mode = c.lam_mode == MM_LAMBDA_BATCH ? manifold_mixup::LamMode::Batch
                                                : manifold_mixup::LamMode::Sample;
    o.fold = c.no_fold == 0;
    MM_CHECK_ARG(std::isfinite(c.skip_prob) && c.skip_prob >= 0 && c.skip_prob <= 1,
                 "config->skip_prob must be a probability in [0, 1], got ", c.skip_prob);
    o.prob = 1 - c.skip_prob;
    o.add_noise = c.add_noise;
    o.mult_noise = c.mult_noise;
    switch (c.method) {
      case MM_METHOD_MIXUP: o.method = manifold_mixup::Method::Mixup; break;
      case MM_METHOD_PATCHUP_SOFT: o.method = manifold_mixup::Method::PatchUpSoft; break;
      case MM_METHOD_PATCHUP_HARD: o.method = manifold_mixup::Method::PatchUpHard; break;
      default: MM_CHECK_ARG(false, "config->method ", static_cast<int>(c.method), " is not an mm_method");
    }
    if (c.patchup_block != 0) o.patchup_block = c.patchup_block;  // else the authors' 7
    if (c.patchup_gamma != 0) o.patchup_gamma = c.patchup_gamma;  // else the authors' 0.9
    auto mixer = std::make_shared<Mixer>(o);
    *out = new mm_mixer{mm_mixer::kMagic, std::move(mixer)};
  });
}

mm_status mm_mixer_destroy(mm_mixer* mixer) {
  return guard(__func__, [&] {
    if (!mixer) return;
    std::shared_ptr<Mixer> contents = std::move(live(mixer, "mixer").mixer);
    manifold_mixup::capi::retire(mixer);
    // A hook may keep the Mixer alive; nobody can end its batch after this.
    if (contents->in_batch()) contents->end_batch();
  });
}

mm_status mm_mixer_alpha(const mm_mixer* mixer, double* alpha) {
  return guard(__func__, [&] {
    const Mixer& m = *live(mixer, "mixer").mixer;
    nonnull(alpha, "alpha");
    *alpha = m.alpha();
  });
}

mm_status mm_mixer_set_alpha(mm_mixer* mixer, double alpha) {
  return guard(__func__, [&] { live(mixer, "mixer").mixer->set_alpha(alpha); });
}

mm_status mm_mixer_set_step(mm_mixer* mixer, int64_t step) {
  return guard(__func__, [&] { live(mixer, "mixer").mixer->set_step(step); });
}

#define MM_COUNTER(name, expr)                            \
  mm_status name(const mm_mixer* mixer, int64_t* count) { \
    return guard(#name, [&] {                             \
      const Mixer& m = *live(mixer, "mixer").mixer;       \
      nonnull(count, "count");                            \
      *count = m.expr();                                  \
    });                                                   \
  }
MM_COUNTER(mm_mixer_batches, batches)
MM_COUNTER(mm_mixer_input_mixes, input_mixes)
MM_COUNTER(mm_mixer_repeated_calls, repeated_calls)
MM_COUNTER(mm_mixer_unmixed_batches, unmixed_batches)
MM_COUNTER(mm_mixer_skipped_batches, skipped_batches)
#undef MM_COUNTER

mm_status mm_batch_begin(mm_mixer* mixer, int64_t batch_size, int64_t* chosen) {
  return guard(__func__, [&] {
    const int64_t c = live(mixer, "mixer").mixer->begin_batch(batch_size, at::kCPU);
    if (chosen) *chosen = c;
  });
}

mm_status mm_batch_begin_on(mm_mixer* mixer, int64_t batch_size, const char* device, int64_t* chosen) {
  return guard(__func__, [&] {
    Mixer& m = *live(mixer, "mixer").mixer;
    const int64_t c = m.begin_batch(batch_size, manifold_mixup::capi::parse_device(device));
    if (chosen) *chosen = c;
  });
}

mm_status mm_batch_weights(const mm_mixer* mixer, mm_tensor** lam, mm_tensor** perm) {
  return guard(__func__, [&] {
    const Mixer& m = require_batch(mixer);
    // Only what is asked for is copied; both are made before either is handed out.
    std::unique_ptr<mm_tensor> l(lam ? manifold_mixup::capi::new_tensor(m.lam().clone()) : nullptr);
    std::unique_ptr<mm_tensor> p(perm ? manifold_mixup::capi::new_tensor(m.perm().clone()) : nullptr);
    if (lam) *lam = l.release();
    if (perm) *perm = p.release();
  });
}

mm_status mm_batch_target_weights(const mm_mixer* mixer, mm_tensor** weights) {
  return guard(__func__, [&] {
    const Mixer& m = require_batch(mixer);
    nonnull(weights, "weights");
    *weights = manifold_mixup::capi::new_tensor(m.target_weights().clone());
  });
}

mm_status mm_batch_mixed(const mm_mixer* mixer, int* mixed) {
  return guard(__func__, [&] {
    live(mixer, "mixer");
    nonnull(mixed, "mixed");
    *mixed = require_batch(mixer).mixed() ? 1 : 0;
  });
}

mm_status mm_batch_end(mm_mixer* mixer) {
  return guard(__func__, [&] {
    require_batch(mixer);
    mixer->mixer->end_batch();
  });
}

}  // extern "C"
