// Versions, status names, the thread's last error, and the one table from the type of an
// exception to an mm_status.
#include <sstream>
#include <string>

#include "guard.h"
#include "manifold_mixup.h"

namespace manifold_mixup::capi {
// A tag for reading an ErrorReport's text without its what(): see report_text below.
struct ErrorReportText {
  std::string* out;
};
}  // namespace manifold_mixup::capi

namespace torch::jit {
// ErrorReport::what() is noexcept, yet it may throw: to point at the source it reads the
// archive's debug information, and a corrupted archive made it throw, which ends the process.
// Its text is read here instead, with the part that reads the archive guarded. ErrorReport
// befriends every operator<< specialisation; this one is only a reader.
template <>
const ErrorReport& operator<< <manifold_mixup::capi::ErrorReportText>(
    const ErrorReport& e, const manifold_mixup::capi::ErrorReportText& t) {
  *t.out = e.ss.str();
  try {
    std::ostringstream where;
    e.context.highlight(where);
    *t.out += ":\n" + where.str();
  } catch (...) {
    *t.out += " (where in the module's code is unknown: its debug information is unreadable)";
  }
  return e;
}
}  // namespace torch::jit

namespace manifold_mixup::capi {
namespace {

thread_local std::string t_message_storage;
thread_local const char* t_message = "";

void set_last_error(const char* fn, const char* message) noexcept {
  try {
    t_message_storage.assign(fn).append(": ").append(message);
    t_message = t_message_storage.c_str();
  } catch (...) {
    t_message = "the error message could not be stored (out of memory)";
  }
}

std::string report_text(const torch::jit::ErrorReport& e) {
  std::string text;
  e << ErrorReportText{&text};
  return "TorchScript could not compile the module's code: " + text;
}

// Whether libtorch's CPU allocator raised `e` because memory ran out. CUDA's allocators raise
// c10::OutOfMemoryError, a type; the CPU allocator (c10::alloc_cpu) fails a CAFFE_ENFORCE
// instead, a plain c10::Error whose only mark of its kind is the place it was raised, which
// CAFFE_ENFORCE writes at the head of the message. The sizes it was asked for have passed
// ATen's overflow checks by then: it fails only for want of memory.
bool raised_by_cpu_allocator(const c10::Error& e) noexcept {
  static constexpr char kPlace[] = "[enforce fail at alloc_cpu.cpp:";
  return e.msg().compare(0, sizeof kPlace - 1, kPlace) == 0;
}

// The one table from the kind of error to its status; any other c10::Error is libtorch's.
mm_status status_of(const c10::Error& e) noexcept {
  if (dynamic_cast<const NullError*>(&e)) return MM_ERR_NULL;
  if (dynamic_cast<const ArgumentError*>(&e)) return MM_ERR_ARG;
  if (dynamic_cast<const StateError*>(&e)) return MM_ERR_STATE;
  if (dynamic_cast<const NotFoundError*>(&e)) return MM_ERR_NOT_FOUND;
  if (dynamic_cast<const IoError*>(&e)) return MM_ERR_IO;
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) || raised_by_cpu_allocator(e)) return MM_ERR_NOMEM;
  return MM_ERR_TORCH;
}

}  // namespace

mm_status status_of_current_exception(const char* fn) noexcept {
  mm_status status = MM_ERR_INTERNAL;
  try {
    try {
      throw;
    } catch (const c10::Error& e) {
      status = status_of(e);
      set_last_error(fn, e.what_without_backtrace());
    } catch (const torch::jit::ErrorReport& e) {
      status = MM_ERR_TORCH;
      set_last_error(fn, report_text(e).c_str());
    } catch (const std::bad_alloc&) {
      status = MM_ERR_NOMEM;
      set_last_error(fn, "out of memory");
    } catch (const std::exception& e) {
      status = MM_ERR_INTERNAL;
      set_last_error(fn, e.what());
    }
  } catch (...) {  // not a std::exception, or building the message threw
    set_last_error(fn, status == MM_ERR_INTERNAL ? "unknown C++ exception" : "(no message: building it failed)");
  }
  return status;
}

}  // namespace manifold_mixup::capi

extern "C" {

unsigned mm_version(void) { return MM_VERSION_NUMBER; }

const char* mm_version_string(void) {
#define MM_STR2(x) #x
#define MM_STR(x) MM_STR2(x)
  return MM_STR(MM_VERSION_MAJOR) "." MM_STR(MM_VERSION_MINOR) "." MM_STR(MM_VERSION_PATCH);
}

const char* mm_status_string(mm_status status) {
  switch (status) {
    case MM_OK: return "MM_OK";
    case MM_ERR_NULL: return "MM_ERR_NULL";
    case MM_ERR_ARG: return "MM_ERR_ARG";
    case MM_ERR_STATE: return "MM_ERR_STATE";
    case MM_ERR_NOT_FOUND: return "MM_ERR_NOT_FOUND";
    case MM_ERR_TORCH: return "MM_ERR_TORCH";
    case MM_ERR_IO: return "MM_ERR_IO";
    case MM_ERR_NOMEM: return "MM_ERR_NOMEM";
    case MM_ERR_INTERNAL: return "MM_ERR_INTERNAL";
  }
  return "unknown status";
}

const char* mm_last_error(void) { return manifold_mixup::capi::t_message; }

}  // extern "C"
