/* Compiled as C99 and C11 with -pedantic -Werror: the public header must stay plain C. */
#include "manifold_mixup.h"

unsigned mm_header_check_c(void);
unsigned mm_header_check_c(void) {
  mm_mixer_config cfg;
  cfg.size = sizeof cfg;
  return (unsigned)cfg.size + MM_VERSION_NUMBER + (unsigned)MM_ERR_ARG + (unsigned)(MM_POINT_NONE + 2);
}
