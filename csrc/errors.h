// The kinds of error the core raises, as types: a front door (the C ABI's status codes) tells
// them apart by type, never by the wording of a message. Each derives from c10::Error, so C++
// hosts that catch c10::Error, and Python (RuntimeError), see them as any libtorch error.
// Anything else a core call throws (a plain c10::Error, a TorchScript failure) is libtorch's.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <cstdint>

#include "export.h"

namespace manifold_mixup {

// An argument has a wrong value, dtype or shape.
class MM_CORE_API ArgumentError : public c10::Error {
 public:
  using c10::Error::Error;
};

// A named thing the caller asked for (a submodule, a method) does not exist.
class MM_CORE_API NotFoundError : public c10::Error {
 public:
  using c10::Error::Error;
};

// A call out of order: in a batch where none may be open, outside one where one must be, or
// on something another owner holds.
class MM_CORE_API StateError : public c10::Error {
 public:
  using c10::Error::Error;
};

// A file could not be read or written.
class MM_CORE_API IoError : public c10::Error {
 public:
  using c10::Error::Error;
};

}  // namespace manifold_mixup

// MM_CHECK_ARG(cond, parts...) throws ArgumentError with c10::str(parts...) when cond is false;
// likewise MM_CHECK_NOT_FOUND, MM_CHECK_STATE and MM_CHECK_IO. The message names the argument
// and what was expected, as TORCH_CHECK's do.
#define MM_CHECK_WITH(error_type, cond, ...)                                                \
  do {                                                                                      \
    if (C10_UNLIKELY(!(cond))) {                                                            \
      throw error_type(                                                                     \
          ::c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)},       \
          ::c10::str(__VA_ARGS__));                                                         \
    }                                                                                       \
  } while (false)
#define MM_CHECK_ARG(cond, ...) MM_CHECK_WITH(::manifold_mixup::ArgumentError, cond, __VA_ARGS__)
#define MM_CHECK_NOT_FOUND(cond, ...) \
  MM_CHECK_WITH(::manifold_mixup::NotFoundError, cond, __VA_ARGS__)
#define MM_CHECK_STATE(cond, ...) MM_CHECK_WITH(::manifold_mixup::StateError, cond, __VA_ARGS__)
#define MM_CHECK_IO(cond, ...) MM_CHECK_WITH(::manifold_mixup::IoError, cond, __VA_ARGS__)
