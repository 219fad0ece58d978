#include "schedule.h"

#include <algorithm>
#include <cmath>

#include "errors.h"

namespace manifold_mixup {

void Schedule::validate() const {
  const int k = static_cast<int>(kind);
  MM_CHECK_ARG(k >= static_cast<int>(ScheduleKind::Linear) && k <= static_cast<int>(ScheduleKind::Polynomial),
               "schedule.kind must be one of linear, cosine, exponential, polynomial, got ", k);
  MM_CHECK_ARG(std::isfinite(alpha_min) && alpha_min >= 0, "schedule.alpha_min must be a finite ",
               "number >= 0, got ", alpha_min);
  MM_CHECK_ARG(std::isfinite(alpha_max) && alpha_max >= 0, "schedule.alpha_max must be a finite ",
               "number >= 0, got ", alpha_max);
  // alpha_min * (alpha_max / alpha_min) ^ p is 0 at every step from alpha_min 0: it would never mix.
  MM_CHECK_ARG(kind != ScheduleKind::Exponential || alpha_min > 0, "schedule.alpha_min must be > 0 for ",
               "an exponential schedule (from 0 it stays 0 and never mixes), got ", alpha_min);
  MM_CHECK_ARG(total_steps > 0, "schedule.total_steps must be > 0 when a schedule is set, got ",
               total_steps);
  MM_CHECK_ARG(kind != ScheduleKind::Polynomial || (std::isfinite(power) && power > 0),
               "schedule.power must be > 0 for a polynomial schedule, got ", power);
}

double Schedule::alpha_at(double p) const {
  p = std::clamp(p, 0.0, 1.0);
  const double span = alpha_max - alpha_min;
  switch (kind) {
    case ScheduleKind::Linear: return alpha_min + p * span;
    case ScheduleKind::Cosine: return alpha_min + (1 + std::cos(M_PI * (1 - p))) * span / 2;
    case ScheduleKind::Exponential: return alpha_min * std::pow(alpha_max / alpha_min, p);
    case ScheduleKind::Polynomial: return alpha_min + span * std::pow(p, power);
  }
  validate();  // a kind outside the enum: says which
  return alpha_min;
}

double Schedule::alpha_at_step(int64_t step) const {
  return alpha_at(total_steps > 0 ? static_cast<double>(step) / total_steps : 1.0);
}

}  // namespace manifold_mixup
