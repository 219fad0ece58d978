// The public C header compiles as C++ with -pedantic -Werror, and declares C linkage.
#include "manifold_mixup.h"

#include <type_traits>

static_assert(std::is_same<decltype(&mm_version), unsigned (*)()>::value, "mm_version");
unsigned mm_header_check_cxx();
unsigned mm_header_check_cxx() { return mm_version() + MM_VERSION_NUMBER; }
