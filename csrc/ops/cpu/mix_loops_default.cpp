// The CPU loops for any CPU (see mix_loops.h).
#include "ops/cpu/mix_loops_impl.h"
