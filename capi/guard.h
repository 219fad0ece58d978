// How each function of the C ABI runs: its body inside guard(), which turns whatever the body
// throws into an mm_status and the thread's last error, by the type of the exception (see
// status.cpp for the one table), so no C++ exception crosses the boundary.
#pragma once

#include <c10/util/Exception.h>
#include <torch/csrc/jit/frontend/error_report.h>

#include <new>

#include "errors.h"
#include "manifold_mixup.h"

namespace manifold_mixup::capi {

// A required pointer argument was NULL (MM_ERR_NULL): a kind of error only the C ABI has.
class NullError : public c10::Error {
 public:
  using c10::Error::Error;
};

// The status of the exception being handled; records its message, prefixed with `fn`, as the
// thread's last error. Never throws.
mm_status status_of_current_exception(const char* fn) noexcept;

// Runs `body`; MM_OK, or the status of what it threw. Each API function passes its own name
// as `fn`: inside the lambda __func__ would be "operator()".
template <typename F>
mm_status guard(const char* fn, F&& body) noexcept {
  try {
    body();
    return MM_OK;
  } catch (...) {
    return status_of_current_exception(fn);
  }
}

// `p`, or NullError naming it. Every function checks its outputs this way before any work, in
// a statement of its own: in `*nonnull(out, "out") = work()`, work() runs first (the right
// side of an assignment is evaluated before the left), so a NULL output would be refused only
// after what work() allocated was lost.
template <typename T>
T* nonnull(T* p, const char* name) {
  MM_CHECK_WITH(NullError, p != nullptr, name, " is NULL");
  return p;
}

// Runs TorchScript code (a module's methods, loading, saving). The interpreter and the importer
// report failures as std::runtime_error (and parse errors as torch::jit::ErrorReport) rather
// than c10::Error; here they become c10::Error, so MM_ERR_TORCH, not MM_ERR_INTERNAL.
template <typename F>
auto run_torchscript(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error&) {
    throw;
  } catch (const torch::jit::ErrorReport&) {
    throw;  // its what() may throw: status.cpp reads it with care
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw c10::Error(c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, e.what());
  }
}

}  // namespace manifold_mixup::capi
