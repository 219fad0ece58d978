// Alpha schedules for hosts without fastai: alpha as a function of training progress,
// with the same curves as fastai's SchedLin, SchedCos, SchedExp and SchedPoly. A Mixer without
// a schedule (MixerOptions::schedule unset) keeps the alpha it is given.
#pragma once

#include <cstdint>

#include "export.h"

namespace manifold_mixup {

enum class ScheduleKind : int {
  Linear,       // alpha_min + p * (alpha_max - alpha_min)
  Cosine,       // alpha_min + (1 + cos(pi * (1 - p))) * (alpha_max - alpha_min) / 2
  Exponential,  // alpha_min * (alpha_max / alpha_min) ^ p   (alpha_min must be > 0)
  Polynomial,   // alpha_min + (alpha_max - alpha_min) * p ^ power
};

struct MM_CORE_API Schedule {
  ScheduleKind kind = ScheduleKind::Linear;
  double alpha_min = 0.0;
  double alpha_max = 0.6;
  int64_t total_steps = 0;  // batches over which alpha goes from alpha_min to alpha_max
  double power = 2.0;       // Polynomial only

  // Throws ArgumentError (errors.h) naming the field when the schedule cannot be followed.
  void validate() const;
  // Alpha at progress p in [0, 1] (clamped).
  double alpha_at(double p) const;
  // Alpha after `step` batches of total_steps.
  double alpha_at_step(int64_t step) const;
};

}  // namespace manifold_mixup
