// The CPU loops compiled with -mavx2 -mfma -mf16c and CPU_CAPABILITY=AVX2 (see mix_loops.h).
#include "ops/cpu/mix_loops_impl.h"
